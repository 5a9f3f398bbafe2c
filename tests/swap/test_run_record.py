"""The run's LLM profile: the record training writes beside its checkpoints (written
atomically, never replacing a record of another profile), and the build-time check that a
config's tokenizer, template and EvaluateChatHook name one profile (a shipped config with
one dict edited fails with one line naming both profiles and the keys; the shipped configs
build).

The record written by a real `xtuner train` is checked in
tests/swap/test_configs.py::test_xtuner_train_from_xtuner_internlm2_swapped_to_tiny_qwen7b;
the converter's reading of it in tests/export/test_run_record_export.py.
"""
from __future__ import annotations

import json

import pytest
from mmengine.config import Config

from support import REPO
from xtuner_llava_swap.profiles import PROMPT_TEMPLATE
from xtuner_llava_swap.run_record import (RECORD_NAME, RunRecordError, make_record,
                                          plugin_version, read_record, write_record)
from xtuner_llava_swap.profiles.profile_agreement import ProfileMismatchError, agreed_profile
from xtuner_llava_swap.testing.tiny import TinyLLaVA, fixtures_dir


# ------------------------------------------------------------------ the record file
def test_record_is_written_whole_and_never_replaced_by_another_profile(tmp_path):
    record = make_record("qwen2.5", "/m/llm", "/m/clip", "clip_vision_model", "a.py")
    path = write_record(tmp_path, record)
    assert path == tmp_path / RECORD_NAME
    assert json.loads(path.read_text()) == read_record(path) == {
        "record_format": 1, "llm_profile": "qwen2.5", "llm": "/m/llm", "vision_tower": "/m/clip",
        "vision_tower_model_type": "clip_vision_model", "vision_tower_profile": None,
        "plugin_version": plugin_version(), "config": "a.py"}
    assert plugin_version() == "0.1.0"
    # the same profile again (a resumed run): replaced
    write_record(tmp_path, make_record("qwen2.5", "/m/llm", "/m/clip", None, "b.py"))
    assert read_record(path)["config"] == "b.py"
    # another profile: refused, the record unchanged, nothing left beside it
    before = path.read_bytes()
    with pytest.raises(RunRecordError) as refused:
        write_record(tmp_path, make_record("qwen", "/m/llm", "/m/clip", None, "c.py"))
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "profile 'qwen2.5'" in message and "profile 'qwen'" in message
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [RECORD_NAME]


def test_a_file_that_is_no_record_is_named_and_kept(tmp_path):
    path = tmp_path / RECORD_NAME
    path.write_text("{not json")
    with pytest.raises(RunRecordError, match=rf"^{path}: not a readable run record"):
        write_record(tmp_path, make_record("qwen", None, None, None, None))
    path.write_text('{"llm": "x"}')
    with pytest.raises(RunRecordError, match=rf"^{path}: not a run record \(no llm_profile\)"):
        read_record(path)
    assert path.read_text() == '{"llm": "x"}'


def test_agreement_accepts_a_template_several_profiles_share():
    # Qwen-7B, Qwen1.5 and Qwen2 share one template: any of them agrees with it
    shared = ("qwen", "qwen1.5", "qwen2")
    assert agreed_profile("X", [("a", "qwen2"), ("b", shared), ("c", None)]) == "qwen2"
    assert agreed_profile("X", [("b", shared)]) is None
    with pytest.raises(ProfileMismatchError, match=(
            r"^X: a is profile 'qwen2.5' but b is the template of profiles 'qwen', 'qwen1.5', "
            r"'qwen2'; build every part from one profile")):
        agreed_profile("X", [("a", "qwen2.5"), ("b", shared)])
    with pytest.raises(ProfileMismatchError, match="^X: b is profile 'qwen2' but c is profile"):
        agreed_profile("X", [("a", shared), ("b", "qwen2"), ("c", "qwen")])


# ------------------------------------------------------------------ mismatch at build time
@pytest.fixture(scope="module")
def qwen2_5_config(tiny_parts):
    """The shipped Qwen2.5 QLoRA config on the tiny parts (no image download, CPU)."""
    pretrain, finetune, images = tiny_parts("data")
    tiny = TinyLLaVA("qwen2", tiny_parts("qwen2"), tiny_parts("clip"), pretrain, finetune,
                     images, uses_real_tokenizer=fixtures_dir() is not None)
    cfg = Config.fromfile(REPO / "configs" / "llava_qwen2_5_7b_instruct_qlora.py")
    cfg.merge_from_dict(tiny.cfg_options(pretrained_pth=None))
    return cfg


def test_shipped_config_builds_with_one_profile(qwen2_5_config):
    from mmengine.registry import HOOKS
    from xtuner.registry import BUILDER

    dataset = BUILDER.build(qwen2_5_config.llava_dataset)
    assert dataset.profile == "qwen2.5" and len(dataset) > 0
    assert HOOKS.build(qwen2_5_config.custom_hooks[1]).profile == "qwen2.5"


def test_template_of_another_profile_fails_when_the_dataset_is_built(qwen2_5_config):
    from xtuner.registry import BUILDER

    cfg = qwen2_5_config.copy()
    cfg.llava_dataset = cfg.llava_dataset.copy()
    cfg.llava_dataset.template_map_fn = cfg.llava_dataset.template_map_fn.copy()
    cfg.llava_dataset.template_map_fn.template = PROMPT_TEMPLATE.vicuna_v1_5
    with pytest.raises(ProfileMismatchError) as failed:
        BUILDER.build(cfg.llava_dataset)
    assert str(failed.value).startswith(
        "LLaVASwapDataset: tokenizer.profile is profile 'qwen2.5' but template_map_fn.template "
        "is profile 'vicuna-v1.5'; ")


def test_hook_of_another_profile_fails_when_the_runner_builds_it(qwen2_5_config):
    from mmengine.registry import HOOKS

    hook = qwen2_5_config.custom_hooks[1].copy()
    hook.prompt_template = PROMPT_TEMPLATE.phi3_mini
    with pytest.raises(ProfileMismatchError, match=(
            r"^EvaluateChatHook: tokenizer.profile is profile 'qwen2.5' but prompt_template is "
            r"profile 'phi3-mini'; ")):
        HOOKS.build(hook)
    hook = qwen2_5_config.custom_hooks[1].copy()
    hook.profile = "qwen"  # the template (shared by qwen, qwen1.5, qwen2) agrees, the tokenizer not
    with pytest.raises(ProfileMismatchError, match=(
            r"^EvaluateChatHook: tokenizer.profile is profile 'qwen2.5' but profile is profile "
            r"'qwen'; ")):
        HOOKS.build(hook)


def test_swap_llm_adds_the_record_hook_with_its_profile():
    from mmengine.registry import HOOKS

    from xtuner_llava_swap.training.configs import swap_llm
    from xtuner_llava_swap.training.run_record_hook import RunRecordHook

    cfg = Config.fromfile(REPO / "configs" / "llava_qwen7b_from_xtuner_internlm2.py")
    records = [h for h in cfg.custom_hooks if h.type is RunRecordHook]
    assert len(records) == 1 and records[0].profile == "qwen"
    swap_llm(cfg, "qwen2.5", "Qwen/Qwen2.5-7B-Instruct")  # swapped again: set, not added
    records = [h for h in cfg.custom_hooks if h.type is RunRecordHook]
    assert len(records) == 1 and records[0].profile == "qwen2.5"
    assert HOOKS.build(records[0]).profile == "qwen2.5"
