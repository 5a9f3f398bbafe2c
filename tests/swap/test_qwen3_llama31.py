"""Qwen3 and Llama-3.1/3.2-Instruct: formats that depend on a turn's position, token for token.

Every renderer of a profile must agree with the model's own ``apply_chat_template``:

* the training ids (xtuner's pipeline: ``llava_map_fn`` -> the profile's template map fn ->
  ``encode_fn``), single- and multi-turn, with and without an image or a system prompt,
  and their labels (exactly each reply and its end-of-turn token);
* the profile's exported chat template (``profile.chat_template()``);
* the evaluation hook's prompt and ``--verify``'s reference prompt, against the model's
  generation prompt (Qwen3: ``enable_thinking=False``).

Qwen3 runs on the real fixture tokenizer with both template revisions (the tokenizer
config's and the original ``Qwen-Qwen3-0.6B.jinja``): its empty think block opens only the
last reply. The Llama-3.1/3.2 templates come from the fixtures, the tokenizer is built here
with the Llama-3 special-token contract (a small byte-level BPE); their system header with
the two date lines is written even without a system prompt, at the profile's fixed date.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from support import FIXTURES, requires_fixtures
from test_tokenization import (IMAGE, SAMPLES, apply_with_image, build, expected_labels,
                               messages_of, with_image_token)

import xtuner_llava_swap  # noqa: F401  (compat patches before xtuner.dataset)
from xtuner_llava_swap.profiles import get_profile
from xtuner_llava_swap.training.tokenizers import chat_template_ids, encode_llava_conversation

IGNORE = -100
THINK_EMPTY = "<think>\n\n</think>\n\n"
SYSTEM = "Answer in one sentence."
PROMPT = "What is in the picture?"
SINGLE_TURN = {"conversations": [{"from": "human", "value": "Name a fruit."},
                                 {"from": "gpt", "value": "An apple."}]}
CASES = {**SAMPLES, "single": SINGLE_TURN}


def chat_ids(tokenizer, messages, chat_template, generation=False, **template_kwargs) -> list:
    """``apply_chat_template`` ids (``generation``: with ``add_generation_prompt``), with
    ``<image>`` as one token mapped to -200; ``template_kwargs`` go to the template."""
    tok = with_image_token(tokenizer)
    image_id = tok.convert_tokens_to_ids("<image>")
    ids = tok.apply_chat_template(messages, chat_template=chat_template, tokenize=True,
                                  add_generation_prompt=generation, **template_kwargs)
    return [IMAGE if i == image_id else i for i in ids]


def assert_dataset_encodes_the_same(tokenizer, profile, sample, encoded, system=None):
    """The dataset's bulk encoder (``PromptFormat`` turns + ``BatchEncoder``, what
    ``LLaVASwapDataset`` trains on) gives xtuner's pipeline's ids and labels, for the
    template map fn as a config dict and as the built function."""
    from xtuner_llava_swap.data import BatchEncoder, llava_format_map_fn
    from xtuner_llava_swap.data.preprocess import resolve_turn_builder
    from xtuner_llava_swap.profiles import template_map_fn_factory

    for template_map_fn in (dict(type=template_map_fn_factory, template=profile.template,
                                 system=system),
                            template_map_fn_factory(profile.name, system=system)):
        turns, _ = resolve_turn_builder(template_map_fn)
        conversation = llava_format_map_fn(dict(sample))["conversation"]
        ids, labels = BatchEncoder(tokenizer).encode([turns(conversation)]).sample(0)
        assert (ids, labels) == (encoded["input_ids"], encoded["labels"])


def hook_ids(tokenizer, profile, text, with_image, system=None) -> list:
    """The ids the evaluation hook generates from."""
    from xtuner_llava_swap.training.hooks import EvaluateChatHook

    hook = EvaluateChatHook(tokenizer, [text], profile=profile, system=system)
    return hook.prompt_ids(text, n_images=int(with_image))[1]


def verify_ids(tokenizer, profile, text, system=None) -> list:
    """The ids ``--verify`` feeds xtuner's model (always with an image)."""
    from xtuner_llava_swap.export.verify import _reference_prompt

    run = SimpleNamespace(profile=get_profile(profile), system=system)
    return _reference_prompt(run, tokenizer, text, [None]).ids


