"""Qwen3 end to end in the newer environment (``.venv-tf457``, transformers 4.57).

A tiny random ``Qwen3ForCausalLM`` (the real fixture tokenizer when present) trains through
that environment's ``xtuner train`` with the shipped ``configs/llava_qwen3_8b_qlora.py``
(4-bit nf4 QLoRA, ``quantization_config`` kept); EvaluateChatHook's replies are forced to
end with ``<|im_end|>`` after K tokens and must stop there, after the non-thinking prompt.
The checkpoint exports to ``hf`` with ``--verify``, which loads the folder with plain
transformers 4.57 (``AutoProcessor``, ``LlavaForConditionalGeneration``) and checks its
prompt ids, logits and greedy tokens against xtuner's model of the run; the export's chat
template renders the ids training makes of a multi-turn conversation. The chat tool on the
same run (``qwen3_chat_check.py``, in that environment): ``--profile qwen3`` / ``qwen3-thinking``
render what the tokenizer's own chat template renders with ``enable_thinking`` off / on and
stop on the profile's stop ids; ``--load-in-4bit`` loads the LLM as bitsandbytes nf4 layers
on the CPU and answers. On xtuner's pins the same config stops while it is read, saying why.
"""
from __future__ import annotations

import json
import re

import pytest
from PIL import Image
from support import FIXTURES, REPO, TF457_PYTHON, requires_fixtures, requires_tf457, run_train
from test_qlora_4bit import export_options, run_tf457

from xtuner_llava_swap.testing.tiny import TinyLLaVA
from xtuner_llava_swap.testing.tiny_recipe import LAYERS

CONFIG = REPO / "configs" / "llava_qwen3_8b_qlora.py"
K = 3  # EvaluateChatHook's replies end with <|im_end|> at this step
N_ITERS = 2
THINK_EMPTY = "<think>\n\n</think>\n\n"
HERE = REPO / "tests" / "qlora4bit"
CONVERSATION = {"image": "x.jpg", "conversations": [
    {"from": "human", "value": "<image>\nWhat is in the picture?"},
    {"from": "gpt", "value": "A red square and a blue circle."},
    {"from": "human", "value": "Which one is larger?"},
    {"from": "gpt", "value": "The circle."}]}


def test_config_stops_on_xtuners_stack_with_the_reason():
    import transformers
    from mmengine.config import Config
    from packaging.version import Version

    if Version(transformers.__version__) >= Version("4.51"):
        pytest.skip("this environment has Qwen3's class")
    with pytest.raises(RuntimeError, match=r"qwen3 family needs transformers >= 4\.51 .* "
                                           r"use the newer stack"):
        Config.fromfile(CONFIG)


# In the newer environment (one process): builds the tiny Qwen3 in argv[1] (its class exists
# only there), loads each Qwen3 config of argv[2:] and prints what swap_llm set.
PREPARE = """
import json, sys
import xtuner_llava_swap
from mmengine.config import Config
from xtuner_llava_swap.testing.tiny import build_tiny_llm

build_tiny_llm("qwen3", sys.argv[1])

def dicts(node):
    if isinstance(node, dict):
        yield node
        node = list(node.values())
    if isinstance(node, (list, tuple)):
        for child in node:
            yield from dicts(child)

facts = {}
for path in sys.argv[2:]:
    cfg = Config.fromfile(path)
    lora = cfg.model.get("llm_lora")
    hook = [h for h in cfg.custom_hooks if h.type.__name__ == "EvaluateChatHook"][0]
    facts[path.rsplit("/", 1)[-1]] = dict(
        tokenizer_profiles=sorted({d["profile"] for d in dicts(cfg._cfg_dict) if "profile" in d}),
        llm=cfg.model.llm.pretrained_model_name_or_path, prompt_template=dict(cfg.prompt_template),
        dataset_template=dict(cfg.llava_dataset.template_map_fn.template),
        hook_template=dict(hook.prompt_template), hook_system=hook.system,
        lora=list(lora.target_modules) if lora else None,
        pretrained_pth=cfg.model.get("pretrained_pth"))
print(json.dumps(facts))
"""


CONFIG_NAMES = ("llava_qwen3_8b_pretrain.py", "llava_qwen3_8b_qlora.py")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """``(tiny Qwen3 folder, {config name: facts})`` from the newer environment."""
    llm = tmp_path_factory.mktemp("qwen3-e2e") / "tiny-qwen3"
    proc = run_tf457("-c", PREPARE, llm, *[REPO / "configs" / name for name in CONFIG_NAMES])
    return llm, json.loads(proc.stdout.strip().splitlines()[-1])


