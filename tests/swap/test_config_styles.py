"""swap_llm and swap_vision_tower on a config of every style leave it dumpable and loadable
with the same values: a shipped lazy-import config (LazyObject types), the config
``xtuner train`` dumps into the work dir (``Runner.dump_config`` is ``cfg.dump``: dotted-name
strings), and a plain dict config with dotted-name types."""
from __future__ import annotations

import pytest
from mmengine.config import Config
from mmengine.utils.misc import get_object_from_string

from support import REPO
from xtuner_llava_swap.data import llava_format_map_fn
from xtuner_llava_swap.profiles import get_profile
from xtuner_llava_swap.training.configs import swap_llm, swap_vision_tower

SHIPPED = REPO / "configs" / "llava_qwen2_5_7b_instruct_qlora.py"
LLM = "Qwen/Qwen2-7B-Instruct"
TOWER = "google/siglip-so400m-patch14-384"


def lazy_config(tmp_path):
    return Config.fromfile(SHIPPED)


def work_dir_config(tmp_path):
    """What `xtuner train` leaves in the work dir (its runner's dump_config: cfg.dump)."""
    Config.fromfile(SHIPPED).dump(tmp_path / "llava_qwen2_5_7b_instruct_qlora.py")
    return Config.fromfile(tmp_path / "llava_qwen2_5_7b_instruct_qlora.py")


def plain_dict_config(tmp_path):
    """A config built in Python with dotted-name types (no file, no lazy import)."""
    return Config(Config.fromfile(work_dir_config(tmp_path).filename).to_dict())


STYLES = [lazy_config, work_dir_config, plain_dict_config]


def swapped_and_dumped(make, tmp_path) -> Config:
    tmp_path.mkdir()
    cfg = make(tmp_path)
    swap_llm(cfg, "qwen2", LLM, pretrained_pth=None)
    swap_vision_tower(cfg, "siglip-so400m-384", TOWER)
    cfg.dump(tmp_path / "swapped.py")
    return Config.fromfile(tmp_path / "swapped.py")


@pytest.mark.parametrize("make", STYLES, ids=[m.__name__ for m in STYLES])
def test_swapped_config_of_every_style_dumps_and_loads_the_same_values(make, tmp_path):
    expected = swapped_and_dumped(lazy_config, tmp_path / "lazy")
    again = swapped_and_dumped(make, tmp_path / "style")
    assert again.to_dict() == expected.to_dict()
    # the values the swaps decide, by their dotted names (what `xtuner train --resume` reads)
    assert again.tokenizer.type == "xtuner_llava_swap.training.tokenizers.build_tokenizer"
    assert again.tokenizer.pretrained_model_name_or_path == LLM
    assert again.model.type == "xtuner_llava_swap.training.llava_model.LLaVASwapModel"
    assert again.model.llm.type == "transformers.AutoModelForCausalLM.from_pretrained"
    assert again.model.llm.pretrained_model_name_or_path == LLM
    assert again.model.llm_lora.target_modules == list(get_profile("qwen2").lora_target_modules)
    assert again.model.visual_encoder.type == "transformers.SiglipVisionModel.from_pretrained"
    assert again.model.visual_encoder.pretrained_model_name_or_path == TOWER
    assert again.model.vision_tower == "siglip-so400m-384"
    assert again.image_processor.type == "transformers.SiglipImageProcessor.from_pretrained"
    assert again.prompt_template == "xtuner_llava_swap.profiles.PROMPT_TEMPLATE.qwen2"
    dataset = again.train_dataloader.dataset
    assert get_object_from_string(dataset.dataset_map_fn) is llava_format_map_fn
    assert dataset.select_feature == "cls_patch"  # SigLIP: no class token to drop
    hooks = {h.type.rsplit(".", 1)[-1]: h for h in again.custom_hooks}
    assert hooks["EvaluateChatHook"].type == "xtuner_llava_swap.training.hooks.EvaluateChatHook"
    assert hooks["RunRecordHook"].profile == "qwen2"


def test_swapped_work_dir_config_builds_its_parts(tiny_parts, tmp_path):
    """The dotted names the swaps write into a dumped config build the real objects."""
    from xtuner.registry import BUILDER

    from xtuner_llava_swap.profiles.template_map import resolve_template
    from xtuner_llava_swap.training.hooks import EvaluateChatHook
    from xtuner_llava_swap.training.llava_model import LLaVASwapModel

    cfg = work_dir_config(tmp_path)
    swap_llm(cfg, "qwen2", str(tiny_parts("qwen2")), pretrained_pth=None)
    cfg.dump(tmp_path / "swapped.py")
    again = Config.fromfile(tmp_path / "swapped.py")
    tokenizer = BUILDER.build(again.tokenizer)
    assert tokenizer.name_or_path == str(tiny_parts("qwen2"))
    assert resolve_template(again.prompt_template) == get_profile("qwen2").template
    assert BUILDER.get(again.model.type) is LLaVASwapModel
    assert BUILDER.get(again.custom_hooks[1].type) is EvaluateChatHook
