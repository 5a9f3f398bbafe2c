"""The converter takes the LLM profile from the run record beside the checkpoint: a CONFIG
that names no profile converts; ``--profile`` still wins, with a one-line warning when it
differs from the record; a record of an unknown profile or of a newer plugin is refused
with one line."""
from __future__ import annotations

import copy
import json
import logging
import shutil

import pytest

from support import requires_fixtures
from xtuner_llava_swap.export import ExportError, convert
from xtuner_llava_swap.profiles import get_profile
from xtuner_llava_swap.run_record import RECORD_NAME, make_record, write_record

pytestmark = requires_fixtures


@pytest.fixture
def recorded_run(inprocess_run, tmp_path):
    """The tiny Qwen2.5 checkpoint in a work dir with its run record, and a CONFIG whose
    tokenizer is a plain ``AutoTokenizer`` dict (no profile named)."""
    from transformers import AutoTokenizer

    run = inprocess_run("qwen2.5", "qwen2")
    work_dir = tmp_path / "work_dir"
    work_dir.mkdir()
    checkpoint = work_dir / "iter_1.pth"
    shutil.copyfile(run.checkpoint, checkpoint)
    llm = run.cfg_options["llm_name_or_path"]
    write_record(work_dir, make_record("qwen2.5", llm, run.cfg_options[
        "visual_encoder_name_or_path"], "clip_vision_model", run.config.name))
    options = {**run.cfg_options, "tokenizer": dict(
        _delete_=True, type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path=llm,
        padding_side="right")}
    return type(run)(run.config, checkpoint, options)  # a TrainedRun


def _convert(run, out, **kwargs):
    # a copy: merging the options pops their `_delete_` marks
    return convert(run.config, run.checkpoint, out, cfg_options=copy.deepcopy(run.cfg_options),
                   dtype="float32", progress=False, **kwargs)


def _profile_warnings(caplog) -> list:
    return [r.getMessage() for r in caplog.records
            if r.name == "xtuner_llava_swap.export.run_config"]


def _chat_template(out) -> str:
    return json.loads((out / "tokenizer_config.json").read_text())["chat_template"]


def test_profile_comes_from_the_record_beside_the_checkpoint(recorded_run, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        summary = _convert(recorded_run, tmp_path / "out")
    assert summary["profile"] == "qwen2.5" and _profile_warnings(caplog) == []
    assert _chat_template(tmp_path / "out") == get_profile("qwen2.5").chat_template()
    # the record is what named it: without it the CONFIG names none
    (recorded_run.checkpoint.parent / RECORD_NAME).unlink()
    with pytest.raises(ExportError, match="names no profile .* no run record is beside"):
        _convert(recorded_run, tmp_path / "out2")


def test_profile_option_wins_over_the_record_with_a_warning(recorded_run, tmp_path, caplog):
    record = recorded_run.checkpoint.parent / RECORD_NAME
    with caplog.at_level(logging.WARNING):
        summary = _convert(recorded_run, tmp_path / "out", profile="qwen2")
    assert _profile_warnings(caplog) == [
        f"--profile qwen2 differs from LLM profile 'qwen2.5' recorded in {record}; exporting "
        "with --profile qwen2"]
    assert summary["profile"] == "qwen2"
    template = _chat_template(tmp_path / "out")  # qwen2's default system, not qwen2.5's
    assert template == get_profile("qwen2").chat_template() != get_profile("qwen2.5").chat_template()


def test_record_of_unknown_profile_or_newer_plugin_is_one_line(recorded_run, tmp_path):
    record = recorded_run.checkpoint.parent / RECORD_NAME
    content = json.loads(record.read_text())
    record.write_text(json.dumps({**content, "llm_profile": "qwen9"}))
    with pytest.raises(ExportError) as unknown:
        _convert(recorded_run, tmp_path / "out")
    assert str(unknown.value).startswith(f"profile 'qwen9' (from {record}) is not registered; "
                                         "choose one of qwen, ")
    record.write_text(json.dumps({**content, "plugin_version": "99.0"}))
    with pytest.raises(ExportError) as newer:
        _convert(recorded_run, tmp_path / "out")
    assert str(newer.value) == (f"{record}: the run was trained with xtuner-llava-swap 99.0, "
                                "newer than the installed 0.1.0; upgrade xtuner-llava-swap to "
                                "convert it")
    assert not (tmp_path / "out").exists()