@requires_tf457
def test_qwen3_configs_follow_the_profile_on_the_newer_stack(prepared):
    from xtuner_llava_swap.profiles import get_profile

    profile = get_profile("qwen3")
    names = CONFIG_NAMES
    facts = prepared[1]
    template = {k: v for k, v in profile.template.items()}
    for name in names:
        fact = facts[name]
        assert fact["tokenizer_profiles"] == ["qwen3"] and fact["llm"] == "Qwen/Qwen3-8B", fact
        assert fact["prompt_template"] == fact["dataset_template"] == fact["hook_template"] \
            == template, fact
        assert fact["hook_system"] is None  # the profile's default: no system prompt
    assert facts[names[0]]["lora"] is None
    assert facts[names[1]]["lora"] == list(profile.lora_target_modules)
    assert facts[names[1]]["pretrained_pth"].endswith("llava_qwen3_8b_pretrain/iter_2181.pth")


@pytest.fixture(scope="module")
def qwen3_run(prepared, tiny_parts):
    """``(work_dir, cfg_options)`` of the 4-bit Qwen3 run."""
    llm = prepared[0]
    _, finetune, images = tiny_parts("data")
    tiny = TinyLLaVA("qwen3", llm, tiny_parts("clip"), finetune, finetune, images,
                     uses_real_tokenizer=FIXTURES is not None)
    end_of_turn = json.loads((llm / "tokenizer.json").read_text())
    end_of_turn = next(t["id"] for t in end_of_turn["added_tokens"] if t["content"] == "<|im_end|>")
    image = next(p for p in sorted(images.rglob("*")) if p.is_file())
    options = tiny.cfg_options(pretrained_pth=None, **{
        "train_cfg.max_epochs": None, "train_cfg.max_iters": N_ITERS,
        "default_hooks.logger.interval": 1,
        "evaluation_images": f"[{image},None]",
        "custom_hooks.1.max_new_tokens": 8,
        "custom_hooks.1.generation_kwargs.do_sample": False,
        "custom_hooks.1.generation_kwargs.min_new_tokens": K - 1,
        "custom_hooks.1.generation_kwargs.sequence_bias": f"[[[{end_of_turn}],1000.0]]"})
    # cpu_cfg_options() of xtuner's stack (bitsandbytes 0.45) drops the quantization; the
    # newer environment quantizes nf4 on a CPU, so the config's quantization_config stays.
    del options["model.llm.quantization_config"]
    work_dir = llm.parent / "work"
    proc = run_train(CONFIG, work_dir, options, python=TF457_PYTHON)
    assert proc.returncode == 0, (work_dir / "test_stdout.log").read_text()[-3000:]
    return work_dir, options


@requires_tf457
def test_qwen3_trains_in_4bit_and_the_hook_stops_at_im_end(qwen3_run):
    work_dir, _ = qwen3_run
    log = (work_dir / "test_stdout.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    losses = [float(x) for x in re.findall(r"Iter\(train\) \[\s*\d+/\d+\].*loss: ([0-9.]+)", log)]
    assert len(losses) == N_ITERS and all(0 < x < 100 for x in losses), losses
    samples = re.findall(r"Sample output:\n(.*?)\nEvaluateChatHook: (\d+) new tokens, ([^\n]*)",
                         log, flags=re.S)
    assert len(samples) >= 4 and len(samples) % 2 == 0, log[-3000:]  # image + text-only prompt
    for index, (text, n_tokens, ending) in enumerate(samples):
        assert (int(n_tokens), ending) == (K, "stopped by '<|im_end|>'"), text
        assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_end|>")
        prompt = text[:text.rindex(THINK_EMPTY) + len(THINK_EMPTY)]
        assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n" + THINK_EMPTY), text
        assert ("<image>\n" in prompt) == (index % 2 == 0)


# In the newer environment: the `hf` export argv[1] loaded by chat's loader with
# --load-in-4bit on the CPU; its bitsandbytes 4-bit layers and a reply about image argv[2].
EXPORT_4BIT = """
import json, sys
import bitsandbytes as bnb
from PIL import Image
from xtuner_llava_swap.inference.loading import load_generator
from xtuner_llava_swap.inference.prompt import one_turn

generator = load_generator(sys.argv[1], device="cpu", load_in_4bit=True)
four_bit = [name for name, module in generator.model.named_modules()
            if isinstance(module, bnb.nn.Linear4bit)]
prompt = generator.render(one_turn("What is it?", Image.open(sys.argv[2]).convert("RGB")))
reply = generator.generate([prompt], max_new_tokens=4)[0]
print(json.dumps({"linear4bit": four_bit, "reply": list(reply.token_ids)}))
"""


@requires_tf457
def test_qwen3_exports_to_hf_verified_and_loads_in_plain_transformers(qwen3_run, tmp_path):
    work_dir, options = qwen3_run
    out = tmp_path / "hf"
    proc = run_tf457(REPO / "tools" / "convert_to_hf.py", CONFIG, work_dir / f"iter_{N_ITERS}.pth",
                     out, "--verify", "--no-progress", "--cfg-options", *export_options(options))
    verify = json.loads(proc.stdout[proc.stdout.index("{"):])["verify"]
    assert verify["max_abs_logit_diff"] <= verify["tolerance"], verify
    assert verify["tokens"] == verify["reference_tokens"], verify
    assert verify["tokens"] and verify["positions"] > 0, verify  # ids checked, or it raises
    text_config = json.loads((out / "config.json").read_text())["text_config"]
    assert (text_config["model_type"], text_config["architectures"]) == (
        "qwen3", ["Qwen3ForCausalLM"])
    # the export's tokenizer and chat template (they load on any transformers)
    from transformers import AutoTokenizer

    from xtuner_llava_swap.training.tokenizers import encode_llava_conversation

    tokenizer = AutoTokenizer.from_pretrained(out)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    messages = [{"role": "user" if m["from"] == "human" else "assistant", "content": m["value"]}
                for m in CONVERSATION["conversations"]]
    rendered = tokenizer.apply_chat_template(messages, tokenize=True)
    trained = encode_llava_conversation(CONVERSATION, tokenizer, "qwen3")["input_ids"]
    assert [-200 if i == image_id else i for i in rendered] == trained
    assert trained.count(-200) == 1
    assert tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True
                                         ).endswith("<|im_start|>assistant\n" + THINK_EMPTY)
    # chat's loader on the export with --load-in-4bit on the CPU: the LLM's projections only
    image = tmp_path / "red.png"
    Image.new("RGB", (60, 40), (200, 20, 20)).save(image)
    loaded = json.loads(run_tf457("-c", EXPORT_4BIT, out, image).stdout.strip().splitlines()[-1])
    assert len(loaded["linear4bit"]) == 7 * LAYERS, loaded
    assert all(".language_model." in name for name in loaded["linear4bit"]), loaded
    assert 0 < len(loaded["reply"]) <= 4


