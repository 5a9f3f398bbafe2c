"""Encoding: ids/labels equal to xtuner's encode_fn and to the tokenizer's chat template;
image token counts from real vision configs; the length policies."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from data_helpers import (CLIP_336, LLAVA, SHAREGPT, llama2_slow_tokenizer, load_json,
                          qwen2_tokenizer)
from support import FIXTURES, requires_fixtures

from xtuner_llava_swap.data import (BatchEncoder, SampleError, apply_length_policy,
                                    image_token_count, llava_format_map_fn,
                                    messages_format_map_fn, resolve_image_token_count)
from xtuner_llava_swap.data.encode import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from xtuner_llava_swap.data.image_tokens import ImageTokenConfigError
from xtuner_llava_swap.data.preprocess import read_samples, resolve_turn_builder

pytestmark = requires_fixtures


def xtuner_reference(samples, map_fn, template_fn, tokenizer):
    from xtuner.dataset.utils import encode_fn

    return [encode_fn(template_fn(map_fn(copy.deepcopy(s))), tokenizer, 10**6,
                      with_image_token=True) for s in samples]


def ours(samples, map_fn, template_cfg, tokenizer):
    build, _ = resolve_turn_builder(template_cfg)
    return BatchEncoder(tokenizer).encode([build(map_fn(s)["conversation"]) for s in samples])


def single_image_llava_samples():
    samples = (load_json(LLAVA / "celeba_image_train.json")
               + load_json(LLAVA / "single_image_has_text_only.json"))
    return [{k: v for k, v in s.items() if k != "system_prompt"} for s in samples]


def test_ids_and_labels_identical_to_xtuner_qwen2_fast_tokenizer():
    from xtuner.dataset.map_fns import llava_map_fn, template_map_fn_factory
    from xtuner.utils import PROMPT_TEMPLATE

    samples = single_image_llava_samples()
    template = PROMPT_TEMPLATE.qwen_chat
    reference = xtuner_reference(samples, llava_map_fn, template_map_fn_factory(template),
                                 qwen2_tokenizer())
    encoded = ours(samples, llava_format_map_fn,
                   dict(type=template_map_fn_factory, template=template), qwen2_tokenizer())
    assert len(encoded) == len(samples) == 94
    for i, ref in enumerate(reference):
        assert encoded.sample(i) == (ref["input_ids"], ref["labels"]), f"sample {i}"
    assert encoded.image_counts().tolist() == [1] * 92 + [0, 0]


def test_chunks_tokenized_while_the_next_is_mapped_give_the_one_batch_ids():
    """encode_chunks (fast tokenizer: a chunk tokenized in a thread while the next is
    planned) gives, chunk by chunk, exactly what one encode of all samples gives."""
    from xtuner.dataset.map_fns import template_map_fn_factory
    from xtuner.utils import PROMPT_TEMPLATE

    samples = single_image_llava_samples()
    build, _ = resolve_turn_builder(dict(type=template_map_fn_factory,
                                         template=PROMPT_TEMPLATE.qwen_chat))
    turns = [build(llava_format_map_fn(s)["conversation"]) for s in samples]
    encoder = BatchEncoder(qwen2_tokenizer())
    assert encoder.fast
    whole = encoder.encode(turns)
    parts = encoder.encode_chunks(iter([turns[:10], [], turns[10:50], turns[50:]]))
    assert [len(p) for p in parts] == [10, 0, 40, len(turns) - 50]
    joined = type(whole).concatenate(parts)
    assert np.array_equal(joined.offsets, whole.offsets)
    assert np.array_equal(joined.ids, whole.ids) and np.array_equal(joined.trained, whole.trained)


def test_ids_identical_to_xtuner_with_the_profile_default_system():
    from xtuner.dataset.map_fns import llava_map_fn

    from xtuner_llava_swap.profiles import PROMPT_TEMPLATE, template_map_fn_factory

    samples = single_image_llava_samples()[-6:]
    for template_cfg in (dict(type=template_map_fn_factory, template=PROMPT_TEMPLATE.qwen2_5),
                         template_map_fn_factory("qwen2.5")):
        reference = xtuner_reference(samples, llava_map_fn, template_map_fn_factory("qwen2.5"),
                                     qwen2_tokenizer())
        encoded = ours(samples, llava_format_map_fn, template_cfg, qwen2_tokenizer())
        assert [encoded.sample(i) for i in range(6)] == \
            [(r["input_ids"], r["labels"]) for r in reference]


def test_ids_identical_to_xtuner_slow_llama_tokenizer_vicuna_template():
    from xtuner.dataset.map_fns import llava_map_fn, template_map_fn_factory
    from xtuner.utils import PROMPT_TEMPLATE

    samples = single_image_llava_samples()[-8:]
    tokenizer = llama2_slow_tokenizer()
    reference = xtuner_reference(samples, llava_map_fn,
                                 template_map_fn_factory(PROMPT_TEMPLATE.vicuna), tokenizer)
    encoded = ours(samples, llava_format_map_fn,
                   template_map_fn_factory(PROMPT_TEMPLATE.vicuna), tokenizer)
    assert [encoded.sample(i) for i in range(8)] == \
        [(r["input_ids"], r["labels"]) for r in reference]
    assert encoded.sample(0)[0][0] == 1  # Llama's bos opens the sequence


def test_ids_identical_to_xtuner_qwen7b_remote_code_tokenizer(tiny_parts):
    """Qwen-7B's QWenTokenizer (tiktoken, slow, no bos/eos of its own) via the profile's dict."""
    from xtuner.dataset.map_fns import llava_map_fn
    from xtuner.registry import BUILDER

    from xtuner_llava_swap.profiles import template_map_fn_factory
    from xtuner_llava_swap.training.tokenizers import tokenizer_dict

    tokenizer = BUILDER.build(tokenizer_dict("qwen", tiny_parts("qwen")))
    assert type(tokenizer).__name__ == "QWenTokenizer"
    samples = single_image_llava_samples()[-6:]
    reference = xtuner_reference(samples, llava_map_fn, template_map_fn_factory("qwen"), tokenizer)
    encoded = ours(samples, llava_format_map_fn, dict(type=template_map_fn_factory,
                                                      template="qwen"), tokenizer)
    assert [encoded.sample(i) for i in range(6)] == \
        [(r["input_ids"], r["labels"]) for r in reference]


def test_ids_equal_the_tokenizers_own_chat_template():
    """A text-only conversation with a system prompt: the same ids as Qwen2's chat template."""
    from xtuner.dataset.map_fns import template_map_fn_factory
    from xtuner.utils import PROMPT_TEMPLATE

    tokenizer = qwen2_tokenizer()
    sample = {"conversations": [{"from": "system", "value": "Be brief."},
                                {"from": "human", "value": "What is the capital of France?"},
                                {"from": "gpt", "value": "Paris."},
                                {"from": "human", "value": "And of Italy?"},
                                {"from": "gpt", "value": "Rome."}]}
    encoded = ours([sample], llava_format_map_fn,
                   template_map_fn_factory(PROMPT_TEMPLATE.qwen_chat), tokenizer)
    ids, labels = encoded.sample(0)
    messages = [{"role": m["from"].replace("human", "user").replace("gpt", "assistant"),
                 "content": m["value"]} for m in sample["conversations"]]
    expected = tokenizer.apply_chat_template(messages, tokenize=True)
    assert ids == expected
    trained = tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
    assert trained == "Paris.<|im_end|>Rome.<|im_end|>"


