"""The ``internlm2`` family: InternLM2's remote-code names (``attention.wqkv``,
``feed_forward.w1``) map onto Llama names, its config onto a Llama config, its tokenizer onto
a ``LlamaTokenizerFast`` (:mod:`.export`), so an ``hf`` export loads with plain transformers;
its tiny recipe runs the remote code xtuner ships (``tiny.py``)."""
from ..family import LLMFamily, register_family
from . import export, tiny

FAMILY = register_family(LLMFamily(
    name="internlm2",
    hf_text_model_type="llama",
    no_official_llava="the official LLaVA loaders (LLaVA, LLaVA-NeXT) have no InternLM2 class",
    weight_table=export.INTERNLM2_TO_LLAMA,
    split_weight=export.split_wqkv,
    text_config=export.llama_text_config,
    export_tokenizer=export.fast_tokenizer,
    weight_signatures={r"(^|\.)layers\.\d+\.attention\.wqkv": "internlm2"},
    build_tiny=tiny.build,
    tiny_real_tokenizer=False,  # the fixtures hold no InternLM2 tokenizer
    old_stack_only=("its remote code (the revision xtuner 0.2.0 ships) cannot generate on 4.57 "
                    "(DynamicCache.get_max_length is gone), so the evaluation hook, chat, eval "
                    "and --verify of a run fail there; its hf export (Llama) loads anywhere"),
))