def with_system(messages, system):
    return ([{"role": "system", "content": system}] if system is not None else []) + messages


def prompt_messages(text, with_image):
    return [{"role": "user", "content": f"<image>\n{text}" if with_image else text}]


# ------------------------------------------------------------------------------- Qwen3
@pytest.fixture(scope="module")
def qwen3_tok():
    return build("qwen3", FIXTURES / "qwen3")  # the contract check runs here


@pytest.fixture(scope="module")
def qwen3_templates(qwen3_tok):
    """Both revisions of Qwen3's template: the tokenizer config's and the original one."""
    return {"tokenizer_config": qwen3_tok.chat_template,
            "original": (FIXTURES / "qwen3" / "Qwen-Qwen3-0.6B.jinja").read_text()}


def qwen3_expected_labels(tok, ids) -> list:
    """Supervised: from after each ``<|im_start|>assistant\\n`` (and after the empty think
    block, which only the last reply may have) to its ``<|im_end|>``, inclusive."""
    header = tok.encode("<|im_start|>assistant\n")
    think = tok.encode(THINK_EMPTY)
    labels = expected_labels(ids, header, tok.convert_tokens_to_ids("<|im_end|>"))
    starts = [i + len(header) for i in range(len(ids)) if ids[i:i + len(header)] == header]
    for number, start in enumerate(starts):
        if ids[start:start + len(think)] == think:
            assert number == len(starts) - 1, "an empty think block before the last reply"
            labels[start:start + len(think)] = [IGNORE] * len(think)
    return labels


@requires_fixtures
@pytest.mark.parametrize("which", list(CASES))
def test_qwen3_training_ids_equal_apply_chat_template(qwen3_tok, qwen3_templates, which):
    tok, profile, sample = qwen3_tok, get_profile("qwen3"), CASES[which]
    messages = messages_of(sample)
    encoded = encode_llava_conversation(sample, tok, profile)
    ids = encoded["input_ids"]
    for template in qwen3_templates.values():
        assert ids == apply_with_image(tok, messages, template)
    assert ids == apply_with_image(tok, messages, profile.chat_template())
    think = tok.encode(THINK_EMPTY)
    at = [i for i in range(len(ids)) if ids[i:i + len(think)] == think]
    assert len(at) == 1 and at[0] > len(ids) - len(tok.encode(messages[-1]["content"])) - 8
    # labels: each reply and its <|im_end|>, never the think block nor a header
    assert encoded["labels"] == qwen3_expected_labels(tok, ids)
    supervised = [i for i, label in zip(ids, encoded["labels"]) if label != IGNORE]
    replies = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
    assert tok.decode(supervised) == "".join(replies)
    assert_dataset_encodes_the_same(tok, profile, sample, encoded)
    # an explicit system prompt: the same on every side
    encoded = encode_llava_conversation(sample, tok, profile, system=SYSTEM)
    for template in qwen3_templates.values():
        assert encoded["input_ids"] == apply_with_image(tok, with_system(messages, SYSTEM),
                                                        template)
    assert chat_template_ids(tok, profile, messages, system=SYSTEM) == encoded["input_ids"]
    assert_dataset_encodes_the_same(tok, profile, sample, encoded, system=SYSTEM)


@requires_fixtures
@pytest.mark.parametrize("system", [None, SYSTEM])
@pytest.mark.parametrize("with_image", [False, True])
def test_qwen3_hook_and_verify_prompts_equal_non_thinking_generation_prompt(
        qwen3_tok, qwen3_templates, system, with_image):
    tok, profile = qwen3_tok, get_profile("qwen3")
    messages = with_system(prompt_messages(PROMPT, with_image), system)
    expected = chat_ids(tok, messages, qwen3_templates["tokenizer_config"], True,
                        enable_thinking=False)
    assert expected == chat_ids(tok, messages, qwen3_templates["original"], True,
                                enable_thinking=False)
    assert tok.decode([i for i in expected if i != IMAGE]).endswith(
        "<|im_start|>assistant\n" + THINK_EMPTY)
    assert hook_ids(tok, profile, PROMPT, with_image, system) == expected
    assert chat_ids(tok, messages, profile.chat_template(), True) == expected
    if with_image:
        assert verify_ids(tok, profile, PROMPT, system) == expected


