"""Two images per sample, end to end: a real xtuner training (``tools/train.py``: xtuner's
train entry, in-process) of the shipped Qwen2.5 QLoRA config (tiny Qwen2, tiny CLIP, the
CPU switches) through its ``LLaVASwapModel`` and ``llava_collate_fn`` with ``max_images=2``, on
samples with two images (in front of the text and in place), one image and none;
EvaluateChatHook generating from a two-image prompt; then ``tools/convert_to_hf.py``
(its ``main``) to both formats with ``--verify``, which compares the two-image prompt as
well as the one-image one (the run's dataset has ``max_images > 1``), and, where
``../shared/fixtures/upstream`` is here, loads the official folder with the upstream
LLaVA-NeXT code and the two-image prompt too. One training run for the module.
"""
from __future__ import annotations

import json
import re

import pytest
import torch

from support import FIXTURES, REPO, config_with_lines, run_train
from xtuner_llava_swap.testing.tiny import TinyLLaVA

CONFIG = REPO / "configs" / "llava_qwen2_5_7b_instruct_qlora.py"
K = 4  # the hook's replies are forced to stop at this step
UPSTREAM = FIXTURES / "upstream" if FIXTURES is not None else None
# what the appended lines change in the shipped config (whose model and collate already take
# any number of images): the dataset keeps up to two per sample, the hook asks about two
SEVERAL_IMAGES = """
llava_dataset.update(max_images=2)
train_dataloader.update(dataset=llava_dataset)
custom_hooks[1].update(evaluation_inputs=["Compare <image> with <image>."])
"""


def two_image_samples(images: list) -> list:
    a, b, c = images[:3]
    return [
        {"image": [a, b], "conversations": [
            {"from": "human", "value": "<image>\n<image>\nWhat differs between the pictures?"},
            {"from": "gpt", "value": "The second face looks to the left."}]},
        {"image": [b, c], "conversations": [
            {"from": "human", "value": "Compare <image> with <image>."},
            {"from": "gpt", "value": "Both show a smiling person."},
            {"from": "human", "value": "Which one is brighter?"},
            {"from": "gpt", "value": "The first one."}]},
        {"image": a, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image."},
            {"from": "gpt", "value": "A face."}]},
        {"conversations": [{"from": "human", "value": "What is two plus two?"},
                           {"from": "gpt", "value": "Four."}]},
    ]


@pytest.fixture(scope="module")
def two_image_run(tiny_parts, tmp_path_factory):
    """``(work_dir, config, cfg-options, image paths)`` of one real training run."""
    from transformers import AutoTokenizer

    _, finetune, folder = tiny_parts("data")
    tiny = TinyLLaVA("qwen2", tiny_parts("qwen2"), tiny_parts("clip"), finetune, finetune,
                     folder, uses_real_tokenizer=FIXTURES is not None)
    work_dir = tmp_path_factory.mktemp("train-two-images")
    images = [str(p.relative_to(folder)) for p in sorted(folder.rglob("*")) if p.is_file()][:3]
    data_path = tmp_path_factory.mktemp("data-two-images") / "two_images.json"
    data_path.write_text(json.dumps(two_image_samples(images)))
    config = config_with_lines(CONFIG, tmp_path_factory.mktemp("config-two-images"),
                               "llava_qwen2_5_two_images.py", SEVERAL_IMAGES)
    end_of_turn = AutoTokenizer.from_pretrained(tiny.llm).convert_tokens_to_ids("<|im_end|>")
    pair = f"[{folder / images[0]},{folder / images[1]}]"
    options = tiny.cfg_options(**{
        "data_path": data_path, "pretrained_pth": None,
        "train_dataloader.sampler.per_device_batch_size": 2,
        "default_hooks.logger.interval": 1,
        "custom_hooks.1.evaluation_images": f"[{pair}]",  # wins over evaluation_images
        "custom_hooks.1.max_new_tokens": 8,
        "custom_hooks.1.generation_kwargs.do_sample": False,
        "custom_hooks.1.generation_kwargs.min_new_tokens": K - 1,
        "custom_hooks.1.generation_kwargs.sequence_bias": f"[[[{end_of_turn}],1000.0]]",
    })
    run_train(config, work_dir, options, entry="tools/train.py")  # xtuner's entry, in-process
    return work_dir, config, options, [folder / image for image in images]


