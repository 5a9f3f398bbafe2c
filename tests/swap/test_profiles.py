"""Profiles registry, template texts, the default-system map fn, tokenizer dicts and the
tokenizer contract (each failure message), and that configs naming them survive
xtuner's ``register_function`` + dump + resume."""
from __future__ import annotations

import textwrap

import pytest
from support import FIXTURES, requires_fixtures

import xtuner_llava_swap  # noqa: F401  (compat patches before xtuner.dataset)
from xtuner_llava_swap.families import FAMILIES, LLMFamily
from xtuner_llava_swap.profiles import (PROFILES, PROMPT_TEMPLATE, LLMProfile, ProfileRegistry,
                                        UnknownProfileError, get_profile, list_profiles,
                                        template_map_fn_factory)
from xtuner_llava_swap.training.tokenizers import (TokenizerContractError, build_tokenizer,
                                                   check_tokenizer_contract,
                                                   encode_llava_conversation, tokenizer_dict)

QWEN2_DIR = FIXTURES / "qwen2-1.5b-instruct-finetune-export" if FIXTURES else None
TEXT_SAMPLE = {"conversations": [
    {"from": "human", "value": "What is the capital of France?"},
    {"from": "gpt", "value": "The capital of France is Paris."},
    {"from": "human", "value": "And of Italy?"},
    {"from": "gpt", "value": "Rome."}]}
IMAGE_SAMPLE = {"image": "x.jpg", "conversations": [
    {"from": "human", "value": "Describe it.\n<image>"},
    {"from": "gpt", "value": "A red square."}]}


# ---------------------------------------------------------------------------- registry
def test_registry_names_and_unknown_name():
    assert set(list_profiles()) >= {"qwen", "qwen-base", "qwen1.5", "qwen2", "qwen2.5",
                                    "internlm2-chat", "llama3-instruct", "vicuna-v1.5",
                                    "phi3-mini"}
    with pytest.raises(UnknownProfileError, match=r"unknown LLM profile 'qwen9'; known profiles: .*qwen2\.5"):
        get_profile("qwen9")
    with pytest.raises(KeyError):
        PROFILES["nope"]
    assert get_profile(get_profile("qwen")) is get_profile("qwen")


@pytest.mark.parametrize("name, family, text_type, official, mapped, remote, lora", [
    ("qwen", "qwen", "qwen2", "LlavaQwenForCausalLM", True, True, "c_attn"),
    ("qwen-base", "qwen", "qwen2", "LlavaQwenForCausalLM", True, True, "w2"),
    ("qwen1.5", "qwen2", "qwen2", "LlavaQwenForCausalLM", False, False, "q_proj"),
    ("qwen2.5", "qwen2", "qwen2", "LlavaQwenForCausalLM", False, False, "down_proj"),
    ("internlm2-chat", "internlm2", "llama", None, True, True, "wqkv"),
    ("llama3-instruct", "llama", "llama", "LlavaLlamaForCausalLM", False, False, "o_proj"),
    ("vicuna-v1.5", "llama", "llama", "LlavaLlamaForCausalLM", False, False, "gate_proj"),
    ("phi3-mini", "phi3", "phi3", None, False, False, "qkv_proj"),
])
def test_profile_facts(name, family, text_type, official, mapped, remote, lora):
    p = get_profile(name)
    f = p.family
    assert (p.name, f.name, f.hf_text_model_type, f.official_llava_class, bool(f.weight_table),
            p.trust_remote_code) == (name, family, text_type, official, mapped, remote)
    assert FAMILIES[family] is f and (official or f.no_official_llava)
    assert lora in p.lora_target_modules
    assert p.stop_words[0] == p.end_of_turn == p.template["SUFFIX"]
    assert p.template["SUFFIX_AS_EOS"] is True
    assert PROMPT_TEMPLATE[p.config_key] == p.template


def test_template_is_a_fresh_configdict_each_time():
    from mmengine.config import ConfigDict

    p = get_profile("qwen2")
    t = p.template
    assert isinstance(t, ConfigDict) and t.INSTRUCTION.startswith("<|im_start|>user")
    t.STOP_WORDS.append("junk")
    t.SEP = "junk"
    assert p.template.SEP == "\n" and "junk" not in p.stop_words


