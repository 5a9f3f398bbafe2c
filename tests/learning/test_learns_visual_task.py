"""The proof that a run of a shipped config LEARNS a visual task, and that the proof can fail.

One real ``xtuner train`` of the shipped finetune config
``configs/llava_qwen2_5_7b_instruct_qlora.py`` (LoRA on the LLM and on CLIP, projector
trained, images padded to square) on the synthetic task of
:mod:`xtuner_llava_swap.testing.visual_task` (wide pictures, a coloured shape near the left
or right edge; colour, shape and side questions), with the recipe of
:mod:`xtuner_llava_swap.testing.visual_recipe` (which ``make demo`` trains too): the tiny
parts put in by ``--cfg-options`` and nothing else of the config changed but what docs/learning_test.md
lists (CPU switches, paths, no pretrain projector, batch size, learning rate, schedule
length, activation checkpointing off).

The held-out items are then answered greedily and scored by the package's ``eval`` tool
(``tools/eval.py``, its ``main``: VQA JSONL, normalised exact match) on

* the run: CONFIG + ``iter_N.pth`` in memory, LoRA live, prompted and preprocessed as training
  does;
* the ``hf`` export, loaded with transformers' ``LlavaForConditionalGeneration``, and the
  ``llava`` export, loaded with the package's loader classes (``--compare``);
* and the ``llava`` export loaded by LLaVA-NeXT's own ``load_pretrained_model`` (the pinned
  checkout in ../shared/fixtures/upstream; skipped with the reason where it is absent), which
  the eval tool does not run: scored here with the same normalised match.

Each must reach :data:`REQUIRED` accuracy. The controls score the same items with every
picture blank, and centre-cropped instead of padded (the shape lies in the outer quarters, so
the crop cuts it away): they must fall to chance, which shows that the accuracy comes from
the pixels, through the padding, and not from the questions.

A second training of the same config on the same task has packing on
(``train_dataloader.dataset.pack_to_max_length=True``, docs/packing.md) with the recipe's
packing numbers: one pack of 4 whole samples per step, as many samples per step as the
first, for two epochs (at one, the first's step count, it learned at one seed of three).
Its held-out items are scored on the run and on its ``hf`` export, and
with every picture blank.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import FIXTURES, REPO, run_train
from xtuner_llava_swap.testing.visual_recipe import (CONFIG_NAME, KINDS, LAST_ITERATION,
                                                      N_TRAIN, PACK_MAX_LENGTH,
                                                      PACKED_LAST_ITERATION, SAMPLES_PER_PACK,
                                                      TRAIN_ENV, Recipe, build_recipe)
from xtuner_llava_swap.testing.visual_task import VisualTask

CONFIG = REPO / "configs" / f"{CONFIG_NAME}.py"
PROFILE = "qwen2.5"  # CONFIG's
REQUIRED = 0.9  # accuracy on the held-out items, overall
MARGIN = 0.1  # a control may exceed chance by at most this much, in every category
UPSTREAM = FIXTURES / "upstream" if FIXTURES is not None else None
requires_upstream = pytest.mark.skipif(
    UPSTREAM is None or not UPSTREAM.is_dir(),
    reason="../shared/fixtures/upstream (the pinned LLaVA-NeXT code) is absent")


@dataclass(frozen=True)
class LearnedRun:
    task: VisualTask
    checkpoint: Path
    cfg_options: dict  # what a conversion or a model of the run needs
    log: str  # the training's output


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Recipe:
    """The task and the tiny parts, once for both trainings."""
    return build_recipe(tmp_path_factory.mktemp("learns"))


def train(recipe: Recipe, train_options: dict, work_dir: Path, last: int) -> LearnedRun:
    """``xtuner train`` of CONFIG with ``train_options``; the run at its ``iter_{last}.pth``."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in TRAIN_ENV.items():
            patch.setenv(name, value)
        proc = run_train(CONFIG, work_dir, train_options)
    log = (work_dir / "test_stdout.log").read_text()
    checkpoint = work_dir / f"iter_{last}.pth"
    assert proc.returncode == 0 and checkpoint.is_file(), log[-4000:]
    losses = [float(x) for x in re.findall(r"loss: ([0-9.]+)", log)]
    assert losses[-1] < losses[0] / 4, losses
    return LearnedRun(recipe.task, checkpoint, recipe.model_options, log)


