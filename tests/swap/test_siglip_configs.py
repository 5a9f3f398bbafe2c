"""The shipped SigLIP configs (configs/llava_qwen2_5_7b_siglip_so400m_{pretrain,qlora}.py): what
they are made of, and a real `xtuner train` of both stages on tiny parts, every sample holding
two images, then the export of the finetuned checkpoint.

The tiny SigLIP has the real tower's input geometry (384 px, patch 14: 729 positions, no class
token), so its export is what LLaVA-NeXT's loader (which asserts 729) takes. The runs take the
REAL config files with one line appended (``max_images=2``; the shipped stage bases already
collate with ``llava_collate_fn``, docs/models.md "Several images per sample") and the CPU switches of
``xtuner_llava_swap.cpu_options`` (as tests/swap/test_configs.py explains, the LLM is then
unquantized where bitsandbytes cannot quantize; everything else runs as configured).
EvaluateChatHook generates nothing here (no evaluation inputs): its own tests cover it, and
its sample prompts still drop position 0 of the features (docs/towers.md, "Not done yet").

Both trainings happen once (``siglip_qlora_run``, a module fixture); one test per export
format reads the finetuned run.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from support import FIXTURES, REPO, config_with_lines, hub_cache, run_train
from xtuner_llava_swap.testing.tiny import TinyLLaVA, build_tiny_tower_of_real_geometry

CONFIGS = REPO / "configs"
PRETRAIN = CONFIGS / "llava_qwen2_5_7b_siglip_so400m_pretrain.py"
QLORA = CONFIGS / "llava_qwen2_5_7b_siglip_so400m_qlora.py"
TOWER = "siglip-so400m-384"
IMAGE_SIZE, PATCH_SIZE = 384, 14  # the real tower's: google/siglip-so400m-patch14-384
PATCHES = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 27 x 27 = 729, every one kept
TWO_IMAGES = 'llava_dataset["max_images"] = train_dataloader["dataset"]["max_images"] = 2\n'
HUB_ID = "google/siglip-so400m-patch14-384"  # the official layout loads the tower by hub id


@dataclass(frozen=True)
class TrainedRun:
    """A finished run: the config file it trained with, its last checkpoint, and the
    ``--cfg-options`` a conversion of it needs (the paths of the tiny parts)."""

    config: Path
    checkpoint: Path
    cfg_options: dict


# ------------------------------------------------------------ the shipped leaves
@pytest.mark.parametrize("config,stage", [(PRETRAIN, "pretrain"), (QLORA, "qlora")])
def test_siglip_leaf_names_its_llm_and_tower_once(config, stage):
    from transformers import SiglipImageProcessor, SiglipVisionModel

    from xtuner_llava_swap.data import LLaVASwapDataset, llava_format_map_fn
    from xtuner_llava_swap.training.llava_model import LLaVASwapModel
    from xtuner_llava_swap.profiles import get_profile
    from xtuner_llava_swap.towers import get_tower

    text = config.read_text()
    base = "llava_pretrain" if stage == "pretrain" else "llava_qlora_finetune"
    assert f"from ._base_.{base} import *" in text
    for value in ('"qwen2.5"', '"Qwen/Qwen2.5-7B-Instruct"', f'"{TOWER}"',
                  '"google/siglip-so400m-patch14-384"'):
        assert text.count(value) == 1, value
    cfg = Config.fromfile(config)
    tower = get_tower(TOWER)
    assert (cfg.llm_profile, cfg.vision_tower) == ("qwen2.5", TOWER)
    assert cfg.visual_encoder_name_or_path == tower.hf_example
    assert cfg.model.type is LLaVASwapModel and cfg.model.vision_tower == TOWER
    assert cfg.model.visual_encoder.type == SiglipVisionModel.from_pretrained
    assert cfg.model.visual_encoder.pretrained_model_name_or_path == tower.hf_example
    assert cfg.model.llm.pretrained_model_name_or_path == "Qwen/Qwen2.5-7B-Instruct"
    for dataset in (cfg.llava_dataset, cfg.train_dataloader.dataset):
        assert dataset.type is LLaVASwapDataset and dataset.dataset_map_fn is llava_format_map_fn
        assert dataset.select_feature == "cls_patch"  # every position counted: 729 per image
        assert dataset.image_processor.type == SiglipImageProcessor.from_pretrained
        assert dataset.image_processor.pretrained_model_name_or_path == tower.hf_example
    chat = cfg.custom_hooks[1]
    assert chat.image_processor == cfg.llava_dataset.image_processor
    assert chat.prompt_template == get_profile("qwen2.5").template
    assert {h.type.__name__: h for h in cfg.custom_hooks}["RunRecordHook"].profile == "qwen2.5"
    assert "openai/clip" not in cfg.pretty_text
    if stage == "qlora":
        assert cfg.model.pretrained_pth == cfg.pretrained_pth == (
            "./work_dirs/llava_qwen2_5_7b_siglip_so400m_pretrain/iter_2181.pth")
        assert cfg.model.visual_encoder_lora.target_modules == list(tower.lora_target_modules)
        assert cfg.model.llm_lora.target_modules == list(
            get_profile("qwen2.5").lora_target_modules)
    else:
        assert "llm_lora" not in cfg.model and "visual_encoder_lora" not in cfg.model


# ------------------------------------------------------------ end to end (tiny)
def two_image_data(captions_file: Path, out_dir: Path) -> tuple[Path, Path]:
    """Pretrain and finetune sets of 4 samples, each with two images (consecutive pairs of
    the tiny caption set); each sample is ~1,500 positions."""
    captions = json.loads(captions_file.read_text())[:8]
    pairs = [(captions[i], captions[i + 1]) for i in range(0, len(captions), 2)]

    def caption(sample):
        return sample["conversations"][1]["value"]

    pretrain = [{"image": [a["image"], b["image"]], "conversations": [
        {"from": "human", "value": "<image>\n<image>\nDescribe the two images briefly."},
        {"from": "gpt", "value": f"{caption(a)} {caption(b)}"}]} for a, b in pairs]
    finetune = [{"image": [a["image"], b["image"]], "conversations": [
        {"from": "human", "value": "Here is <image> and here is <image>. Is it one picture?"},
        {"from": "gpt", "value": "No, two different pictures."},
        {"from": "human", "value": "Describe the second one."},
        {"from": "gpt", "value": caption(b)}]} for a, b in pairs]
    paths = out_dir / "two_image_pretrain.json", out_dir / "two_image_finetune.json"
    for path, samples in zip(paths, (pretrain, finetune)):
        path.write_text(json.dumps(samples))
    return paths


def check_run(work_dir: Path, siglip: Path, trained: str) -> Path:
    """The run trained its step with a finite loss, wrote its checkpoint and its record."""
    from xtuner_llava_swap.run_record import RECORD_NAME

    log = (work_dir / "test_stdout.log").read_text()
    assert "Traceback" not in log, log[-4000:]
    checkpoint = work_dir / "iter_1.pth"
    assert checkpoint.is_file(), log[-4000:]
    losses = [float(x) for x in re.findall(r"loss: ([0-9.]+)", log)]
    assert len(losses) == 1 and all(0 < x < 100 for x in losses), losses
    assert f"{PATCHES} tokens per image" in log  # the dataset's length budget
    record = json.loads((work_dir / RECORD_NAME).read_text())
    assert (record["llm_profile"], record["vision_tower_profile"]) == ("qwen2.5", TOWER)
    assert record["vision_tower"] == str(siglip)
    assert record["vision_tower_model_type"] == "siglip_vision_model"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert "projector.model.0.weight" in state
    assert any(k.startswith("visual_encoder.") and ".lora_A.default." in k for k in state) is (
        trained == "qlora")
    assert any(k.startswith("llm.") and ".lora_A.default." in k for k in state) is (
        trained == "qlora")
    return checkpoint


@pytest.fixture(scope="module")
def siglip_qlora_run(tiny_parts, tmp_path_factory) -> TrainedRun:
    """`xtuner train` of the SigLIP pretrain leaf, then of the qlora leaf from its projector,
    one step each (one sample, then a batch of two: four images), on two-image samples: the
    finetuned run.

    The tiny Qwen2 has the synthetic tokenizer (the tiny parts' clean-clone fallback: the
    special-token contract of the qwen2.5 profile, a small vocabulary). With the real one its
    embedding has 151,936 rows, and the logits of ~1,500 positions over them make a step ~13 s
    and the export's verify ~35 s on this 2-core machine, about twice this test's time; the
    real tokenizer through these configs is covered by the bad-sample config tests and by the
    CLIP qwen2.5 end-to-end run (tests/swap/test_configs.py)."""
    root = tmp_path_factory.mktemp("siglip-e2e")
    siglip = build_tiny_tower_of_real_geometry(TOWER, root / "siglip-384")
    pretrain_data, finetune_data = two_image_data(tiny_parts("data")[0], root)
    tiny = TinyLLaVA("qwen2", tiny_parts("qwen2", real_tokenizer=False), siglip, pretrain_data,
                     finetune_data, tiny_parts("data")[2], uses_real_tokenizer=False)
    short = {"custom_hooks.1.evaluation_inputs": [], "default_hooks.logger.interval": 1}

    configs = root / "configs"
    pretrain_config = config_with_lines(PRETRAIN, configs, PRETRAIN.name, TWO_IMAGES)
    pretrain_dir = root / "pretrain"
    run_train(pretrain_config, pretrain_dir, tiny.cfg_options(
        "pretrain", **short, **{"train_dataloader.batch_size": 1, "train_cfg.max_epochs": 0.25}))
    projector = check_run(pretrain_dir, siglip, "pretrain")

    qlora_config = config_with_lines(QLORA, configs, QLORA.name, TWO_IMAGES)
    qlora_dir = root / "qlora"
    options = tiny.cfg_options(pretrained_pth=projector, **short,
                               **{"train_dataloader.sampler.per_device_batch_size": 2,
                                  "train_cfg.max_epochs": 0.5})
    run_train(qlora_config, qlora_dir, options)
    checkpoint = check_run(qlora_dir, siglip, "qlora")
    assert f"Load pretrained weight from {projector}" in (qlora_dir / "test_stdout.log").read_text()
    keep = ("llm_name_or_path", "visual_encoder_name_or_path", "pretrained_pth", "data_path",
            "image_folder")
    return TrainedRun(qlora_config, checkpoint, {k: str(options[k]) for k in keep})


def test_siglip_run_keeps_every_patch_of_both_images(siglip_qlora_run):
    """The trained model, built from the run's config and checkpoint: each image of a two-image
    sample reaches the LLM as all 729 positions (none dropped as a class token)."""
    from xtuner.model.utils import prepare_inputs_labels_for_multimodal
    from xtuner.registry import BUILDER

    from xtuner_llava_swap.data.collate import llava_collate_fn
    from xtuner_llava_swap.token_contract import IMAGE_TOKEN_INDEX

    run = siglip_qlora_run
    cfg = Config.fromfile(run.config)
    cfg.merge_from_dict(run.cfg_options)
    model_cfg = cfg.model.copy()
    model_cfg.llm = dict(model_cfg.llm, quantization_config=None, torch_dtype=torch.float32)
    model = BUILDER.build(model_cfg)
    state = torch.load(run.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert not model.load_state_dict(state, strict=False).unexpected_keys
    model.eval()
    dataset = BUILDER.build(cfg.train_dataloader.dataset)
    items = [dataset[0], dataset[1]]
    batch = llava_collate_fn(items)["data"]
    assert batch["pixel_values"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        features = model.visual_features(batch["pixel_values"])
        assert features.shape[:2] == (4, PATCHES)
        merged = prepare_inputs_labels_for_multimodal(
            llm=model.llm, input_ids=batch["input_ids"], labels=batch["labels"],
            attention_mask=batch["attention_mask"], pixel_values=features)
    assert model.vision_tower.name == TOWER
    positions = merged["attention_mask"].sum(1).tolist()
    for sample, (item, seen) in enumerate(zip(items, positions)):
        ids = item["input_ids"]
        places = [i for i, t in enumerate(ids) if t == IMAGE_TOKEN_INDEX]
        assert len(places) == 2 and seen == len(ids) - 2 + 2 * PATCHES
        for n, place in enumerate(places):  # image n's 729 rows, in place, in the LLM's input
            start = place + n * (PATCHES - 1)
            assert torch.equal(merged["inputs_embeds"][sample, start:start + PATCHES],
                               features[2 * sample + n])


def verified_export(run: TrainedRun, out: Path, fmt: str, capsys, *extra: str) -> dict:
    """``tools/convert_to_hf.py`` (its ``main``) of ``run`` to ``fmt`` with ``--verify``; the
    verify report, checked: exit 0, logits within tolerance, xtuner's greedy tokens."""
    from xtuner_llava_swap.export.cli import main as convert_main

    options = [f"{k}={v}" for k, v in run.cfg_options.items()]
    status = convert_main([str(run.config), str(run.checkpoint), str(out), "--format", fmt,
                           "--verify", "--dtype", "float32", "--no-progress", *extra,
                           "--cfg-options", *options])
    captured = capsys.readouterr()
    assert status == 0, captured.err[-3000:]
    report = json.loads(captured.out[captured.out.index("{"):])["verify"]
    assert report["max_abs_logit_diff"] <= report["tolerance"]
    assert report["tokens"] == report["reference_tokens"] and len(report["tokens"]) > 0
    return report


