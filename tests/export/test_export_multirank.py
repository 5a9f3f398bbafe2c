"""Export of DeepSpeed directories written by several ranks of a real `xtuner train` run
(2-rank ZeRO-2 and ZeRO-3, 3-rank ZeRO-3 with uneven, padded partitions): the weights equal
DeepSpeed's own consolidation (``zero_to_fp32``) tensor for tensor, both formats convert
with ``--verify`` through the command line, and a directory with a missing rank file or a
rank from another run / iteration is refused with one line naming the file."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from support import requires_fixtures

from xtuner_llava_swap.checkpoint.readers import read_checkpoint
from xtuner_llava_swap.export import ExportError
from xtuner_llava_swap.export.cli import main as convert_main

RUNS = {  # id -> (session fixture, ZeRO stage, ranks)
    "zero2-2ranks": ("zero2_2rank_run", 2, 2),
    "zero3-2ranks": ("zero3_2rank_run", 3, 2),
    "zero3-3ranks": ("zero3_3rank_run", 3, 3),
}


def _cli(run, checkpoint, out, capsys, *extra) -> tuple:
    """``tools/convert_to_hf.py`` (its ``main``) on ``checkpoint``: (status, stdout, stderr)."""
    options = [f"{k}={v}" for k, v in run.cfg_options.items()]
    status = convert_main([str(run.config), str(checkpoint), str(out), "--dtype", "float32",
                           "--no-progress", *extra, "--cfg-options", *options])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _copy(checkpoint, tmp_path):
    """A copy of a checkpoint directory to damage (the session's run stays intact)."""
    target = tmp_path / checkpoint.name
    shutil.copytree(checkpoint, target)
    return target


def _rank_file(checkpoint, rank: int, kind: str):
    """Rank ``rank``'s ``model`` or ``optim`` file (bf16 runs prefix the latter ``bf16_``)."""
    found = list(checkpoint.glob(f"*zero_pp_rank_{rank}_mp_rank_00_{kind}_states.pt"))
    assert len(found) == 1, found
    return found[0]


def _earlier(run):
    """The run's save before its last one (the checkpoint hook keeps two)."""
    saves = sorted(run.checkpoint.parent.glob("iter_*.pth"), key=lambda p: int(p.stem[5:]))
    assert len(saves) >= 2 and saves[-1] == run.checkpoint
    return saves[-2]


def _assert_refused(run, checkpoint, work_dir, capsys, names, says: str) -> None:
    out = work_dir.parent / f"{work_dir.name}-llava-qwen-out"  # beside the run, never inside
    status, _, err = _cli(run, checkpoint, out, capsys)
    assert status == 1
    line = err.strip()
    assert "\n" not in line and "Traceback" not in line, err
    assert f"{names}" in line and says in line, line
    assert not out.exists() and not list(out.parent.glob(".*partial*"))


@requires_fixtures
@pytest.mark.parametrize("name", RUNS)
def test_rebuilt_weights_equal_deepspeed_consolidation(name, request):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    fixture, stage, ranks = RUNS[name]
    run = request.getfixturevalue(fixture)
    assert len(list(run.checkpoint.glob("*optim_states.pt"))) == ranks
    if stage == 3:
        assert len(list(run.checkpoint.glob("zero_pp_rank_*_model_states.pt"))) == ranks
    ours = read_checkpoint(run.checkpoint)
    assert ours.kind == f"deepspeed-zero{stage}"
    theirs = get_fp32_state_dict_from_zero_checkpoint(str(run.checkpoint.parent),
                                                      tag=run.checkpoint.name)
    assert set(ours.tensors) == set(theirs)
    assert any(".lora_A." in key for key in theirs) and "projector.model.0.weight" in theirs
    for key, value in theirs.items():
        assert torch.equal(ours.tensors[key], value.float()), key
    if ranks == 3:  # partitions of unequal use: the last rank's piece is padded
        assert any(math.prod(v.shape) % 3 for v in theirs.values())


@requires_fixtures
@pytest.mark.parametrize("fmt", ["hf", "llava"])
@pytest.mark.parametrize("name", RUNS)
def test_converts_both_formats_with_verify(name, fmt, request, tmp_path, capsys):
    run = request.getfixturevalue(RUNS[name][0])
    out = tmp_path / "llava-qwen-export"  # the official format wants "llava" and "qwen"
    status, stdout, err = _cli(run, run.checkpoint, out, capsys, "--format", fmt, "--verify")
    assert status == 0, err[-3000:]
    summary = json.loads(stdout[stdout.index("{"):])
    assert summary["checkpoint_kind"] == f"deepspeed-zero{RUNS[name][1]}"
    report = summary["verify"]
    assert report["max_abs_logit_diff"] <= report["tolerance"]
    assert report["tokens"] == report["reference_tokens"] and len(report["tokens"]) > 0
    assert (out / "config.json").is_file()


@requires_fixtures
def test_refuses_a_missing_rank_file(zero3_3rank_run, zero2_2rank_run, tmp_path, capsys):
    damaged = _copy(zero3_3rank_run.checkpoint, tmp_path / "z3")
    missing = _rank_file(damaged, 1, "optim")
    missing.unlink()
    _assert_refused(zero3_3rank_run, damaged, tmp_path / "z3", capsys, missing, "is missing")
    damaged = _copy(zero3_3rank_run.checkpoint, tmp_path / "z3-model")
    (damaged / "zero_pp_rank_2_mp_rank_00_model_states.pt").unlink()
    with pytest.raises(ExportError, match="zero_pp_rank_2_mp_rank_00_model_states.pt is missing"):
        read_checkpoint(damaged)
    damaged = _copy(zero2_2rank_run.checkpoint, tmp_path / "z2")
    (damaged / "mp_rank_00_model_states.pt").unlink()
    with pytest.raises(ExportError, match="mp_rank_00_model_states.pt is missing"):
        read_checkpoint(damaged)


@requires_fixtures
def test_refuses_ranks_of_another_iteration_or_run(zero3_2rank_run, zero3_3rank_run,
                                                   zero2_2rank_run, tmp_path, capsys):
    run = zero3_2rank_run
    earlier = _earlier(run)
    # rank 1's files copied from an earlier save of the same run
    mixed = _copy(run.checkpoint, tmp_path / "iteration")
    for file in earlier.glob("*zero_pp_rank_1_*"):
        shutil.copy(file, mixed / file.name)
    _assert_refused(run, mixed, tmp_path / "iteration", capsys, _rank_file(mixed, 1, "model"),
                    "another save")
    # only rank 1's optimizer file from the earlier save (its model states stay right)
    mixed = _copy(run.checkpoint, tmp_path / "optim-only")
    shutil.copy(_rank_file(earlier, 1, "optim"), mixed)
    with pytest.raises(ExportError, match="zero_pp_rank_1_mp_rank_00_optim_states.pt: comes "
                                          "from another save .*optimizer step"):
        read_checkpoint(mixed)
    # rank 1's files from another run (3 ranks)
    mixed = _copy(run.checkpoint, tmp_path / "run")
    for file in zero3_3rank_run.checkpoint.glob("*zero_pp_rank_1_*"):
        shutil.copy(file, mixed / file.name)
    with pytest.raises(ExportError, match="zero_pp_rank_1_mp_rank_00_model_states.pt: comes "
                                          "from another save .*world size 3 here, 2 there"):
        read_checkpoint(mixed)
    # a ZeRO-2 rank in a ZeRO-3 directory
    mixed = _copy(run.checkpoint, tmp_path / "stage")
    shutil.copy(_rank_file(zero2_2rank_run.checkpoint, 1, "optim"), mixed)
    with pytest.raises(ExportError, match="zero_pp_rank_1_mp_rank_00_optim_states.pt: comes "
                                          "from another save .*ZeRO stage 2 here, 3 there"):
        read_checkpoint(mixed)
    # ZeRO-2: rank 1's optimizer file from the earlier save
    z2 = zero2_2rank_run.checkpoint
    mixed = _copy(z2, tmp_path / "zero2")
    shutil.copy(_rank_file(_earlier(zero2_2rank_run), 1, "optim"), mixed)
    with pytest.raises(ExportError, match="zero_pp_rank_1_mp_rank_00_optim_states.pt: comes "
                                          "from another save"):
        read_checkpoint(mixed)