def test_xtuner_template_map_fn_factory_accepts_profile_templates():
    from xtuner.dataset.map_fns import template_map_fn_factory as xtuner_factory

    for p in PROFILES.values():
        turn = xtuner_factory(p.template)({"conversation": [{"input": "Hi", "output": "Yo"}]})[
            "conversation"][0]
        assert turn["input"] == p.prompt["INSTRUCTION"].format(input="Hi")  # no system: xtuner's
        assert turn["output"] == "Yo" + p.end_of_turn and turn["need_eos_token"] is False


def test_command_line_lists_and_describes(capsys):
    import json

    from xtuner_llava_swap.profiles.__main__ import main

    main([])
    listing = capsys.readouterr().out
    assert all(name in listing for name in PROFILES)
    main(["qwen2.5"])
    shown = json.loads(capsys.readouterr().out)
    assert shown["end_of_turn"] == "<|im_end|>" and shown["template"]["DEFAULT_SYSTEM"].startswith("You are Qwen")
    with pytest.raises(SystemExit):
        main(["gpt-9"])
    assert "unknown LLM profile 'gpt-9'" in capsys.readouterr().err


def test_profile_definition_is_validated():
    base = dict(family=FAMILIES["qwen2"], default_system="", has_bos=False)
    chatml = dict(get_profile("qwen2").prompt)
    with pytest.raises(ValueError, match="SUFFIX_AS_EOS must be True"):
        LLMProfile(name="x", prompt={**chatml, "SUFFIX_AS_EOS": False}, **base)
    with pytest.raises(ValueError, match="must be a stop word"):
        LLMProfile(name="x", prompt={**chatml, "STOP_WORDS": ["<|endoftext|>"]}, **base)
    with pytest.raises(ValueError, match="family must be an LLMFamily"):
        LLMProfile(name="x", prompt=chatml, **{**base, "family": "qwen2"})
    with pytest.raises(ValueError, match="say why it has no official LLaVA class"):
        LLMFamily(name="x", hf_text_model_type="x")
    with pytest.raises(ValueError, match="INSTRUCTION must contain"):
        LLMProfile(name="x", prompt={**chatml, "INSTRUCTION": "{round}: {input}"}, **base)
    registry = ProfileRegistry()
    registry.register(LLMProfile(name="x", prompt=chatml, **base))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(LLMProfile(name="x", prompt=chatml, **base))


def test_adding_a_family_is_one_small_definition():
    """The worked example of docs/profiles.md (in a private registry)."""
    from xtuner_llava_swap.families.llama.profiles import LLAMA_LORA_TARGETS
    from xtuner_llava_swap.profiles.formats import chatml

    registry = ProfileRegistry()
    yi = registry.register(LLMProfile(
        name="yi-chat",
        family=FAMILIES["llama"],
        prompt=chatml("<|im_end|>", ("<|im_end|>",)),
        default_system="",
        has_bos=False,
        tokenizer_kwargs=dict(eos_token="<|im_end|>", pad_token="<unk>"),
        lora_target_modules=LLAMA_LORA_TARGETS,
        hf_example="01-ai/Yi-6B-Chat",
    ))
    assert registry["yi-chat"] is yi and "yi-chat" not in PROFILES
    assert yi.render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n")


# ------------------------------------------------------- text level (no fixture tokenizer)
def pipeline_text(sample, profile, system=None, bos=""):
    """The text xtuner's pipeline encodes: llava_map_fn -> template map fn, pieces joined."""
    from xtuner.dataset.map_fns import llava_map_fn

    example = dict(sample)
    example.update(llava_map_fn(example))
    conversation = template_map_fn_factory(profile.template, system=system)(example)["conversation"]
    return bos + "".join(t["input"] + t["output"] + t["sep"] for t in conversation)


def as_messages(sample):
    from xtuner.dataset.map_fns import llava_map_fn

    turns = llava_map_fn({"conversations": [dict(m) for m in sample["conversations"]]})["conversation"]
    return [m for t in turns for m in ({"role": "user", "content": t["input"]},
                                       {"role": "assistant", "content": t["output"]})]