@pytest.fixture(scope="module")
def learned_run(recipe, tmp_path_factory) -> LearnedRun:
    return train(recipe, recipe.train_options, tmp_path_factory.mktemp("run"), LAST_ITERATION)


@pytest.fixture(scope="module")
def packed_run(recipe, tmp_path_factory) -> LearnedRun:
    """The same recipe with packing on: one pack of SAMPLES_PER_PACK samples per step."""
    return train(recipe, recipe.packed_train_options(), tmp_path_factory.mktemp("packed-run"),
                 PACKED_LAST_ITERATION)


def export(run: LearnedRun, out: Path, fmt: str) -> Path:
    from xtuner_llava_swap.export import convert

    convert(CONFIG, run.checkpoint, out, fmt=fmt, dtype="float32", progress=False,
            cfg_options=run.cfg_options)
    return out


@pytest.fixture(scope="module")
def exports(learned_run, tmp_path_factory) -> dict:
    """``{"hf": folder, "llava": folder}`` of the run (the llava folder's name holds "llava"
    and "qwen": LLaVA-NeXT's loader picks ``llava_qwen`` from it)."""
    root = tmp_path_factory.mktemp("learns-exports")
    return {"hf": export(learned_run, root / "hf", "hf"),
            "llava": export(learned_run, root / "llava-qwen-task", "llava")}


def evaluate(run: LearnedRun, data: Path, out: Path, *compare: Path, **options) -> dict:
    """``tools/eval.py`` of the run (CONFIG + checkpoint) on ``data``; its ``result.json``."""
    from xtuner_llava_swap.inference.eval_cli import main as eval_main

    settings = {**run.cfg_options, **options}
    argv = [str(run.checkpoint), "--config", str(CONFIG), "--data", str(data), "--work-dir",
            str(out), "--max-new-tokens", "4", "--no-progress",
            *(["--compare", *map(str, compare)] if compare else []),
            "--cfg-options", *(f"{k}={v}" for k, v in settings.items())]
    assert eval_main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["n_scored"] == result["n_items"] and not result["unscored"], result
    result["by_kind"] = by_kind(data, out / "predictions.jsonl")
    return result


def by_kind(data: Path, predictions: Path) -> dict:
    """Accuracy per question kind (the items' ``category``, which the eval tool's VQA reader
    does not keep) from the tool's predictions (``index``: the item's line number)."""
    items = items_of(data)
    right: dict = {}
    for line in predictions.read_text().splitlines():
        record = json.loads(line)
        item = items[record["index"] - 1]
        assert record["answer"] == item["answer"]
        right.setdefault(item["category"], []).append(
            normalised(record["prediction"]) == item["answer"])
    return {kind: sum(marks) / len(marks) for kind, marks in right.items()}


@pytest.fixture(scope="module")
def heldout_result(learned_run, exports, tmp_path_factory) -> dict:
    """The held-out items on the run, compared with its hf and llava exports."""
    return evaluate(learned_run, learned_run.task.heldout,
                    tmp_path_factory.mktemp("eval") / "heldout", exports["hf"], exports["llava"])


def assert_learned(scores: dict) -> None:
    assert scores["accuracy"] >= REQUIRED, scores


def assert_chance(task: VisualTask, result: dict) -> None:
    for kind in KINDS:
        assert result["by_kind"][kind] <= task.chance(kind) + MARGIN, (kind, result)


# ------------------------------------------------------------------ the run and its exports
def test_run_answers_held_out_items(heldout_result):
    assert_learned(heldout_result)
    assert set(heldout_result["by_kind"]) == set(KINDS)


def test_hf_export_answers_held_out_items(heldout_result, exports):
    hf = heldout_result["compare"][0]
    assert hf["model"] == str(exports["hf"])
    assert_learned(hf)
    assert hf["identical_share"] == 1.0, hf  # fp32: the run's answers, every one


