"""Training ids == the model's own chat format, token for token, with exact labels.

The training side is xtuner's real text pipeline (``llava_map_fn`` -> the profile's
template map fn -> ``encode_fn(with_image_token=True)``) on a tokenizer built by
``BUILDER.build(tokenizer_dict(...))``. The reference side is, per profile:

* Qwen-7B-Chat (QWenTokenizer ships no chat template): the documented ChatML text,
  written out here;
* Qwen1.5/2/2.5: the Qwen2 fixture tokenizer's own ``apply_chat_template`` (which always
  inserts "You are a helpful assistant."), with ``<image>`` added as a token;
* Vicuna v1.5: the documented Vicuna v1.1 text, tokenized the way LLaVA-1.5 does
  (split at ``<image>``, bos once);
* Phi-3-mini: Llama-2 sentencepiece + Phi-3's added tokens (whitespace to their right
  stripped, as in Phi-3's tokenizer) and Phi-3's chat template;
* every profile: the profile's own ``chat_template()`` set on the tokenizer (what the
  Hugging Face export ships).
"""
from __future__ import annotations

import copy

import pytest
from support import FIXTURES, requires_fixtures

import xtuner_llava_swap  # noqa: F401  (compat patches before xtuner.dataset)
from xtuner_llava_swap.profiles import get_profile
from xtuner_llava_swap.training.tokenizers import (TokenizerContractError, chat_template_ids,
                                                   encode_llava_conversation, tokenizer_dict)

IMAGE = -200  # xtuner's IMAGE_TOKEN_INDEX
IGNORE = -100

# A real LLaVA fine-tune sample (fixtures/llava_samples/lmms-finetune), `<image>` glued to
# the text, and a text-only one; the reference messages hold what llava_map_fn makes of them.
IMAGE_SAMPLE = {"image": "bm.jpg", "conversations": [
    {"from": "human", "value": "<image>Who are the people in this image?"},
    {"from": "gpt", "value": "They are the members of the Kpop group BabyMonster."},
    {"from": "human", "value": "When will their album be released?"},
    {"from": "gpt", "value": "Their album will be released at 0AM KST on April 1st, 2024 based "
                             "on the information shown in the image."}]}
IMAGE_LAST_SAMPLE = {"image": "dog.jpg", "conversations": [
    {"from": "human", "value": "Describe the animal.\n<image>"},
    {"from": "gpt", "value": "A brown dog runs on green grass.\nIt looks happy."},
    {"from": "human", "value": "Is it sunny?"},
    {"from": "gpt", "value": "Yes."},
    {"from": "human", "value": "Thanks!"},
    {"from": "gpt", "value": "You're welcome."}]}
TEXT_SAMPLE = {"conversations": [
    {"from": "human", "value": "What is the capital of France?"},
    {"from": "gpt", "value": "The capital of France is Paris."},
    {"from": "human", "value": "Übersetze 'cat' ins Deutsche."},
    {"from": "gpt", "value": "Katze."}]}
SAMPLES = {"image": IMAGE_SAMPLE, "image_last": IMAGE_LAST_SAMPLE, "text": TEXT_SAMPLE}


def messages_of(sample) -> list:
    """The conversation as chat messages, ``<image>`` moved to the front like llava_map_fn."""
    out = []
    for m in sample["conversations"]:
        text = m["value"]
        if m["from"] == "human" and "<image>" in text:
            text = "<image>\n" + text.replace("<image>", "").strip()
        out.append({"role": "user" if m["from"] == "human" else "assistant", "content": text})
    return out


def pairs_of(sample) -> list:
    msgs = messages_of(sample)
    return [(msgs[i]["content"], msgs[i + 1]["content"]) for i in range(0, len(msgs), 2)]


def ids_split_at_image(tokenizer, text: str, bos: list) -> list:
    """LLaVA's tokenizer_image_token: encode the text between `<image>`s, bos once."""
    ids = list(bos)
    for index, chunk in enumerate(text.split("<image>")):
        if index:
            ids.append(IMAGE)
        ids += tokenizer.encode(chunk, add_special_tokens=False)
    return ids