def test_llama3_instruct_text_equals_documented_format():
    p = get_profile("llama3-instruct")
    documented = (
        "<|begin_of_text|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<image>\nDescribe it.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA red square.<|eot_id|>")
    assert pipeline_text(IMAGE_SAMPLE, p, bos="<|begin_of_text|>") == documented
    assert p.render(as_messages(IMAGE_SAMPLE), bos_token="<|begin_of_text|>") == documented
    with_system = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                   + documented[len("<|begin_of_text|>"):])
    assert pipeline_text(IMAGE_SAMPLE, p, system="Be brief.", bos="<|begin_of_text|>") == with_system
    assert p.render([{"role": "system", "content": "Be brief."}, *as_messages(IMAGE_SAMPLE)],
                    bos_token="<|begin_of_text|>") == with_system
    assert p.tokenizer_kwargs["eos_token"] == "<|eot_id|>" and p.default_system == ""


def test_internlm2_chat_text_equals_documented_format():
    p = get_profile("internlm2-chat")
    documented = ("<s><|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                  "<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>\n"
                  "<|im_start|>user\nAnd of Italy?<|im_end|>\n"
                  "<|im_start|>assistant\nRome.<|im_end|>\n")
    assert pipeline_text(TEXT_SAMPLE, p, bos="<s>") == documented
    assert p.render(as_messages(TEXT_SAMPLE), bos_token="<s>") == documented


@pytest.mark.parametrize("name", list(PROFILES))
def test_rendered_chat_template_text_equals_pipeline_text(name):
    p = get_profile(name)
    for sample in (TEXT_SAMPLE, IMAGE_SAMPLE):
        bos = "<BOS>" if p.has_bos else ""
        # The pipeline's pieces join without the text sentencepiece implies (reply_prefix).
        rendered = p.render(as_messages(sample), bos_token="<BOS>")
        assert rendered.replace(p.prompt["INSTRUCTION"].split("{input}")[1] + p.reply_prefix,
                                p.prompt["INSTRUCTION"].split("{input}")[1]) == \
            pipeline_text(sample, p, bos=bos)


# ------------------------------------------------------------ default-system map function
def test_template_map_fn_default_explicit_and_dataset_system():
    from xtuner.dataset.map_fns import llava_map_fn

    p = get_profile("qwen2.5")

    def first_input(template, system=None, dataset_system=None):
        example = llava_map_fn({"conversations": [dict(m) for m in TEXT_SAMPLE["conversations"]]})
        if dataset_system:
            example["conversation"][0]["system"] = dataset_system
        conversation = template_map_fn_factory(template, system=system)(example)["conversation"]
        assert all("system" not in t["input"] for t in conversation[1:])
        return conversation[0]["input"]

    default = "<|im_start|>system\n" + p.default_system + "<|im_end|>\n"
    assert first_input(p.template).startswith(default)
    assert first_input("qwen2.5").startswith(default)  # a profile name
    assert first_input("xtuner_llava_swap.profiles.PROMPT_TEMPLATE.qwen2_5").startswith(default)
    assert first_input(p.template, system="Be brief.").startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n")
    assert first_input(p.template, system="").startswith("<|im_start|>user\n")
    assert first_input(p.template, dataset_system="From data.").startswith(
        "<|im_start|>system\nFrom data.<|im_end|>\n")
    example = llava_map_fn({"conversations": [dict(m) for m in TEXT_SAMPLE["conversations"]]})
    example["conversation"][1]["system"] = "Later."
    later = template_map_fn_factory(p.template)(example)["conversation"][1]["input"]
    assert later.startswith("<|im_start|>system\nLater.<|im_end|>\n<|im_start|>user\n")
    with pytest.raises(ValueError, match="neither a profile name"):
        template_map_fn_factory("no.such.template")


# --------------------------------------------------------------------- tokenizer dicts
def test_tokenizer_dict_shape():
    d = tokenizer_dict("qwen", "/models/Qwen-7B-Chat")
    assert d == dict(type=build_tokenizer, profile="qwen",
                     pretrained_model_name_or_path="/models/Qwen-7B-Chat", trust_remote_code=True,
                     padding_side="right", eos_token="<|im_end|>", pad_token="<|endoftext|>")
    assert tokenizer_dict("qwen2.5", "p", use_fast=False)["use_fast"] is False
    assert tokenizer_dict("vicuna-v1.5", "p")["pad_token"] == "<unk>"


