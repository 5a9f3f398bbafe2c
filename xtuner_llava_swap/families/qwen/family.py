"""The ``qwen`` family: Qwen-7B's v1 names (``transformer.h.N.attn.c_attn``) map onto Qwen2
names, its config onto a Qwen2 config, its tiktoken vocabulary onto a fast Qwen2 tokenizer;
LLaVA-NeXT's ``LlavaQwenForCausalLM`` loads the result."""
from ..family import LLMFamily, register_family
from . import export, tiny

FAMILY = register_family(LLMFamily(
    name="qwen",
    hf_text_model_type="qwen2",
    official_llava_class="LlavaQwenForCausalLM",
    weight_table=export.QWEN_V1_TO_QWEN2,
    text_config=export.qwen2_text_config,
    export_tokenizer=export.fast_tokenizer,
    weight_signatures={r"(^|\.)transformer\.h\.\d+\.attn\.c_attn": "qwen (Qwen-7B first generation)"},
    build_tiny=tiny.build,
    old_stack_only="its remote code imports transformers_stream_generator, which fails on 4.57",
    packing_refusal="Qwen-7B's remote code (modeling_qwen.py) flattens the attention mask to "
                    "one padding row per sequence (attention_mask.view(batch_size, -1)), so it "
                    "cannot keep packed samples from attending to each other",
))