def test_siglip_run_exports_to_hf_with_verify(siglip_qlora_run, tmp_path, capsys):
    out = tmp_path / "llava-qwen-siglip-hf"
    verified_export(siglip_qlora_run, out, "hf", capsys)
    config = json.loads((out / "config.json").read_text())
    assert config["vision_config"]["model_type"] == "siglip_vision_model"
    assert config["vision_config"]["image_size"] == IMAGE_SIZE
    assert config["vision_feature_select_strategy"] == "full"
    assert config["image_seq_length"] == PATCHES


def test_siglip_run_exports_to_llava_with_verify(siglip_qlora_run, tmp_path, monkeypatch, capsys):
    """The official (LLaVA-NeXT) layout of the same run, by the tower's hub id, with --verify:
    this package's loader classes give xtuner's logits and tokens; where the pinned upstream
    checkouts exist, the command also loads the folder with LLaVA-NeXT's own
    ``load_pretrained_model``, its SigLIP tower taken from a hub cache holding the tiny tower."""
    run = siglip_qlora_run
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache(tmp_path / "hub", HUB_ID, Path(
        run.cfg_options["visual_encoder_name_or_path"]))))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "llava-qwen-siglip"
    report = verified_export(run, out, "llava", capsys, "--vision-tower-id", HUB_ID)
    config = json.loads((out / "config.json").read_text())
    assert config["mm_vision_tower"] == HUB_ID
    assert config["mm_vision_select_feature"] == "full" and config["mm_vision_select_layer"] == -2
    if FIXTURES is not None and (FIXTURES / "upstream").is_dir():  # the CLI's default --upstream
        llava_next = report["upstream"]["llava-next-df17966"]
        assert llava_next["max_abs_logit_diff"] <= llava_next["tolerance"]
        assert len(llava_next["tokens"]) == len(report["reference_tokens"])  # float16: near ties
