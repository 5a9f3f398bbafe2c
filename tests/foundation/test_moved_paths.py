"""Module paths that earlier versions documented or wrote into dumped configs still import,
as the same objects as at their new place (:mod:`xtuner_llava_swap.moved`)."""
from __future__ import annotations

import importlib
import subprocess
import sys

from support import REPO
from xtuner_llava_swap.moved import MOVED

# (old dotted name, new dotted name) of what a README or a dumped work-dir config named
NAMED = [
    ("xtuner_llava_swap.configs.swap_llm", "xtuner_llava_swap.training.configs.swap_llm"),
    ("xtuner_llava_swap.configs.swap_vision_tower",
     "xtuner_llava_swap.training.configs.swap_vision_tower"),
    ("xtuner_llava_swap.hooks.EvaluateChatHook", "xtuner_llava_swap.training.hooks.EvaluateChatHook"),
    ("xtuner_llava_swap.tokenizers.build_tokenizer",
     "xtuner_llava_swap.training.tokenizers.build_tokenizer"),
    ("xtuner_llava_swap.llava_model.LLaVASwapModel",
     "xtuner_llava_swap.training.llava_model.LLaVASwapModel"),
    ("xtuner_llava_swap.run_record_hook.RunRecordHook",
     "xtuner_llava_swap.training.run_record_hook.RunRecordHook"),
    ("xtuner_llava_swap.cpu_options.cpu_cfg_options",
     "xtuner_llava_swap.training.cpu_options.cpu_cfg_options"),
    ("xtuner_llava_swap.models.llava_official.LlavaQwenForCausalLM",
     "xtuner_llava_swap.export.loaders.llava_official.LlavaQwenForCausalLM"),
]


def test_every_moved_module_is_the_module_at_its_new_place():
    for old, new in MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
        relative = old.split(".")[1:]
        assert not (REPO / "xtuner_llava_swap").joinpath(*relative).with_suffix(".py").exists()


def test_documented_names_build_from_dumped_configs():
    """mmengine builds a dumped config's ``type`` strings with get_object_from_string."""
    from mmengine.utils.misc import get_object_from_string

    for old, new in NAMED:
        assert get_object_from_string(old) is get_object_from_string(new) is not None, old


def test_the_old_readme_import_in_a_new_process():
    code = ("from xtuner_llava_swap.configs import swap_llm, swap_vision_tower\n"
            "print(swap_llm.__module__, swap_vision_tower.__module__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["xtuner_llava_swap.training.configs"] * 2
