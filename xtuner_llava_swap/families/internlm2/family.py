"""The ``internlm2`` family: exported with its own (remote-code) text config; its tiny
recipe runs the remote code xtuner ships (``tiny.py``)."""
from ..family import LLMFamily, register_family
from . import tiny

FAMILY = register_family(LLMFamily(
    name="internlm2",
    hf_text_model_type="internlm2",
    no_official_llava="the official LLaVA loaders (LLaVA, LLaVA-NeXT) have no InternLM2 class",
    weight_signatures={r"(^|\.)layers\.\d+\.attention\.wqkv": "internlm2"},
    build_tiny=tiny.build,
    tiny_real_tokenizer=False,  # the fixtures hold no InternLM2 tokenizer
))
