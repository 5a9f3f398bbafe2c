"""The ``internlm2`` family: exported with its own (remote-code) text config; no tiny recipe
(its remote code is not among the fixtures)."""
from ..family import LLMFamily, register_family

FAMILY = register_family(LLMFamily(
    name="internlm2",
    hf_text_model_type="internlm2",
    no_official_llava="the official LLaVA loaders (LLaVA, LLaVA-NeXT) have no InternLM2 class",
    weight_signatures={r"(^|\.)layers\.\d+\.attention\.wqkv": "internlm2"},
))