def test_messages_formats_identical_to_xtuner_on_the_same_conversation():
    """LLaMA-Factory and OpenAI-style samples encode like xtuner encodes their mapped turns."""
    from xtuner.dataset.map_fns import template_map_fn_factory
    from xtuner.utils import PROMPT_TEMPLATE

    tokenizer = qwen2_tokenizer()
    template = template_map_fn_factory(PROMPT_TEMPLATE.qwen_chat)
    samples = [load_json(SHAREGPT / "llama-factory" / "mllm_demo.json")[i] for i in (1, 2, 4)]
    samples += read_samples(SHAREGPT / "xtuner" / "resource"
                            / "mllm_sft_single_image_example_data.jsonl")[:3]
    reference = xtuner_reference(samples, messages_format_map_fn, template, tokenizer)
    encoded = ours(samples, messages_format_map_fn, template, tokenizer)
    assert [encoded.sample(i) for i in range(6)] == \
        [(r["input_ids"], r["labels"]) for r in reference]
    assert all(ids.count(IMAGE_TOKEN_INDEX) == 1 for ids, _ in map(encoded.sample, range(6)))


# ------------------------------------------------------------------ image tokens
def test_image_token_count_from_real_vision_configs(tiny_parts):
    configs = FIXTURES / "comfyui-clip-vision-configs"
    assert image_token_count(CLIP_336) == 576  # (336/14)^2, CLS dropped as LLaVAModel does
    assert image_token_count(CLIP_336, "cls_patch") == 577
    assert image_token_count(configs / "clip_vision_config_vitl.json") == 256  # 224/14
    # SigLIP has no CLS: xtuner's [:, 1:] drops a real patch (floor(384/14)^2 - 1)
    assert image_token_count(configs / "clip_vision_siglip_384.json") == 728
    assert image_token_count(configs / "clip_vision_siglip_384.json", "cls_patch") == 729
    assert image_token_count(FIXTURES / "llava-1.5-7b-hf") == 576  # nested vision_config
    assert image_token_count(tiny_parts("clip")) == 16  # a saved CLIPVisionModel folder
    processor_cfg = {"type": "CLIPImageProcessor.from_pretrained",
                     "pretrained_model_name_or_path": str(tiny_parts("clip"))}
    assert resolve_image_token_count(image_processor=processor_cfg) == 16
    assert resolve_image_token_count(300, vision_config=CLIP_336) == 300
    with pytest.raises(ImageTokenConfigError, match="image_token_count=<int>"):
        resolve_image_token_count(vision_config="org/not-a-local-model")
    with pytest.raises(ImageTokenConfigError, match="vision_config="):
        resolve_image_token_count()