# Reasoning written in the replies: Qwen3's template keeps only the last reply's think block.
REASONING_SAMPLE = {"image": "shapes.jpg", "conversations": [
    {"from": "human", "value": "<image>\nHow many shapes are there?"},
    {"from": "gpt", "value": "<think>\nA square, a circle.\n</think>\n\nTwo."},
    {"from": "human", "value": "Which one is red?"},
    {"from": "gpt", "value": "<think>The left one is red.</think>The square."}]}
REASONING_SUPERVISED = {  # what the supervised tokens decode to, reply by reply
    "reasoning": ["Two.<|im_end|>",
                  "<think>\nThe left one is red.\n</think>\n\nThe square.<|im_end|>"],
    "text": ["The capital of France is Paris.<|im_end|>",
             "<think>\n\n</think>\n\nKatze.<|im_end|>"]}


@requires_fixtures
@pytest.mark.parametrize("which", list(REASONING_SUPERVISED))
def test_qwen3_thinking_keeps_the_last_replys_reasoning(qwen3_templates, which):
    # a tokenizer of its own: built for "qwen3", the hook would refuse it for another profile
    tok, profile = build("qwen3-thinking", FIXTURES / "qwen3"), get_profile("qwen3-thinking")
    sample = REASONING_SAMPLE if which == "reasoning" else SAMPLES["text"]
    messages = messages_of(sample)
    encoded = encode_llava_conversation(sample, tok, profile)
    ids = encoded["input_ids"]
    for template in (*qwen3_templates.values(), profile.chat_template()):
        assert ids == apply_with_image(tok, messages, template)
    supervised = [i for i, label in zip(ids, encoded["labels"]) if label != IGNORE]
    assert tok.decode(supervised) == "".join(REASONING_SUPERVISED[which])
    assert_dataset_encodes_the_same(tok, profile, sample, encoded)
    # thinking mode: the model starts its reply itself (no think block in the prompt)
    for with_image in (False, True):
        expected = chat_ids(tok, prompt_messages(PROMPT, with_image),
                            qwen3_templates["tokenizer_config"], True)
        assert tok.decode([i for i in expected if i != IMAGE]).endswith("<|im_start|>assistant\n")
        assert hook_ids(tok, profile, PROMPT, with_image) == expected
        assert chat_ids(tok, prompt_messages(PROMPT, with_image), profile.chat_template(),
                        True) == expected


# -------------------------------------------------------------------- Llama-3.1 / 3.2
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>",
                   "<|finetune_right_pad_id|>"]
LLAMA_TEMPLATES = {"llama3.1-instruct": "meta-llama-Llama-3.1-8B-Instruct.jinja",
                   "llama3.2-instruct": "meta-llama-Llama-3.2-3B-Instruct.jinja"}


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    """A tokenizer with the Llama-3(.1) special-token contract (bos ``<|begin_of_text|>``,
    turns ended by ``<|eot_id|>``, ``<|eom_id|>``, ``<|python_tag|>``, Meta's pad token),
    saved as a model folder is."""
    from transformers import PreTrainedTokenizerFast

    from xtuner_llava_swap.testing.tiny_recipe import synthetic_bpe

    out = tmp_path_factory.mktemp("llama3-tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=synthetic_bpe(LLAMA3_SPECIALS),
                            bos_token="<|begin_of_text|>", eos_token="<|eot_id|>").save_pretrained(out)
    return out