def _stops_only_at_a_stop_id(ids: list, stop_ids: list, max_new_tokens: int) -> bool:
    """Generation ran and ended on a stop id, or at ``max_new_tokens`` without one."""
    body = ids[:-1] if ids and ids[-1] in stop_ids else ids
    return 0 < len(ids) <= max_new_tokens and not set(body) & set(stop_ids) and (
        len(body) < len(ids) or len(ids) == max_new_tokens)


@requires_fixtures  # the real Qwen3 tokenizer and its own chat template
@requires_tf457
def test_qwen3_chat_thinks_as_its_profile_says_and_loads_in_4bit(qwen3_run, tiny_parts):
    from xtuner_llava_swap.profiles import get_profile

    work_dir, options = qwen3_run
    image = next(p for p in sorted(tiny_parts("data")[2].rglob("*")) if p.is_file())
    proc = run_tf457(HERE / "qwen3_chat_check.py", image, K, work_dir / f"iter_{N_ITERS}.pth",
                     "--config", CONFIG, "--cfg-options", *export_options(options))
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    im_end = facts["im_end"]
    assert facts["chat_template_thinks"]
    for name in ("qwen3", "qwen3-thinking"):
        fact = facts[name]
        stop_words = get_profile(name).template["STOP_WORDS"]
        assert fact["profile"] == name and len(fact["stop_ids"]) == len(stop_words) == 2
        assert fact["stop_ids"][0] == im_end
        assert fact["ids"] == fact["template_ids"], name  # the tokenizer's own template
        assert fact["text"] == fact["template_text"] and fact["image_places"] == 1, name
        assert (len(fact["forced_ids"]), fact["forced_ids"][-1], fact["forced_stop"]) == (
            K, im_end, "<|im_end|>")
        assert "<|im_end|>" not in fact["forced_answer"]
        assert _stops_only_at_a_stop_id(fact["free_ids"], fact["stop_ids"], 4), fact["free_ids"]
        assert fact["cli"][0] == 0, fact["cli"]
    assert facts["qwen3"]["text"].endswith("<|im_start|>assistant\n" + THINK_EMPTY)
    assert facts["qwen3-thinking"]["text"].endswith("<|im_start|>assistant\n")
    assert THINK_EMPTY not in facts["qwen3-thinking"]["text"]
    four_bit = facts["4bit"]
    assert len(four_bit["linear4bit"]) == 7 * LAYERS, four_bit  # every projection of every layer
    assert four_bit["quant_types"] == ["nf4"]
    assert [name.rsplit(".", 1)[-1] for name in four_bit["other_linears"]] == ["lm_head"]
    assert (len(four_bit["forced_ids"]), four_bit["forced_ids"][-1]) == (K, im_end)
    assert _stops_only_at_a_stop_id(four_bit["free_ids"], facts["qwen3"]["stop_ids"], 4)
    assert four_bit["cli"][0] == 0 and four_bit["cli"][1].strip(), four_bit["cli"]
