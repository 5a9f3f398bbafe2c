"""`--format llava` folders load with the upstream LLaVA code as it is (haotian-liu/LLaVA,
LLaVA-NeXT from ../shared/fixtures/upstream, each in its own process): every exported
tensor in use (the LoRA-trained vision tower too), xtuner's logits and greedy tokens; both
formats still load after they moved and the base model folders are gone; and a SigLIP
export loads with LLaVA-NeXT's SigLipVisionTower from a Hugging Face cache, as a user's."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from export.conftest import TrainedRun, build_inprocess_checkpoint
from support import FIXTURES, REPO, hub_cache, requires_fixtures

from xtuner_llava_swap.export import convert
from xtuner_llava_swap.export.llava_writer import TOWER_FOLDER, tower_hub_id

UPSTREAM = FIXTURES / "upstream" if FIXTURES is not None else None
requires_upstream = pytest.mark.skipif(
    UPSTREAM is None or not UPSTREAM.is_dir(),
    reason="../shared/fixtures/upstream (the pinned haotian-liu/LLaVA and LLaVA-NeXT code) "
           "is absent")
TOWER_KEY = "model.vision_tower.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight"


def _export(run, out, **kwargs):
    return convert(run.config, run.checkpoint, out, cfg_options=run.cfg_options, fmt="llava",
                   dtype="float16", progress=False, **kwargs)


def _weights(folder):
    tensors = {}
    for file in folder.glob("*.safetensors"):
        tensors.update(load_file(file))
    return tensors


def _assert_upstream(report, checkouts, n_tensors, skipped=()):
    assert sorted(report) == sorted([*checkouts, *skipped])
    for name in skipped:
        assert report.pop(name).startswith("skipped: this checkout has no ")
    for name, numbers in report.items():
        # verify raised unless every tensor equals the loaded one; here the counts
        assert numbers["tensors_compared"] == n_tensors, name
        assert numbers["loaded_dtype"] == "torch.float16"
        assert numbers["max_abs_logit_diff"] <= numbers["tolerance"], name
        assert len(numbers["tokens"]) == len(numbers["reference_tokens"]) > 0
        assert numbers["near_ties"] <= len(numbers["reference_tokens"])


@requires_fixtures
@requires_upstream
def test_llava_llama_loads_with_both_upstream_loaders(inprocess_run, tiny_parts, tmp_path):
    run = inprocess_run("vicuna-v1.5", "llama")  # LoRA on the LLM and on CLIP
    # a dataset of up to two images per sample: verify adds the two-image prompt, which both
    # upstream checkouts take as one process_images batch
    run = type(run)(run.config, run.checkpoint, {**run.cfg_options, "llava_dataset.max_images": 2})
    out = tmp_path / "llava-llama-trained"
    summary = _export(run, out, verify=True, upstream=UPSTREAM)
    assert summary["serving"]["ready"] and summary["serving"]["server"] == "SGLang"
    config = json.loads((out / "config.json").read_text())
    assert config["unfreeze_mm_vision_tower"] is True
    assert config["mm_use_im_patch_token"] is False  # else the loaders add a token, resize
    weights = _weights(out)
    base_tower = load_file(tiny_parts("clip") / "model.safetensors")
    # the merged vision LoRA changed the tower: the loaders must use the exported one
    assert not torch.equal(weights[TOWER_KEY].float(),
                           base_tower[TOWER_KEY.split("vision_tower.vision_tower.")[1]].float())
    _assert_upstream(summary["verify"]["upstream"], ["llava-c121f04", "llava-next-df17966"],
                     len(weights))
    assert summary["verify"]["several_images"]["images"] == 2
    _assert_upstream(summary["verify"]["several_images"]["upstream"],
                     ["llava-c121f04", "llava-next-df17966"], len(weights))
    for report in summary["verify"]["upstream"].values():  # every token has its own row:
        for exported, loaded in report["resized_rows"].values():  # the loaders' resize to
            assert loaded <= exported  # len(tokenizer) only drops spare rows, adds none


@requires_fixtures
@requires_upstream
def test_llava_qwen_loads_with_llava_next_and_after_moving(inprocess_run, tiny_parts, tmp_path):
    from PIL import Image
    from transformers import (AutoImageProcessor, AutoModelForCausalLM, AutoProcessor,
                              AutoTokenizer, LlavaForConditionalGeneration)

    from xtuner_llava_swap.export import upstream
    from xtuner_llava_swap.export.loaders import process_images, tokenizer_image_token

    run = inprocess_run("qwen2.5", "qwen2")
    bases = tmp_path / "bases"  # base folders of this export only, deleted below
    llm, clip = shutil.copytree(tiny_parts("qwen2"), bases / "llm"), \
        shutil.copytree(tiny_parts("clip"), bases / "clip")
    moved_run = type(run)(run.config, run.checkpoint, {
        **run.cfg_options, "llm_name_or_path": str(llm), "visual_encoder_name_or_path": str(clip)})
    out = tmp_path / "made" / "llava-qwen2-trained"
    summary = _export(moved_run, out, verify=True, upstream=UPSTREAM)
    _assert_upstream(summary["verify"]["upstream"], ["llava-next-df17966"], len(_weights(out)),
                     skipped=["llava-c121f04"])  # haotian-liu/LLaVA has no llava_qwen
    # no hub id known for the tiny tower: a local path, and the converter says so
    assert summary["vision_tower"]["mm_vision_tower"] == str(out / TOWER_FOLDER)
    assert "If the folder moves" in summary["vision_tower"]["note"]

    hf_out = tmp_path / "made" / "hf"
    convert(moved_run.config, moved_run.checkpoint, hf_out, cfg_options=moved_run.cfg_options,
            dtype="float16", progress=False)

    moved = shutil.copytree(out, tmp_path / "elsewhere" / "llava-qwen2-trained")
    moved_hf = shutil.copytree(hf_out, tmp_path / "elsewhere" / "hf")
    shutil.rmtree(tmp_path / "made")
    shutil.rmtree(bases)
    image = Image.new("RGB", (60, 90), (20, 160, 90))
    tokenizer = AutoTokenizer.from_pretrained(moved)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "<image>\nWhat?"}],
                                         tokenize=False, add_generation_prompt=True)
    ids = tokenizer_image_token(text, tokenizer).unsqueeze(0)
    model = AutoModelForCausalLM.from_pretrained(moved, torch_dtype=torch.float32).eval()
    pixels = process_images([image], AutoImageProcessor.from_pretrained(moved), model.config)
    with torch.no_grad():
        ours = model(input_ids=ids, images=pixels).logits[0]
    theirs = upstream.probe(UPSTREAM / "llava-next-df17966", moved, text, image, [], [0], 1,
                            vision_tower=str(moved / TOWER_FOLDER))
    assert not theirs["tensors"]["differ"] and not theirs["tensors"]["unused"]
    assert theirs["ids"] == ids[0].tolist()
    assert torch.allclose(theirs["pixels"], pixels, atol=1e-6)
    vocab = theirs["logits"].shape[-1]
    assert (theirs["logits"] - ours[:, :vocab]).abs().max() < 1e-3 * ours.abs().max()

    processor = AutoProcessor.from_pretrained(moved_hf)
    hf_model = LlavaForConditionalGeneration.from_pretrained(moved_hf, torch_dtype=torch.float32)
    inputs = processor(images=image, text=text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        hf_logits = hf_model(**inputs).logits[0]
    assert hf_logits.shape[0] == ours.shape[0]
    assert (hf_logits[:, :vocab] - ours[:, :vocab]).abs().max() < 1e-3 * ours.abs().max()


SIGLIP_ID = "google/siglip-so400m-patch14-384"


@requires_fixtures
@requires_upstream
def test_siglip_llava_export_loads_with_llava_next_from_the_hub_cache(tiny_parts, tmp_path,
                                                                    monkeypatch, capsys):
    """SigLIP at its real size (384 px, patch 14: the 729 positions LLaVA-NeXT asserts),
    exported (float32) by the command line with --verify --upstream: this package's loader
    gives xtuner's logits within 1e-4 of their scale; LLaVA-NeXT (loading float16) builds its
    SigLipVisionTower from the hub id in a cache, drops the last layer and the head, loads
    every exported tensor, and gives xtuner's logits; haotian-liu/LLaVA is skipped."""
    from mmengine.config import Config
    from xtuner.model import LLaVAModel

    from xtuner_llava_swap.training.configs import swap_llm, swap_vision_tower
    from xtuner_llava_swap.export import ExportError, cli
    from xtuner_llava_swap.testing.tiny import build_tiny_tower

    # the shipped Qwen2.5 config moved to the tiny parts, as a file for the command line
    tower = build_tiny_tower("siglip-so400m-384", tmp_path / "siglip", image_size=384)
    cfg = Config.fromfile(REPO / "configs" / "llava_qwen2_5_7b_instruct_qlora.py")
    swap_llm(cfg, "qwen2.5", str(tiny_parts("qwen2")), pretrained_pth=None)
    swap_vision_tower(cfg, "siglip-so400m-384", str(tower))
    work_dir = tmp_path / "work_dir"  # the run's files
    work_dir.mkdir()
    cfg.dump(work_dir / "llava_qwen_siglip.py")
    run = TrainedRun(work_dir / "llava_qwen_siglip.py", build_inprocess_checkpoint(
        work_dir / "llava_qwen_siglip.py", {}, work_dir / "iter_1.pth"), {})
    refused = {  # what LLaVA-NeXT's SigLipVisionTower cannot express, each in one line
        "give --vision-tower-id, e.g. " + SIGLIP_ID: {},  # a local path would build CLIP
        "select layer -2 only": {"model.visual_select_layer": -3},
        "features drop position 0": {"model.type": LLaVAModel},  # xtuner's [:, 1:]
    }
    for reason, options in refused.items():
        with pytest.raises(ExportError, match=reason):
            _export(type(run)(run.config, run.checkpoint, options), tmp_path / "llava-qwen-no",
                    vision_tower_id=SIGLIP_ID if options else None)
    assert not (tmp_path / "llava-qwen-no").exists()

    out = tmp_path / "llava-qwen-siglip"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache(tmp_path / "hub", SIGLIP_ID, tower)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = cli.main([str(run.config), str(run.checkpoint), str(out), "--format", "llava",
                     "--dtype", "float32", "--verify", "--upstream", str(UPSTREAM),
                     "--vision-tower-id", SIGLIP_ID, "--no-progress"])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    summary = json.loads(printed.out[printed.out.index("{"):])
    assert summary["serving"]["ready"]  # SGLang finds "siglip" in mm_vision_tower
    ours = summary["verify"]  # this package's loader, float32: the strict check
    assert ours["max_abs_logit_diff"] <= ours["tolerance"] == 1e-4 * max(1, ours["logit_scale"])
    assert ours["tokens"] == ours["reference_tokens"] and ours["tokens"]
    weights = _weights(out)
    report = summary["verify"]["upstream"]
    assert "SigLipVisionTower" in report["llava-c121f04"]
    _assert_upstream(report, ["llava-next-df17966"], len(weights), skipped=["llava-c121f04"])
    # every position of the image: 729 (no class token dropped), the same in both loaders
    assert report["llava-next-df17966"]["positions"] == ours["positions"] > 729

    config = json.loads((out / "config.json").read_text())
    assert config["mm_vision_tower"] == summary["vision_tower"]["mm_vision_tower"] == SIGLIP_ID
    assert (config["mm_vision_select_layer"], config["mm_vision_select_feature"],
            config["mm_patch_merge_type"]) == (-2, "full", "flat")
    assert config["vision_config"]["model_type"] == "siglip_vision_model"
    assert not (out / TOWER_FOLDER).exists()  # LLaVA-NeXT reads SigLIP by hub id only
    assert json.loads((out / "preprocessor_config.json").read_text())[
        "image_processor_type"] == "SiglipImageProcessor"
    # the folder holds the tower LLaVA-NeXT keeps: without the last layer and the head
    base = load_file(f"{tower}/model.safetensors")
    last = config["vision_config"]["num_hidden_layers"] - 1
    dropped = [k for k in base if k.startswith((f"vision_model.encoder.layers.{last}.",
                                                "vision_model.head."))]
    assert dropped and summary["vision_tower"]["tower_tensors_left_out"] == len(dropped)
    assert sorted(k.split("vision_tower.vision_tower.")[1] for k in weights
                  if k.startswith("model.vision_tower.")) == sorted(set(base) - set(dropped))