_IMAGE_COPIES = {}


def with_image_token(tokenizer):
    """A copy of ``tokenizer`` with `<image>` as one special token (made once per tokenizer)."""
    from transformers import AddedToken

    if id(tokenizer) not in _IMAGE_COPIES:
        tok = copy.deepcopy(tokenizer)
        tok.add_tokens([AddedToken("<image>", special=True, normalized=False)])
        _IMAGE_COPIES[id(tokenizer)] = (tokenizer, tok)  # keeps the original alive: id stays unique
    return _IMAGE_COPIES[id(tokenizer)][1]


def apply_with_image(tokenizer, messages, chat_template=None) -> list:
    """``apply_chat_template(tokenize=True)`` with `<image>` as a token, mapped to -200.

    ``chat_template`` is set on the tokenizer (as an exported tokenizer ships it) for the call.
    """
    tok = with_image_token(tokenizer)
    image_id = tok.convert_tokens_to_ids("<image>")
    own = tok.chat_template
    try:
        tok.chat_template = chat_template or own
        ids = tok.apply_chat_template(messages, tokenize=True)
    finally:
        tok.chat_template = own
    return [IMAGE if i == image_id else i for i in ids]


def expected_labels(ids: list, header: list, end_id: int) -> list:
    """-100 everywhere except from after each assistant header to its end-of-turn, inclusive."""
    labels = [IGNORE] * len(ids)
    i = 0
    while i <= len(ids) - len(header):
        if ids[i:i + len(header)] == header:
            start = i + len(header)
            stop = ids.index(end_id, start) + 1
            labels[start:stop] = ids[start:stop]
            i = stop
        else:
            i += 1
    return labels


def assert_supervised_replies(tokenizer, profile, sample, encoded, header):
    """Exactly each reply + its end-of-turn token is supervised, at the exact positions."""
    ids, labels = encoded["input_ids"], encoded["labels"]
    end_id = tokenizer.convert_tokens_to_ids(profile.end_of_turn)
    assert labels == expected_labels(ids, header, end_id)
    spans, start = [], None
    for i, label in enumerate(labels + [IGNORE]):
        if label != IGNORE and start is None:
            start = i
        elif label == IGNORE and start is not None:
            spans.append((start, i))
            start = None
    replies = [a for _, a in pairs_of(sample)]
    assert len(spans) == len(replies)
    for (a, b), reply in zip(spans, replies):
        assert ids[b - 1] == end_id
        assert tokenizer.decode(ids[a:b - 1]).strip() == reply
    assert IMAGE not in [label for label in labels if label != IGNORE]


# --------------------------------------------------------------------------- tokenizers
def build(profile, path, **overrides):
    from xtuner.registry import BUILDER

    return BUILDER.build(tokenizer_dict(profile, path, **overrides))


@pytest.fixture(scope="module")
def qwen_tok():
    return build("qwen", FIXTURES / "qwen-7b")


@pytest.fixture(scope="module")
def qwen2_fast():
    return build("qwen2", FIXTURES / "qwen2-1.5b-instruct-finetune-export")


@pytest.fixture(scope="module")
def qwen2_slow():
    return build("qwen2", FIXTURES / "qwen2-1.5b-instruct-finetune-export", use_fast=False)


@pytest.fixture(scope="module")
def vicuna_tok():
    return build("vicuna-v1.5", FIXTURES / "llama-2")


def save_phi3_tokenizer(out_dir, rstrip: bool = True):
    """Llama-2 sentencepiece + Phi-3-mini's added tokens 32000-32010 (in Phi-3's tokenizer
    all but <|endoftext|> strip the whitespace to their right) + its chat template."""
    from transformers import LlamaTokenizerFast

    from xtuner_llava_swap.families.phi3.tiny import CHAT_TEMPLATE, added_tokens

    tok = LlamaTokenizerFast.from_pretrained(FIXTURES / "llama-2", from_slow=True, legacy=True)
    tok.add_tokens(added_tokens(rstrip))
    tok.eos_token = tok.pad_token = "<|endoftext|>"
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def phi3_dir(tmp_path_factory):
    return save_phi3_tokenizer(tmp_path_factory.mktemp("phi3-tokenizer"))