def test_training_on_two_images_per_sample_and_the_hooks_two_image_prompt(two_image_run):
    from mmengine.config import Config

    work_dir, *_ = two_image_run
    log = (work_dir / "test_stdout.log").read_text()
    assert "Traceback" not in log and (work_dir / "iter_2.pth").is_file(), log[-4000:]
    losses = [float(x) for x in re.findall(r"loss: ([0-9.]+)", log)]
    assert len(losses) == 2 and all(0 < x < 100 for x in losses)
    dumped = Config.fromfile(next(work_dir.glob("*.py")))
    assert dumped.model.type.endswith("LLaVASwapModel") and dumped.llava_dataset.max_images == 2
    samples = re.findall(r"Sample output:\n(.*?)\nEvaluateChatHook: (\d+) new tokens, ([^\n]*)",
                         log, flags=re.S)
    assert len(samples) >= 2  # before and after training (and at the checkpoint)
    for text, n_tokens, ending in samples:
        assert (int(n_tokens), ending) == (K, "stopped by '<|im_end|>'"), text
        assert "<|im_start|>user\nCompare <image> with <image>.<|im_end|>" in text
    state = torch.load(work_dir / "iter_2.pth", map_location="cpu", weights_only=True)
    assert "projector.model.0.weight" in state["state_dict"]


def convert_cli(run, out, fmt: str, capsys) -> dict:
    from xtuner_llava_swap.export.cli import main

    work_dir, config, options, _ = run
    keep = ("llm_name_or_path", "visual_encoder_name_or_path")
    argv = [str(config), str(work_dir / "iter_2.pth"), str(out), "--format", fmt, "--verify",
            "--dtype", "float32", "--no-progress", "--cfg-options",
            *(f"{k}={options[k]}" for k in keep)]
    capsys.readouterr()
    code = main(argv)
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    return json.loads(printed.out[printed.out.index("{\n"):])  # after DeepSpeed's import lines


def assert_both_prompts_verified(report) -> None:
    assert report["images"] == 1 and report["several_images"]["images"] == 2
    for numbers in (report, report["several_images"]):
        assert numbers["max_abs_logit_diff"] <= numbers["tolerance"]
        assert numbers["tokens"] == numbers["reference_tokens"] and len(numbers["tokens"]) > 0


def test_hf_export_verifies_the_two_image_prompt(two_image_run, tmp_path, capsys):
    summary = convert_cli(two_image_run, tmp_path / "hf", "hf", capsys)
    assert_both_prompts_verified(summary["verify"])


def test_llava_export_verifies_the_two_image_prompt_upstream_too(two_image_run, tmp_path,
                                                                 capsys):
    summary = convert_cli(two_image_run, tmp_path / "llava-qwen2-two-images", "llava", capsys)
    report = summary["verify"]
    assert_both_prompts_verified(report)
    if UPSTREAM is None or not UPSTREAM.is_dir():
        assert report["several_images"]["upstream"].startswith("not run")
        pytest.skip("../shared/fixtures/upstream is absent: the upstream LLaVA-NeXT load "
                    "was not run (the export itself verified)")
    for numbers in (report["upstream"], report["several_images"]["upstream"]):
        assert sorted(numbers) == ["llava-c121f04", "llava-next-df17966"]
        assert numbers["llava-c121f04"] == "skipped: this checkout has no llava_qwen class"
        loaded = numbers["llava-next-df17966"]
        assert loaded["max_abs_logit_diff"] <= loaded["tolerance"]
        assert len(loaded["tokens"]) == len(loaded["reference_tokens"]) > 0
        assert loaded["tensors_compared"] > 0



def test_converter_reads_the_runs_max_images_and_refuses_a_bad_one(two_image_run):
    from xtuner_llava_swap.export import ExportError
    from xtuner_llava_swap.export.run_config import load_training_run

    _, config, options, _ = two_image_run
    paths = {k: str(options[k]) for k in ("llm_name_or_path", "visual_encoder_name_or_path")}
    assert load_training_run(config, paths).max_images == 2
    with pytest.raises(ExportError, match=r"the dataset's max_images is 0, not a whole number"):
        load_training_run(config, {**paths, "llava_dataset.max_images": 0})
