"""The ready configs in configs/ and swap_llm: structure checked against the profiles, the
swap of xtuner's own InternLM2 LLaVA config, the plugin's map function in the configs'
dataset, and real `xtuner train` runs on tiny models.

The shipped configs are leaves of one base per stage (configs/_base_/) that name their LLM
profile once and go through swap_llm; the path overrides use the `--cfg-options` re-binding
the suite opts in to (tests/conftest.py).

The end-to-end runs take the REAL config files with `--cfg-options` overrides of their path
variables plus the CPU switches of ``xtuner_llava_swap.training.cpu_options``. Where
bitsandbytes cannot quantize (0.45.0 without CUDA, see ``compat.bitsandbytes_quantizes_here``)
those switches drop the LLM's ``quantization_config``: the LLM then runs unquantized in fp32,
while everything else of the QLoRA configs (LoRA on the LLM with the profile's target
modules, LoRA on the vision encoder, projector training, LengthGroupedSampler,
DatasetInfoHook, the plugin's EvaluateChatHook) runs as configured. Where it can, the 4-bit
path runs.
"""
from __future__ import annotations

import json
import re

import pytest
import torch
from mmengine.config import Config
from xtuner.dataset.map_fns import llava_map_fn

from support import REPO, requires_fixtures, run_train
from xtuner_llava_swap import cfg_options_rebind, compat
from xtuner_llava_swap.data import DataError, LLaVASwapDataset, llava_format_map_fn
from xtuner_llava_swap.profiles import get_profile, template_map_fn_factory
from xtuner_llava_swap.testing.tiny import TinyLLaVA, fixtures_dir
from xtuner_llava_swap.training import cpu_options
from xtuner_llava_swap.training.configs import ConfigSwapError, swap_llm
from xtuner_llava_swap.training.hooks import EvaluateChatHook
from xtuner_llava_swap.training.tokenizers import tokenizer_dict