@pytest.fixture(scope="module")
def phi3_tok(phi3_dir):
    return build("phi3-mini", phi3_dir)


# ------------------------------------------------------------------ Qwen-7B (first gen)
def qwen_chatml(system: str, pairs) -> str:
    """Qwen-7B-Chat's documented ChatML, every message closed by <|im_end|> and a newline."""
    text = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    for user, assistant in pairs:
        text += f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>\n"
    return text


@requires_fixtures
@pytest.mark.parametrize("which", list(SAMPLES))
def test_qwen7b_chat_equals_documented_chatml(qwen_tok, which):
    sample, profile = SAMPLES[which], get_profile("qwen")
    encoded = encode_llava_conversation(sample, qwen_tok, profile)
    reference = ids_split_at_image(
        qwen_tok, qwen_chatml("You are a helpful assistant.", pairs_of(sample)), bos=[])
    assert encoded["input_ids"] == reference
    # No bos, ChatML from the first id, the last id is the newline after <|im_end|>.
    assert encoded["input_ids"][0] == 151644 and encoded["input_ids"][-2:] == [151645, 198]
    header = [151644] + qwen_tok.encode("assistant\n")
    assert_supervised_replies(qwen_tok, profile, sample, encoded, header)


@requires_fixtures
def test_qwen7b_explicit_and_empty_system(qwen_tok):
    profile = get_profile("qwen")
    for system in ("Answer the following questions about the image.", ""):
        encoded = encode_llava_conversation(IMAGE_SAMPLE, qwen_tok, profile, system=system)
        assert encoded["input_ids"] == ids_split_at_image(
            qwen_tok, qwen_chatml(system, pairs_of(IMAGE_SAMPLE)), bos=[])


@requires_fixtures
def test_qwen7b_base_ends_turns_with_endoftext():
    tok = build("qwen-base", FIXTURES / "qwen-7b")
    profile = get_profile("qwen-base")
    encoded = encode_llava_conversation(TEXT_SAMPLE, tok, profile)
    text = "".join(f"<|im_start|>user\n{u}<|im_end|>\n<|im_start|>assistant\n{a}<|endoftext|>\n"
                   for u, a in pairs_of(TEXT_SAMPLE))
    assert encoded["input_ids"] == tok.encode(text)
    assert encoded["input_ids"].count(151643) == 2 and 151645 in encoded["input_ids"]
    header = [151644] + tok.encode("assistant\n")
    assert_supervised_replies(tok, profile, TEXT_SAMPLE, encoded, header)


# ------------------------------------------------------------- Qwen1.5 / Qwen2 / Qwen2.5
@requires_fixtures
@pytest.mark.parametrize("kind", ["fast", "slow"])
@pytest.mark.parametrize("which", list(SAMPLES))
@pytest.mark.parametrize("name", ["qwen1.5", "qwen2"])
def test_qwen2_family_equals_tokenizer_chat_template(request, kind, which, name):
    tok = request.getfixturevalue(f"qwen2_{kind}")
    assert type(tok).__name__ == {"fast": "Qwen2TokenizerFast", "slow": "Qwen2Tokenizer"}[kind]
    sample, profile = SAMPLES[which], get_profile(name)
    encoded = encode_llava_conversation(sample, tok, profile)
    # The fixture's own template inserts "You are a helpful assistant." by itself.
    assert encoded["input_ids"] == apply_with_image(tok, messages_of(sample))
    assert encoded["input_ids"][0] == 151644, "no bos for the Qwen2 family"
    header = [151644] + tok.encode("assistant\n")
    assert_supervised_replies(tok, profile, sample, encoded, header)