@requires_fixtures
@requires_upstream
def test_only_llava_next_has_the_siglip_tower():
    from xtuner_llava_swap.export.upstream import applicable

    usable, skipped = applicable(UPSTREAM, "llava_llama", "SigLipVisionTower")
    assert [c.name for c in usable] == ["llava-next-df17966"]
    assert skipped == {"llava-c121f04": "skipped: this checkout has no SigLipVisionTower"}
    usable, skipped = applicable(UPSTREAM, "llava_llama", "CLIPVisionTower")
    assert len(usable) == 2 and skipped == {}


def test_upstream_check_reads_a_by_name_tower_from_the_cache_only(tmp_path, monkeypatch):
    from xtuner_llava_swap.export import ExportError
    from xtuner_llava_swap.export.upstream import require_cached_tower

    folder = tmp_path / "llava-qwen-siglip"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"mm_vision_tower": SIGLIP_ID}))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ExportError, match=f"does not hold it .*huggingface-cli download "
                                          f"{SIGLIP_ID}\\), or leave out --upstream$"):
        require_cached_tower(folder)
    tower = tmp_path / "tower"
    tower.mkdir()
    (tower / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache(tmp_path / "cache", SIGLIP_ID, tower)))
    require_cached_tower(folder)  # held: no error


def test_mm_vision_tower_hub_id(tmp_path):
    from types import SimpleNamespace

    from xtuner_llava_swap.export import ExportError

    tower = tmp_path / "clip"
    tower.mkdir()
    (tower / "config.json").write_text(json.dumps({"_name_or_path": str(tower)}))
    run = SimpleNamespace(visual_encoder_path=str(tower))
    assert tower_hub_id(run) is None
    assert tower_hub_id(run, "openai/clip-vit-large-patch14-336") == \
        "openai/clip-vit-large-patch14-336"
    (tower / "config.json").write_text(json.dumps({"_name_or_path": "openai/clip-vit-base-patch16"}))
    assert tower_hub_id(run) == "openai/clip-vit-base-patch16"
    assert tower_hub_id(SimpleNamespace(visual_encoder_path="laion/CLIP-ViT-L")) == "laion/CLIP-ViT-L"
    with pytest.raises(ExportError, match="not a hub id"):
        tower_hub_id(run, "/models/clip")