@requires_fixtures
def test_qwen7b_tokenizer_injection_and_stop_ids():
    from transformers import AutoTokenizer
    from xtuner.registry import BUILDER

    raw = AutoTokenizer.from_pretrained(FIXTURES / "qwen-7b", trust_remote_code=True)
    assert (raw.bos_token, raw.eos_token, raw.pad_token) == (None, None, None)
    chat = BUILDER.build(tokenizer_dict("qwen", FIXTURES / "qwen-7b"))
    assert (chat.bos_token_id, chat.eos_token_id, chat.pad_token_id) == (None, 151645, 151643)
    assert get_profile("qwen").stop_token_ids(chat) == [151645, 151643]
    base = build_tokenizer(FIXTURES / "qwen-7b", profile="qwen-base")  # profile defaults injected
    assert (base.eos_token_id, base.pad_token_id) == (151643, 151643)
    assert get_profile("qwen-base").stop_token_ids(base) == [151643]


# ------------------------------------------------------- contract: each failure message
@requires_fixtures
def test_contract_eos_and_pad_missing():
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(FIXTURES / "qwen-7b", trust_remote_code=True)
    with pytest.raises(TokenizerContractError) as error:
        check_tokenizer_contract(raw, "qwen")
    message = str(error.value)
    assert "eos token is missing. Fix: build it with tokenizer_dict('qwen', path), which passes eos_token='<|im_end|>'" in message
    assert "pad token is missing (batches cannot be padded). Fix: pass pad_token='<|endoftext|>'" in message


@requires_fixtures
def test_contract_wrong_eos_is_named():
    with pytest.raises(TokenizerContractError,
                       match=r"eos token is '<\|endoftext\|>', profile 'qwen2' needs '<\|im_end\|>'"):
        build_tokenizer(QWEN2_DIR, profile="qwen2", eos_token="<|endoftext|>")


@requires_fixtures
def test_contract_pad_missing_for_llama():
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(FIXTURES / "llama-2", use_fast=False, legacy=True)
    with pytest.raises(TokenizerContractError, match=r"pad token is missing .* pad_token='<unk>'"):
        check_tokenizer_contract(raw, "vicuna-v1.5")


@requires_fixtures
def test_contract_unexpected_bos_with_slow_qwen2_tokenizer():
    """xtuner does not know the slow Qwen2Tokenizer by name: a bos would reach training."""
    with pytest.raises(TokenizerContractError,
                       match=r"bos \['<\|endoftext\|>'\] would start every training sample, but "
                             r"the 'qwen2' format has no bos. Fix: pass bos_token=None"):
        build_tokenizer(QWEN2_DIR, profile="qwen2", use_fast=False, bos_token="<|endoftext|>")


@requires_fixtures
def test_contract_missing_bos_for_vicuna():
    tok = build_tokenizer(FIXTURES / "llama-2", profile="vicuna-v1.5")
    tok.bos_token = None
    with pytest.raises(TokenizerContractError,
                       match=r"bos token is missing, but the 'vicuna-v1.5' format starts with bos"):
        check_tokenizer_contract(tok, "vicuna-v1.5")


@requires_fixtures
def test_contract_stop_word_not_one_token():
    with pytest.raises(TokenizerContractError,
                       match=r"stop word of profile 'qwen' '<\|im_end\|>' is tokenized into \d+ pieces"):
        build_tokenizer(FIXTURES / "llama-2", profile="qwen", trust_remote_code=False,
                        use_fast=False, pad_token="<unk>", eos_token="</s>")
    from transformers import AutoTokenizer

    llama = AutoTokenizer.from_pretrained(FIXTURES / "llama-2", use_fast=False)
    with pytest.raises(TokenizerContractError, match="not one token"):
        get_profile("qwen2").stop_token_ids(llama)


@requires_fixtures
def test_contract_image_token_in_pieces():
    from transformers import AddedToken

    tok = build_tokenizer(QWEN2_DIR, profile="qwen2")
    with pytest.raises(TokenizerContractError, match=r"'<image>' is tokenized into pieces, but this "
                                                     r"tokenizer must have it as one token"):
        check_tokenizer_contract(tok, "qwen2", image_token=True)
    tok.add_tokens([AddedToken("<image>", special=True, normalized=False)])
    check_tokenizer_contract(tok, "qwen2", image_token=True)