@requires_fixtures
@pytest.mark.parametrize("name, system", [
    ("qwen2", "Answer the following questions about the image."),
    ("qwen2.5", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")])
def test_qwen2_family_config_system_replaces_default(qwen2_fast, name, system):
    """A system set by the config equals the fixture template given that system message."""
    encoded = encode_llava_conversation(IMAGE_SAMPLE, qwen2_fast, get_profile(name), system=system)
    messages = [{"role": "system", "content": system}, *messages_of(IMAGE_SAMPLE)]
    assert encoded["input_ids"] == apply_with_image(qwen2_fast, messages)


@requires_fixtures
def test_qwen2_5_default_system_is_its_own(qwen2_fast):
    """Qwen2.5's template inserts its own default system; the profile trains with it."""
    encoded = encode_llava_conversation(TEXT_SAMPLE, qwen2_fast, get_profile("qwen2.5"))
    system = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    assert encoded["input_ids"] == qwen2_fast.encode(qwen_chatml(system, pairs_of(TEXT_SAMPLE)))


# ----------------------------------------------------------------------- Vicuna v1.5
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's "
                 "questions.")


def vicuna_v1_1(system: str, pairs) -> str:
    """FastChat's documented "vicuna_v1.1" conversation (LLaVA-1.5's conv_vicuna_v1)."""
    text = system + " "
    for user, assistant in pairs:
        text += f"USER: {user} ASSISTANT: {assistant}</s>"
    return text


@requires_fixtures
@pytest.mark.parametrize("which", list(SAMPLES))
def test_vicuna_equals_documented_v1_1_format(vicuna_tok, which):
    sample, profile = SAMPLES[which], get_profile("vicuna-v1.5")
    encoded = encode_llava_conversation(sample, vicuna_tok, profile)
    reference = ids_split_at_image(vicuna_tok, vicuna_v1_1(VICUNA_SYSTEM, pairs_of(sample)),
                                   bos=[vicuna_tok.bos_token_id])
    assert encoded["input_ids"] == reference
    ids = encoded["input_ids"]
    assert ids[0] == 1 and ids.count(1) == 1, "bos exactly once, at the start"
    assert ids[-1] == 2 and ids.count(2) == len(pairs_of(sample)), "</s> ends every reply"
    header = vicuna_tok.encode("ASSISTANT:", add_special_tokens=False)
    assert_supervised_replies(vicuna_tok, profile, sample, encoded, header)


@requires_fixtures
def test_vicuna_tokenizer_dict_injects_slow_legacy_and_pad(vicuna_tok):
    assert type(vicuna_tok).__name__ == "LlamaTokenizer" and vicuna_tok.legacy is True
    assert (vicuna_tok.bos_token_id, vicuna_tok.eos_token_id, vicuna_tok.pad_token_id) == (1, 2, 0)


# --------------------------------------------------------------------------- Phi-3-mini
@requires_fixtures
@pytest.mark.parametrize("which", list(SAMPLES))
def test_phi3_equals_tokenizer_chat_template(phi3_tok, which):
    sample, profile = SAMPLES[which], get_profile("phi3-mini")
    encoded = encode_llava_conversation(sample, phi3_tok, profile)
    assert encoded["input_ids"] == apply_with_image(phi3_tok, messages_of(sample))
    ids = encoded["input_ids"]
    assert ids[0] == phi3_tok.bos_token_id and ids.count(phi3_tok.bos_token_id) == 1
    header = [phi3_tok.convert_tokens_to_ids("<|assistant|>")]
    assert_supervised_replies(phi3_tok, profile, sample, encoded, header)


# ------------------------------------------------- the profile's own chat template (export)
@requires_fixtures
@pytest.mark.parametrize("which", list(SAMPLES))
@pytest.mark.parametrize("name, tok_fixture", [
    ("qwen", "qwen_tok"), ("qwen1.5", "qwen2_fast"), ("qwen2", "qwen2_slow"),
    ("qwen2.5", "qwen2_fast"), ("vicuna-v1.5", "vicuna_tok"), ("phi3-mini", "phi3_tok")])
def test_profile_chat_template_renders_training_ids(request, name, tok_fixture, which):
    tok = request.getfixturevalue(tok_fixture)
    profile, sample = get_profile(name), SAMPLES[which]
    encoded = encode_llava_conversation(sample, tok, profile)
    messages = messages_of(sample)
    if name == "qwen":  # QWenTokenizer cannot add tokens: compare the ids split at <image>
        text = tok.apply_chat_template(messages, chat_template=profile.chat_template(),
                                       tokenize=False)
        assert ids_split_at_image(tok, text, bos=[]) == encoded["input_ids"]
    else:
        assert apply_with_image(tok, messages, profile.chat_template()) == encoded["input_ids"]
    assert chat_template_ids(tok, profile, messages) == encoded["input_ids"]
    # The same with an explicit system prompt, and with list-style multimodal content.
    system = "Be brief."
    assert chat_template_ids(tok, profile, messages, system=system) == encode_llava_conversation(
        sample, tok, profile, system=system)["input_ids"]
    listed = [{"role": m["role"], "content": (
        [{"type": "image"}, {"type": "text", "text": m["content"].replace("<image>\n", "")}]
        if "<image>" in m["content"] else [{"type": "text", "text": m["content"]}])}
        for m in messages]
    assert chat_template_ids(tok, profile, listed) == encoded["input_ids"]
    # Generation prompt: the rendered text of the user turns ends with the assistant header.
    prompt = tok.apply_chat_template(messages[:1], chat_template=profile.chat_template(),
                                     tokenize=False, add_generation_prompt=True)
    assert prompt.endswith(profile.prompt["INSTRUCTION"].split("{input}")[1])


# --------------------------------------------------------- injection that breaks the ids
@requires_fixtures
def test_fast_llama_tokenizer_is_refused_for_vicuna(tmp_path):
    """Llama-2's fast tokenizer does not read '</s>' glued to text as one token."""
    from transformers import LlamaTokenizerFast

    LlamaTokenizerFast.from_pretrained(FIXTURES / "llama-2", from_slow=True).save_pretrained(tmp_path)
    with pytest.raises(TokenizerContractError, match="training splits text differently"):
        build("vicuna-v1.5", tmp_path, use_fast=True)


@requires_fixtures
def test_non_legacy_llama_tokenizer_is_refused_for_vicuna():
    with pytest.raises(TokenizerContractError,
                       match=r"training splits text differently .* at token \d+"):
        build("vicuna-v1.5", FIXTURES / "llama-2", legacy=False)


@requires_fixtures
def test_phi3_tokens_without_rstrip_are_refused(tmp_path):
    save_phi3_tokenizer(tmp_path, rstrip=False)
    with pytest.raises(TokenizerContractError, match="training splits text differently"):
        build("phi3-mini", tmp_path)


# ------------------------------------------------- without ../shared/fixtures (fresh clone)
def test_synthetic_qwen2_tokenizer_equals_its_chat_template(tiny_parts):
    """The tiny factory's synthetic Qwen2 tokenizer (same special tokens and chat template as
    Qwen2's): the same equality and labels, so a clone without the fixtures still checks."""
    from xtuner.registry import BUILDER

    tok = BUILDER.build(tokenizer_dict("qwen2", tiny_parts("qwen2", real_tokenizer=False)))
    profile = get_profile("qwen2")
    header = tok.encode("<|im_start|>assistant\n")
    for sample in SAMPLES.values():
        encoded = encode_llava_conversation(sample, tok, profile)
        assert encoded["input_ids"] == apply_with_image(tok, messages_of(sample))
        assert encoded["input_ids"] == apply_with_image(tok, messages_of(sample),
                                                        profile.chat_template())
        assert_supervised_replies(tok, profile, sample, encoded, header)