CONFIGS = REPO / "configs"
XTUNER_INTERNLM2 = "llava_internlm2_chat_7b_qlora_clip_vit_large_p14_336_lora_e1_gpu8_finetune"
# config file -> (profile, stage)
READY = {
    "llava_qwen7b_pretrain.py": ("qwen", "pretrain"),
    "llava_qwen7b_qlora.py": ("qwen", "qlora"),
    "llava_qwen2_5_7b_instruct_pretrain.py": ("qwen2.5", "pretrain"),
    "llava_qwen2_5_7b_instruct_qlora.py": ("qwen2.5", "qlora"),
    "llava_qwen7b_from_xtuner_internlm2.py": ("qwen", "qlora"),
    "llava_qwen2_5_7b_siglip_so400m_pretrain.py": ("qwen2.5", "pretrain"),
    "llava_qwen2_5_7b_siglip_so400m_qlora.py": ("qwen2.5", "qlora"),
}
# config file -> (base, llm_name_or_path, pretrained_pth) of the leaves of configs/_base_
LEAVES = {
    "llava_qwen7b_pretrain.py": ("llava_pretrain", "Qwen/Qwen-7B-Chat", None),
    "llava_qwen7b_qlora.py": ("llava_qlora_finetune", "Qwen/Qwen-7B-Chat",
                              "./work_dirs/llava_qwen7b_pretrain/iter_2181.pth"),
    "llava_qwen2_5_7b_instruct_pretrain.py": ("llava_pretrain", "Qwen/Qwen2.5-7B-Instruct", None),
    "llava_qwen2_5_7b_instruct_qlora.py": (
        "llava_qlora_finetune", "Qwen/Qwen2.5-7B-Instruct",
        "./work_dirs/llava_qwen2_5_7b_instruct_pretrain/iter_2181.pth"),
}
QWEN_LORA_TARGETS = {
    "qwen": ["c_attn", "c_proj", "w1", "w2"],
    "qwen2.5": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
# what each stage's base sets (xtuner's shipped LLaVA recipe), beside what the profile decides
STAGE = {
    "pretrain": dict(data_path="./data/llava_data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json",
                     image_folder="./data/llava_data/LLaVA-Pretrain/images", batch_size=32,
                     lr=1e-3, pad_image_to_square=False),
    "qlora": dict(data_path="./data/llava_data/LLaVA-Instruct-150K/llava_v1_5_mix665k.json",
                  image_folder="./data/llava_data/llava_images", batch_size=16, lr=2e-4,
                  pad_image_to_square=True),
}
PATH_VARIABLES = ("llm_name_or_path", "visual_encoder_name_or_path", "data_path", "image_folder",
                  "prompt_template")
K = 4  # the e2e runs force the stop token at this step


def xtuner_config_path(name: str) -> str:
    from xtuner.configs import cfgs_name_path

    return cfgs_name_path[name]


def all_dicts(node):
    if isinstance(node, dict):
        yield node
        node = list(node.values())
    if isinstance(node, (list, tuple)):
        for child in node:
            yield from all_dicts(child)


def tokenizer_dicts(cfg) -> list:
    return [d for d in all_dicts(cfg._cfg_dict)
            if "type" in d and "padding_side" in d and "pretrained_model_name_or_path" in d]


def assert_follows_profile(cfg, profile_name: str, stage: str) -> None:
    """Every LLM-dependent part of ``cfg`` is the profile's."""
    profile = get_profile(profile_name)
    for name in PATH_VARIABLES + (("pretrained_pth",) if stage == "qlora" else ()):
        assert name in cfg, name
    expected_tokenizer = tokenizer_dict(profile_name, cfg.llm_name_or_path)
    found = tokenizer_dicts(cfg)
    assert len(found) >= 4  # top level, dataset (twice: llava_dataset, dataloader), hooks
    assert all(t == expected_tokenizer for t in found), found
    assert cfg.llava_dataset == cfg.train_dataloader.dataset
    # the plugin's dataset and map function: a placeholder/image count mismatch is never
    # rewritten (xtuner's own LLaVADataset keeps xtuner's llava_map_fn, see swap_llm)
    if cfg.llava_dataset.type is LLaVASwapDataset:
        assert cfg.llava_dataset.dataset_map_fn is llava_format_map_fn
    else:
        assert cfg.llava_dataset.dataset_map_fn is llava_map_fn
    assert cfg.prompt_template == profile.template
    template_map_fn = cfg.llava_dataset.template_map_fn
    assert template_map_fn.type is template_map_fn_factory
    assert template_map_fn.template == profile.template
    llm = cfg.model.llm
    assert llm.pretrained_model_name_or_path == cfg.llm_name_or_path
    assert llm.trust_remote_code is profile.trust_remote_code
    hooks = {h.type.__name__: h for h in cfg.custom_hooks}
    # RunRecordHook: what swap_llm adds (the configs written out in full have none yet)
    assert set(hooks) - {"RunRecordHook"} == {"DatasetInfoHook", "EvaluateChatHook"}
    if "RunRecordHook" in hooks:
        assert hooks["RunRecordHook"].profile == profile_name
    chat = hooks["EvaluateChatHook"]
    assert chat.type is EvaluateChatHook
    assert chat.prompt_template == profile.template
    assert "stop_words" not in chat and "stop_word" not in chat  # the profile's are used
    assert chat.system == template_map_fn.system  # evaluation prompts = training prompts
    assert chat.image_processor == cfg.llava_dataset.image_processor
    assert chat.get("pad_image_to_square", True) == cfg.llava_dataset.pad_image_to_square
    quantization = llm.quantization_config
    assert quantization.load_in_4bit and quantization.bnb_4bit_quant_type == "nf4"
    assert cfg.model.freeze_llm and cfg.model.freeze_visual_encoder
    if stage == "qlora":
        assert cfg.model.llm_lora.target_modules == list(profile.lora_target_modules)
        assert cfg.model.visual_encoder_lora.r == 64
        assert cfg.train_dataloader.sampler.type.__name__ == "LengthGroupedSampler"
        assert cfg.model.pretrained_pth == cfg.pretrained_pth
    else:
        assert "llm_lora" not in cfg.model and "visual_encoder_lora" not in cfg.model


@pytest.mark.parametrize("name", sorted(READY))
def test_ready_config_follows_its_profile(name):
    profile, stage = READY[name]
    assert_follows_profile(Config.fromfile(CONFIGS / name), profile, stage)


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_leaf_names_its_llm_once_and_takes_the_rest_from_its_stage_base(name):
    base, llm_path, pretrained_pth = LEAVES[name]
    profile, stage = READY[name]
    text = (CONFIGS / name).read_text()
    assert f"from ._base_.{base} import *" in text and "swap_llm.build()(globals()" in text
    assert text.count(f'"{profile}"') == 1 and text.count(f'"{llm_path}"') == 1
    cfg = Config.fromfile(CONFIGS / name)
    assert cfg.llm_profile == profile and cfg.llm_name_or_path == llm_path
    assert cfg.get("pretrained_pth") == cfg.model.get("pretrained_pth") == pretrained_pth
    expected = STAGE[stage]
    assert (cfg.data_path, cfg.image_folder, cfg.batch_size, cfg.lr) == (
        expected["data_path"], expected["image_folder"], expected["batch_size"], expected["lr"])
    assert cfg.llava_dataset.data_path == cfg.data_path
    assert cfg.llava_dataset.image_folder == cfg.image_folder
    assert cfg.llava_dataset.pad_image_to_square is expected["pad_image_to_square"]
    assert cfg.visual_encoder_name_or_path == "openai/clip-vit-large-patch14-336"
    assert cfg.model.visual_encoder.pretrained_model_name_or_path == cfg.visual_encoder_name_or_path
    assert cfg.llava_dataset.image_processor.pretrained_model_name_or_path == (
        cfg.visual_encoder_name_or_path)
    # what the profile decides, spelled out (assert_follows_profile compares with the profile)
    assert all(t["profile"] == profile for t in tokenizer_dicts(cfg))
    assert cfg.custom_hooks[1].prompt_template.STOP_WORDS == ["<|im_end|>", "<|endoftext|>"]
    if stage == "qlora":
        assert cfg.model.llm_lora.target_modules == QWEN_LORA_TARGETS[profile]


@pytest.mark.parametrize("name", sorted(READY))
def test_path_overrides_reach_every_place_that_used_the_path(name, tmp_path):
    assert cfg_options_rebind.installed()  # the opt-in, as `xtuner train` has it with the variable
    cfg = Config.fromfile(CONFIGS / name)
    originals = {v: cfg[v] for v in PATH_VARIABLES[:-1]}
    overrides = {v: str(tmp_path / v) for v in originals}
    cfg.merge_from_dict({**cpu_options.cpu_cfg_options(quantized=False), **overrides})
    text = cfg.pretty_text
    for name_, old in originals.items():
        assert old not in text, f"{name_} still {old!r} somewhere"
    assert cfg.model.llm.pretrained_model_name_or_path == overrides["llm_name_or_path"]
    assert all(t["pretrained_model_name_or_path"] == overrides["llm_name_or_path"]
               for t in tokenizer_dicts(cfg))
    assert cfg.model.visual_encoder.pretrained_model_name_or_path == overrides[
        "visual_encoder_name_or_path"]
    assert cfg.train_dataloader.dataset.data_path == overrides["data_path"]
    assert cfg.model.llm.quantization_config is None


# ---------------------------------------------------------------------- swap_llm
XTUNER_VICUNA = "llava_vicuna_7b_v15_qlora_clip_vit_large_p14_336_lora_e1_gpu8_finetune"


@pytest.mark.parametrize("base,profile,path", [
    (XTUNER_INTERNLM2, "qwen", "Qwen/Qwen-7B-Chat"),
    (XTUNER_INTERNLM2, "qwen2.5", "Qwen/Qwen2.5-7B-Instruct"),
    (XTUNER_VICUNA, "qwen2.5", "Qwen/Qwen2.5-7B-Instruct"),
])
def test_swap_llm_rewrites_xtuners_llava_configs(base, profile, path, tmp_path):
    cfg = Config.fromfile(xtuner_config_path(base))
    old_llm = cfg.llm_name_or_path
    assert old_llm in cfg.pretty_text
    swap_llm(cfg, profile, path, pretrained_pth=None)
    assert_follows_profile(cfg, profile, "qlora")
    assert old_llm not in cfg.pretty_text
    assert cfg.model.pretrained_pth is None and cfg.SYSTEM is None
    # what xtuner's own config kept: vision encoder, data, schedule
    assert cfg.visual_encoder_name_or_path == "openai/clip-vit-large-patch14-336"
    assert cfg.batch_size == 16 and cfg.lr == 2e-4
    # a dumped swapped config is a standalone config that loads back to the same thing
    cfg.dump(tmp_path / "swapped.py")
    again = Config.fromfile(tmp_path / "swapped.py")
    assert again.tokenizer.type == "xtuner_llava_swap.training.tokenizers.build_tokenizer"
    assert again.custom_hooks[1].type == "xtuner_llava_swap.training.hooks.EvaluateChatHook"
    assert {k: v for k, v in again.tokenizer.items() if k != "type"} == {
        k: v for k, v in tokenizer_dict(profile, path).items() if k != "type"}


def test_dumped_config_builds_the_plugins_hook_again(tiny_parts, tmp_path):
    # what `xtuner train --resume` reads: the config xtuner dumped into the work dir
    from mmengine.registry import HOOKS

    cfg = Config.fromfile(CONFIGS / "llava_qwen2_5_7b_instruct_qlora.py")
    _, _, images = tiny_parts("data")
    image = next(p for p in sorted(images.rglob("*")) if p.is_file())
    cfg.merge_from_dict({"llm_name_or_path": str(tiny_parts("qwen2")),
                         "visual_encoder_name_or_path": str(tiny_parts("clip")),
                         "evaluation_images": str(image)})
    cfg.dump(tmp_path / "dumped.py")
    hook_cfg = Config.fromfile(tmp_path / "dumped.py").custom_hooks[1]
    assert hook_cfg.prompt_template == "xtuner_llava_swap.profiles.PROMPT_TEMPLATE.qwen2_5"
    hook = HOOKS.build(hook_cfg)
    assert type(hook) is EvaluateChatHook
    assert hook.template == get_profile("qwen2.5").template
    assert hook.stop_words == ("<|im_end|>", "<|endoftext|>")
    assert hook.profile == "qwen2.5"  # the dumped template path names the profile


def test_swap_llm_without_pretrained_pth_keeps_the_configs_value():
    cfg = Config.fromfile(xtuner_config_path(XTUNER_INTERNLM2))
    before = cfg.model.pretrained_pth
    swap_llm(cfg, "qwen2.5", "Qwen/Qwen2.5-7B-Instruct")
    assert cfg.model.pretrained_pth == cfg.pretrained_pth == before


def test_swap_llm_on_a_plain_namespace_with_real_objects():
    # a config built in Python (no lazy imports): real objects in, real objects out
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from xtuner.dataset.map_fns import template_map_fn_factory as xtuner_template_map_fn_factory
    from xtuner.engine.hooks import EvaluateChatHook as XtunerEvaluateChatHook
    from xtuner.utils import PROMPT_TEMPLATE

    from xtuner_llava_swap.training.tokenizers import build_tokenizer

    tokenizer = dict(type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path="old/llm",
                     trust_remote_code=True, padding_side="right", bos_token="<s>")
    namespace = dict(
        llm_name_or_path="old/llm", prompt_template=PROMPT_TEMPLATE.vicuna, SYSTEM="",
        model=dict(type="LLaVAModel", llm=dict(type=AutoModelForCausalLM.from_pretrained,
                                               pretrained_model_name_or_path="old/llm"),
                   llm_lora=dict(type="LoraConfig", r=8)),
        llava_dataset=dict(type=LLaVASwapDataset, tokenizer=tokenizer, dataset_map_fn=llava_map_fn,
                           template_map_fn=dict(type=xtuner_template_map_fn_factory,
                                                template=PROMPT_TEMPLATE.vicuna)),
        xtuners_dataset=dict(type="LLaVADataset", dataset_map_fn=llava_map_fn),
        custom_hooks=[dict(type=XtunerEvaluateChatHook, tokenizer=tokenizer, stop_words=["</s>"],
                           system="", prompt_template=PROMPT_TEMPLATE.vicuna)],
    )
    swap_llm(namespace, "qwen2", "Qwen/Qwen2-7B-Instruct")
    expected_tokenizer = tokenizer_dict("qwen2", "Qwen/Qwen2-7B-Instruct")
    assert expected_tokenizer["type"] is build_tokenizer and "bos_token" not in expected_tokenizer
    assert namespace["llava_dataset"]["tokenizer"] == expected_tokenizer
    assert namespace["custom_hooks"][0] == dict(type=EvaluateChatHook, tokenizer=expected_tokenizer,
                                                system=None, prompt_template=get_profile("qwen2").template)
    assert namespace["llava_dataset"]["dataset_map_fn"] is llava_format_map_fn
    assert namespace["xtuners_dataset"]["dataset_map_fn"] is llava_map_fn
    assert namespace["llava_dataset"]["template_map_fn"] == dict(
        type=template_map_fn_factory, template=get_profile("qwen2").template, system=None)
    assert namespace["model"]["llm"] == dict(type=AutoModelForCausalLM.from_pretrained,
                                             pretrained_model_name_or_path="Qwen/Qwen2-7B-Instruct",
                                             trust_remote_code=False)
    assert namespace["model"]["llm_lora"]["target_modules"] == list(
        get_profile("qwen2").lora_target_modules)
    assert (namespace["llm_name_or_path"], namespace["SYSTEM"]) == ("Qwen/Qwen2-7B-Instruct", None)
    assert namespace["prompt_template"] == get_profile("qwen2").template


def test_swap_llm_refuses_a_config_without_llm():
    with pytest.raises(ConfigSwapError, match="no LLM dict"):
        swap_llm({"model": {"type": "Foo"}}, "qwen", "Qwen/Qwen-7B-Chat")


def test_from_xtuner_config_equals_swapping_xtuners_config_by_hand():
    inherited = Config.fromfile(CONFIGS / "llava_qwen7b_from_xtuner_internlm2.py")
    by_hand = swap_llm(Config.fromfile(xtuner_config_path(XTUNER_INTERNLM2)), "qwen",
                       "Qwen/Qwen-7B-Chat",
                       pretrained_pth="./work_dirs/llava_qwen7b_pretrain/iter_2181.pth")
    assert inherited.pretty_text == by_hand.pretty_text  # all but the names imported


# ------------------------------------------------- the configs' dataset map function
def test_config_dataset_counts_or_raises_an_image_count_mismatch(tiny_parts, tmp_path):
    """Two <image> in the text, one image in the record: the shipped config's dataset skips
    and counts the sample (strict: raises), where xtuner's llava_map_fn, which the configs
    used before, rewrote it into a one-image sample that trained."""
    from xtuner.registry import BUILDER

    _, _, images = tiny_parts("data")
    image = next(p for p in sorted(images.rglob("*")) if p.is_file())
    human = {"from": "human", "value": "<image>\nAnd this one?\n<image>"}
    mismatch = {"image": image.name, "conversations": [human, {"from": "gpt", "value": "Same."}]}
    good = {"image": image.name, "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A photo."}]}
    data = tmp_path / "mismatch.json"
    data.write_text(json.dumps([mismatch, good]))
    cfg = Config.fromfile(CONFIGS / "llava_qwen2_5_7b_instruct_qlora.py")
    cfg.merge_from_dict({"llm_name_or_path": str(tiny_parts("qwen2")),
                         "visual_encoder_name_or_path": str(tiny_parts("clip")),
                         "data_path": str(data), "image_folder": str(image.parent),
                         "train_dataloader.dataset.cache": False})
    dataset_cfg = cfg.train_dataloader.dataset
    dataset = BUILDER.build(dataset_cfg)
    assert dict(dataset.problems.counts) == {"image_count_mismatch": 1}
    assert len(dataset) == 1 and dataset.prepared.images[0] == [image.name]
    with pytest.raises(DataError, match="sample 0: image_count_mismatch: 2 <image> in the text, "
                                        r"1 image\(s\)") as raised:
        BUILDER.build({**dataset_cfg, "strict": True})
    assert raised.value.reason == "image_count_mismatch"
    before = BUILDER.build({**dataset_cfg, "dataset_map_fn": llava_map_fn})
    assert len(before) == 2 and not before.problems.counts