# ------------------------------------------- configs: xtuner builds, dumps and resumes them
CONFIG = textwrap.dedent("""\
    from transformers import CLIPImageProcessor
    from xtuner.dataset import LLaVADataset
    from xtuner.dataset.map_fns import llava_map_fn
    from xtuner_llava_swap.profiles import PROMPT_TEMPLATE, template_map_fn_factory
    from xtuner_llava_swap.training.tokenizers import build_tokenizer

    llm_name_or_path = {llm!r}
    data_path = {data!r}
    prompt_template = PROMPT_TEMPLATE.qwen2_5
    tokenizer = dict(type=build_tokenizer, profile='qwen2.5',
                     pretrained_model_name_or_path=llm_name_or_path, padding_side='right')
    llava_dataset = dict(
        type=LLaVADataset, data_path=data_path, image_folder='.', tokenizer=tokenizer,
        image_processor=dict(type=CLIPImageProcessor),
        dataset_map_fn=llava_map_fn,
        template_map_fn=dict(type=template_map_fn_factory, template=prompt_template),
        max_length=512)
    """)


@requires_fixtures
def test_config_survives_register_function_dump_and_resume(tmp_path):
    """A lazy-import config like xtuner's: the tokenizer and template map fn dicts build
    before and after xtuner train's register_function + dump, and the resumed ones give
    the same training ids through xtuner's dataset processing."""
    import json

    from datasets import Dataset, DatasetDict
    from mmengine.config import Config
    from xtuner.dataset.huggingface import process_hf_dataset
    from xtuner.registry import BUILDER
    from xtuner.tools.train import register_function

    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"id": "0", **IMAGE_SAMPLE}, {"id": "1", **TEXT_SAMPLE}]))
    config = tmp_path / "cfg.py"
    config.write_text(CONFIG.format(llm=str(QWEN2_DIR), data=str(data)))
    cfg = Config.fromfile(config)
    register_function(cfg._cfg_dict)
    cfg.dump(tmp_path / "dumped.py")
    dumped_text = (tmp_path / "dumped.py").read_text()
    assert "xtuner_llava_swap.profiles.PROMPT_TEMPLATE.qwen2_5" in dumped_text
    assert "xtuner_llava_swap.training.tokenizers.build_tokenizer" in dumped_text
    resumed = Config.fromfile(tmp_path / "dumped.py")

    tokenizer = build_tokenizer(QWEN2_DIR, profile="qwen2.5")
    p = get_profile("qwen2.5")
    expected = [encode_llava_conversation(s, tokenizer, p) for s in (IMAGE_SAMPLE, TEXT_SAMPLE)]
    # The resumed dicts through process_hf_dataset, called as LLaVADataset calls it (but in
    # one process: LLaVADataset's default 32 map processes cost ~10 s on a small machine).
    rows = [dict(r, image=r.get("image")) for r in json.loads(data.read_text())]
    text_data = process_hf_dataset(
        dataset=DatasetDict({"train": Dataset.from_list(rows)}), split="train",
        tokenizer=resumed.llava_dataset.tokenizer, max_length=resumed.llava_dataset.max_length,
        dataset_map_fn=resumed.llava_dataset.dataset_map_fn,
        template_map_fn=resumed.llava_dataset.template_map_fn, remove_unused_columns=False,
        pack_to_max_length=False, with_image_token=True, map_num_proc=1)
    assert [{k: row[k] for k in ("input_ids", "labels")} for row in text_data] == expected
    # ... and the pieces of the original config, built from their dicts.
    original = cfg.llava_dataset
    assert BUILDER.build(original.tokenizer).eos_token_id == tokenizer.eos_token_id
    template = BUILDER.build(original.template_map_fn).keywords["template"]
    assert template == p.template
    assert expected[0]["input_ids"].count(-200) == 1
    assert p.default_system in tokenizer.decode(expected[1]["input_ids"])


@requires_fixtures
def test_xtuner_hooks_build_the_tokenizer_dict():
    from xtuner.engine.hooks import DatasetInfoHook, EvaluateChatHook

    d = tokenizer_dict("qwen", FIXTURES / "qwen-7b")
    hook = EvaluateChatHook(tokenizer=d, evaluation_inputs=["Hi"], stop_words=[],
                            prompt_template=PROMPT_TEMPLATE.qwen,
                            system=get_profile("qwen").default_system)
    assert hook.tokenizer.eos_token_id == 151645 and len(hook.stop_criteria) == 2
    assert DatasetInfoHook(tokenizer=d).tokenizer.pad_token_id == 151643
