"""check-data (`tools/check_data.py`, `xtuner-llava-swap check-data`): problem table, length
percentiles, max_length drops, PNG, HTML."""
from __future__ import annotations

import importlib.util
import re

import pytest
from data_helpers import BAD_SAMPLES, QWEN2_TOKENIZER, write_bad_corpus
from support import REPO, requires_fixtures

from xtuner_llava_swap.commands.main import main as command

pytestmark = requires_fixtures


@pytest.fixture(scope="module")
def check_data_tool():
    spec = importlib.util.spec_from_file_location("check_data_tool", REPO / "tools" / "check_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_file_with_a_profile(check_data_tool, tmp_path, capsys):
    data, images, _ = write_bad_corpus(tmp_path)
    out = tmp_path / "report"
    assert check_data_tool.main([
        "--data", str(data), "--tokenizer", str(QWEN2_TOKENIZER), "--profile", "qwen2",
        "--image-folder", str(images), "--image-tokens", "16", "--max-length", "300",
        "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    n = len(BAD_SAMPLES) + 3
    assert f"samples: {n} in the file, 4 valid, 3 would train at max_length 300" in text
    skipped = [r for r, _ in BAD_SAMPLES if r != "too_long"]  # too long is the policy's
    for reason in skipped:
        assert re.search(rf"^{reason}\s+1\s", text, re.M), reason
    assert re.search(rf"^skipped in all\s+{len(skipped)}\s+of {n} samples", text, re.M)
    assert "max_length 300: 1 sample(s) removed (too_long 1), 0 truncated" in text
    assert re.search(r"p50 \d+, p90 \d+, p95 \d+, p99 \d+, p100 3\d\d, mean", text)
    png = (out / "lengths.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    html = (out / "samples.html").read_text()
    assert html.count("<div class='s'>") == 4
    assert "<span class='img'>[image ok.jpg]</span>" in html
    assert "<span class='t'>A smiling person.&lt;|im_end|&gt;</span>" in html
    assert "over max_length" in html


def test_training_config_with_overrides(tiny_parts, tmp_path, capsys):
    """Through the installed command, as the README shows it."""
    _, finetune, images = tiny_parts("data")
    config = REPO / "tests" / "data" / "configs" / "tiny_llava_swap_dataset.py"
    assert command([
        "check-data", str(config), "--cfg-options", f"llm_name_or_path={tiny_parts('qwen2')}",
        f"visual_encoder_name_or_path={tiny_parts('clip')}", f"data_path={finetune}",
        f"image_folder={images}", "--max-length", "60", "--policy", "truncate",
        "--out", str(tmp_path), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "image tokens per image: 16" in text  # read from the tiny CLIP's config
    assert re.search(r"samples: 16 in the file, 16 valid, \d+ would train at max_length 60 "
                     r"\(policy 'truncate'\)", text)
    assert re.search(r"max_length 60: \d+ sample\(s\) removed .*, [1-9]\d* truncated", text)
    assert (tmp_path / "lengths.png").is_file() and (tmp_path / "samples.html").is_file()