# ------------------------------------------------------------------ length policy
@pytest.fixture(scope="module")
def three_samples():
    """Encoded: a caption (image), a 2-turn conversation with the image, a text-only one."""
    from xtuner.dataset.map_fns import template_map_fn_factory
    from xtuner.utils import PROMPT_TEMPLATE

    samples = load_json(LLAVA / "single_image_has_text_only.json")[:3]
    return ours([{k: v for k, v in s.items() if k != "system_prompt"} for s in samples],
                llava_format_map_fn, template_map_fn_factory(PROMPT_TEMPLATE.qwen_chat),
                qwen2_tokenizer())


def test_drop_counts_the_image_tokens(three_samples):
    lengths = three_samples.lengths().tolist()
    assert lengths == [80, 30, 24]
    # sample 1 needs 30 - 1 + 576 = 605 positions, sample 0 655
    kept_enc, kept, removed = apply_length_policy(three_samples, 576, 605, "drop")
    assert kept.tolist() == [1, 2] and list(removed) == [0]
    assert removed[0].reason == "too_long" and "655 positions" in removed[0].detail
    assert kept_enc.lengths().tolist() == [30, 24]
    _, kept, removed = apply_length_policy(three_samples, 576, 604, "drop")
    assert kept.tolist() == [2] and sorted(removed) == [0, 1]


def test_truncate_cuts_text_after_the_image_and_keeps_a_trained_token(three_samples):
    ids0, labels0 = three_samples.sample(0)
    image_at = ids0.index(IMAGE_TOKEN_INDEX)
    first_trained = next(i for i, t in enumerate(labels0) if t != IGNORE_INDEX)
    budget = first_trained + 1 + 575  # room for exactly one trained token
    fitted, kept, removed = apply_length_policy(three_samples, 576, budget, "truncate")
    assert kept.tolist() == [0, 1, 2] and not removed
    ids, labels = fitted.sample(0)
    assert ids == ids0[:first_trained + 1] and ids[image_at] == IMAGE_TOKEN_INDEX
    assert sum(t != IGNORE_INDEX for t in labels) == 1
    # one position less: no trained token would be left -> removed, never emptied
    _, kept, removed = apply_length_policy(three_samples, 576, budget - 1, "truncate")
    assert kept.tolist() == [1, 2] and removed[0].reason == "cannot_truncate"
    # the image itself does not fit: removed, never cut
    _, kept, removed = apply_length_policy(three_samples, 576, 576, "truncate")
    assert 0 not in kept and removed[0].reason == "cannot_truncate"


def test_error_policy_names_the_sample(three_samples):
    with pytest.raises(SampleError) as info:
        apply_length_policy(three_samples, 576, 610, "error")
    assert info.value.reason == "too_long" and info.value.position == 0


def test_samples_without_trained_tokens_are_removed(three_samples):
    from xtuner_llava_swap.data import EncodedTexts

    masked = EncodedTexts(np.asarray(three_samples.ids), np.zeros_like(three_samples.trained),
                          np.asarray(three_samples.offsets))
    _, kept, removed = apply_length_policy(masked, 576, 4096, "drop")
    assert kept.tolist() == [] and {e.reason for e in removed.values()} == {"no_supervised_tokens"}


def test_slow_tokenizer_on_worker_processes_gives_xtuners_ids(monkeypatch):
    """A slow tokenizer (sentencepiece Llama-2) is spread over worker processes, one per core
    given; the ids and labels stay xtuner's (the threshold is lowered to reach the workers
    with the fixture's samples)."""
    from xtuner.dataset.map_fns import llava_map_fn, template_map_fn_factory
    from xtuner.utils import PROMPT_TEMPLATE

    from xtuner_llava_swap.data import encode

    monkeypatch.setattr(encode, "SLOW_TEXTS_PER_WORKER", 16)
    if encode.slow_workers(10**6) < 2:
        pytest.skip("one core given (or no fork): no worker processes to check")
    samples = single_image_llava_samples()
    tokenizer = llama2_slow_tokenizer()
    template = template_map_fn_factory(PROMPT_TEMPLATE.vicuna)
    texts = {t for s in samples for turn in template(llava_map_fn(copy.deepcopy(s)))["conversation"]
             for t in (turn["input"], turn["output"])}
    assert encode.slow_workers(len(texts)) >= 2
    reference = xtuner_reference(samples, llava_map_fn, template, tokenizer)
    encoded = ours(samples, llava_format_map_fn, template, tokenizer)
    assert [encoded.sample(i) for i in range(len(samples))] == \
        [(r["input_ids"], r["labels"]) for r in reference]