# ------------------------------------------------------------ end to end (tiny)
def tiny_llava(tiny_parts, family) -> TinyLLaVA:
    pretrain, finetune, images = tiny_parts("data")
    return TinyLLaVA(family, tiny_parts(family), tiny_parts("clip"), pretrain, finetune, images,
                     uses_real_tokenizer=fixtures_dir() is not None)


def small_data(tiny: TinyLLaVA, out_dir) -> str:
    """4 samples of the tiny finetune set (image turns, a 4-turn one, a text-only one): xtuner's
    LLaVADataset maps with one process per sample, so fewer samples start much faster."""
    samples = json.loads(tiny.data_path.read_text())
    with_image = [s for s in samples if "image" in s]
    chosen = ([with_image[0], max(with_image, key=lambda s: len(s["conversations"])),
               with_image[1]] + [s for s in samples if "image" not in s][:1])
    path = out_dir / "small_finetune.json"
    path.write_text(json.dumps(chosen))
    return str(path)


def forced_stop_options(tiny: TinyLLaVA, data_path: str) -> dict:
    """Greedy replies of exactly K tokens: the end-of-turn token is banned for K-1 steps
    (``min_new_tokens``) and then biased to be the argmax (``sequence_bias``). Two prompts:
    one with an image, one text-only. 3 iterations (2 per epoch), chat every 2: before
    training, at iterations 2 and 3 (the checkpoint), after training."""
    from transformers import AutoTokenizer

    end_of_turn = AutoTokenizer.from_pretrained(tiny.llm, trust_remote_code=True) \
        .convert_tokens_to_ids("<|im_end|>")
    image = next(p for p in sorted(tiny.image_folder.rglob("*")) if p.is_file())
    return tiny.cfg_options(**{
        "data_path": data_path,
        "pretrained_pth": None,
        "train_dataloader.sampler.per_device_batch_size": 2,  # LengthGroupedSampler
        "train_cfg.max_epochs": 1.5,
        "default_hooks.logger.interval": 1,
        "custom_hooks.1.every_n_iters": 2,
        "custom_hooks.1.max_new_tokens": 16,
        "evaluation_images": f"[{image},None]",
        "custom_hooks.1.generation_kwargs.do_sample": False,
        "custom_hooks.1.generation_kwargs.min_new_tokens": K - 1,
        "custom_hooks.1.generation_kwargs.sequence_bias": f"[[[{end_of_turn}],1000.0]]",
    })