@requires_fixtures
@pytest.mark.parametrize("name", list(LLAMA_TEMPLATES))
def test_llama31_training_ids_equal_apply_chat_template(llama3_dir, name):
    tok = build(name, llama3_dir)  # the contract check runs here
    profile = get_profile(name)
    official = (FIXTURES / "chat-templates" / LLAMA_TEMPLATES[name]).read_text()
    date = dict(date_string="26 Jul 2024")  # the profiles' training date
    header = tok.encode("<|start_header_id|>assistant<|end_header_id|>\n\n")
    end_id = tok.convert_tokens_to_ids("<|eot_id|>")
    for sample in CASES.values():
        messages = messages_of(sample)
        for system in (None, SYSTEM):
            encoded = encode_llava_conversation(sample, tok, profile, system=system)
            ids = encoded["input_ids"]
            assert ids == chat_ids(tok, with_system(messages, system), official, **date)
            assert ids == chat_ids(tok, with_system(messages, system), profile.chat_template())
            assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
            assert tok.decode([i for i in ids if i != IMAGE]).startswith(
                "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting "
                "Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n")
            assert encoded["labels"] == expected_labels(ids, header, end_id)
            assert_dataset_encodes_the_same(tok, profile, sample, encoded, system=system)
        for with_image in (False, True):
            messages = prompt_messages(PROMPT, with_image)
            expected = chat_ids(tok, messages, official, True, **date)
            assert hook_ids(tok, profile, PROMPT, with_image) == expected
            assert chat_ids(tok, messages, profile.chat_template(), True) == expected
            if with_image:
                assert verify_ids(tok, profile, PROMPT) == expected


# ---------------------------------------------------------------------- facts, listing
def test_new_profiles_facts_and_listing(capsys):
    import json

    from xtuner_llava_swap.profiles.__main__ import main

    qwen3, llama31 = get_profile("qwen3"), get_profile("llama3.1-instruct")
    assert (qwen3.family.hf_text_model_type, qwen3.family.official_llava_class) == ("qwen3", None)
    from xtuner_llava_swap.errors import ExportError
    from xtuner_llava_swap.export.llava_writer import check_llava_target

    with pytest.raises(ExportError, match=r"'qwen3': the official LLaVA code has no Qwen3 "
                                          r"class .*; use --format hf"):
        check_llava_target(SimpleNamespace(profile=qwen3), Path("out-llava-qwen"))
    assert qwen3.template["LAST_REPLY_PREFIX"] == THINK_EMPTY and not qwen3.has_bos
    assert "ALWAYS_SYSTEM" not in qwen3.template and "LAST_REPLY_PREFIX" not in llama31.template
    assert llama31.template["ALWAYS_SYSTEM"] is True and llama31.has_bos
    assert llama31.family.official_llava_class == "LlavaLlamaForCausalLM"
    assert set(llama31.stop_words) == {"<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"}
    for p in (qwen3, llama31, get_profile("llama3.2-instruct")):
        assert p.lora_target_modules == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                         "up_proj", "down_proj")
    # profiles without the position fields keep their template dicts as they were
    assert all("LAST_REPLY_PREFIX" not in get_profile(n).template
               and "ALWAYS_SYSTEM" not in get_profile(n).template
               for n in ("qwen2.5", "llama3-instruct", "vicuna-v1.5", "phi3-mini"))
    main([])  # the listing works on xtuner's stack, which has no Qwen3 class
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:] if line}
    assert "newer only (transformers >= 4.51)" in rows["qwen3"]
    assert "xtuner's (4.48) or newer" in rows["llama3.1-instruct"]
    assert "xtuner's (transformers 4.48) only" in rows["qwen"]
    main(["qwen3"])
    shown = json.loads(capsys.readouterr().out)
    assert (shown["stack"], shown["last_reply_prefix"]) == (
        "newer only (transformers >= 4.51)", THINK_EMPTY)
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__) < Version("4.51"):  # xtuner's stack (make test)
        with pytest.raises(RuntimeError, match="qwen3 family needs transformers >= 4.51"):
            qwen3.family.check_stack()
    llama31.family.check_stack()  # a family without a minimum passes on any stack