def test_llava_export_answers_held_out_items(heldout_result, exports):
    """With the package's loader classes (plain transformers)."""
    llava = heldout_result["compare"][1]
    assert llava["model"] == str(exports["llava"])
    assert_learned(llava)
    assert llava["identical_share"] == 1.0, llava


# ------------------------------------------------------------------ the controls
def test_run_falls_to_chance_with_the_image_withheld(learned_run, tmp_path):
    """Control: every picture blank (same size), the questions unchanged."""
    assert_chance(learned_run.task,
                  evaluate(learned_run, learned_run.task.heldout_blank, tmp_path / "blank"))


def test_run_falls_to_chance_with_centre_cropped_images(learned_run, tmp_path):
    """Control: the pictures centre-cropped (what the image processor keeps without
    pad-to-square) instead of padded, both as files cropped beforehand and as the run's own
    preprocessing with padding off."""
    task = learned_run.task
    assert_chance(task, evaluate(learned_run, task.heldout_centre_crop, tmp_path / "crop"))
    assert_chance(task, evaluate(learned_run, task.heldout, tmp_path / "no-pad",
                                 **{"llava_dataset.pad_image_to_square": False}))


# ------------------------------------------------------------------ the same run packed
def test_packed_run_steps_through_full_packs(packed_run):
    """Each step one pack of SAMPLES_PER_PACK whole samples, no padding (the unpacked run's
    samples per step), for PACK_EPOCHS epochs."""
    assert (f"packed: {N_TRAIN} samples in {N_TRAIN // SAMPLES_PER_PACK} packs of max_length "
            f"{PACK_MAX_LENGTH}: {SAMPLES_PER_PACK:.2f} samples per pack, packing efficiency "
            "100.0%") in packed_run.log
    assert f"Iter(train) [{PACKED_LAST_ITERATION}/{PACKED_LAST_ITERATION}]" in packed_run.log


def test_packed_run_and_hf_export_answer_held_out_items(packed_run, tmp_path):
    hf = export(packed_run, tmp_path / "hf", "hf")
    result = evaluate(packed_run, packed_run.task.heldout, tmp_path / "heldout", hf)
    assert_learned(result)
    assert_learned(result["compare"][0])
    assert result["compare"][0]["identical_share"] == 1.0, result


def test_packed_run_falls_to_chance_with_the_image_withheld(packed_run, tmp_path):
    assert_chance(packed_run.task,
                  evaluate(packed_run, packed_run.task.heldout_blank, tmp_path / "blank"))


# ------------------------------------------------------------------ LLaVA-NeXT's own loader
def normalised(text: str) -> str:
    return text.strip().strip(".!").strip().lower()


def items_of(jsonl: Path) -> list:
    return [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]


@requires_upstream
def test_llava_export_answers_held_out_items_with_llava_next(learned_run, exports):
    """The official layout, loaded by LLaVA-NeXT's ``load_pretrained_model`` in a process of
    its own, its tower from the folder's own tower sub-folder; prompted with the export's chat
    template, scored by normalised exact match as the eval tool scores."""
    from PIL import Image
    from transformers import AutoTokenizer

    from xtuner_llava_swap.export import upstream
    from xtuner_llava_swap.inference.prompt import user_text
    from xtuner_llava_swap.profiles import get_profile

    folder = exports["llava"]
    (checkout,) = [c for c in upstream.checkouts(UPSTREAM) if upstream.is_llava_next(c)]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    items = items_of(learned_run.task.heldout)
    cases = [(tokenizer.apply_chat_template(
                  [{"role": "user", "content": user_text(item["question"], 1)}],
                  tokenize=False, add_generation_prompt=True),
              Image.open(learned_run.task.heldout.parent / item["image"]).convert("RGB"), [])
             for item in items]
    stop_ids = get_profile(PROFILE).stop_token_ids(tokenizer)
    _, results = upstream.probe_cases(checkout, folder, cases, stop_ids, 4,
                                      vision_tower=upstream.tower_override(folder))
    right = [normalised(tokenizer.decode(result["tokens"], skip_special_tokens=True))
             == item["answer"] for item, result in zip(items, results, strict=True)]
    assert sum(right) / len(items) >= REQUIRED, right