def check_training_and_chat_log(work_dir, profile_name: str, lora_module_sample: str) -> None:
    log = (work_dir / "test_stdout.log").read_text()
    assert "Traceback" not in log, log[-4000:]
    assert (work_dir / "iter_3.pth").is_file(), log[-4000:]
    losses = [float(x) for x in re.findall(r"loss: ([0-9.]+)", log)]
    assert len(losses) == 3 and all(0 < x < 100 for x in losses)
    # the schedule of xtuner's hook: before training, every 2 iterations, at the checkpoint
    # iteration (3), after training
    assert log.count("before_train in EvaluateChatHook.") == 1
    assert log.count("after_train_iter in EvaluateChatHook.") == 2
    assert log.count("after_train in EvaluateChatHook.") == 1
    samples = re.findall(r"Sample output:\n(.*?)\nEvaluateChatHook: (\d+) new tokens, ([^\n]*)",
                         log, flags=re.S)
    assert len(samples) == 4 * 2  # 4 evaluations x (image prompt, text-only prompt)
    default_system = get_profile(profile_name).default_system
    for index, (text, n_tokens, ending) in enumerate(samples):
        assert (int(n_tokens), ending) == (K, "stopped by '<|im_end|>'"), text
        assert text.endswith("<|im_end|>")
        assert text.startswith(f"<|im_start|>system\n{default_system}<|im_end|>\n<|im_start|>user\n")
        assert ("<image>\n" in text) == (index % 2 == 0)
    state = torch.load(work_dir / "iter_3.pth", map_location="cpu", weights_only=True)["state_dict"]
    assert any(lora_module_sample in k and ".lora_A.default." in k for k in state), sorted(state)[:5]
    assert any(k.startswith("visual_encoder.") and ".lora_A.default." in k for k in state)
    assert "projector.model.0.weight" in state
    dumped = Config.fromfile(next(work_dir.glob("*.py")))
    quantized = compat.bitsandbytes_quantizes_here()
    assert (dumped.model.llm.quantization_config is not None) == quantized


@requires_fixtures
def test_xtuner_train_qwen7b_qlora_tiny_remote_code(tiny_parts, tmp_path):
    tiny = tiny_llava(tiny_parts, "qwen")
    run_train(CONFIGS / "llava_qwen7b_qlora.py", tmp_path,
              forced_stop_options(tiny, small_data(tiny, tmp_path)))
    check_training_and_chat_log(tmp_path, "qwen", "llm.base_model.model.transformer.h.0.mlp.w2")


def test_xtuner_train_qwen2_5_qlora_tiny_qwen2(tiny_parts, tmp_path):
    tiny = tiny_llava(tiny_parts, "qwen2")
    run_train(CONFIGS / "llava_qwen2_5_7b_instruct_qlora.py", tmp_path,
              forced_stop_options(tiny, small_data(tiny, tmp_path)))
    check_training_and_chat_log(tmp_path, "qwen2.5",
                                "llm.base_model.model.model.layers.0.mlp.gate_proj")


@requires_fixtures
def test_xtuner_train_from_xtuner_internlm2_swapped_to_tiny_qwen7b(tiny_parts, tmp_path):
    tiny = tiny_llava(tiny_parts, "qwen")
    run_train(CONFIGS / "llava_qwen7b_from_xtuner_internlm2.py", tmp_path,
              forced_stop_options(tiny, small_data(tiny, tmp_path)))
    check_training_and_chat_log(tmp_path, "qwen", "llm.base_model.model.transformer.h.1.attn.c_attn")
    # swap_llm's RunRecordHook recorded the run beside its checkpoints, before training
    from xtuner_llava_swap.run_record import RECORD_NAME

    assert json.loads((tmp_path / RECORD_NAME).read_text()) == {
        "record_format": 1, "llm_profile": "qwen", "llm": str(tiny.llm),
        "vision_tower": str(tiny.visual_encoder), "vision_tower_model_type": "clip_vision_model",
        "vision_tower_profile": None, "plugin_version": "0.1.0",
        "config": "llava_qwen7b_from_xtuner_internlm2.py"}
    log = (tmp_path / "test_stdout.log").read_text()
    assert (log.index(f"RunRecordHook: LLM profile 'qwen' recorded in {tmp_path / RECORD_NAME}")
            < log.index("before_train in EvaluateChatHook."))
