"""Helpers shared by the test modules: fixture skips and running `xtuner train`."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from xtuner_llava_swap.testing.tiny import fixtures_dir

REPO = Path(__file__).resolve().parents[1]
FIXTURES = fixtures_dir()

requires_fixtures = pytest.mark.skipif(
    FIXTURES is None,
    reason="../shared/fixtures is absent (a fresh clone without the shared folder): "
           "this test needs the real tokenizers/samples")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_env(deepspeed: bool = False) -> dict:
    """Environment of a training subprocess: this venv first on PATH; one-rank DeepSpeed vars."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if deepspeed:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    return env


def run_train(config: str | Path, work_dir: Path, cfg_options: dict, *, entry: str = "xtuner",
              extra_args: tuple = (), deepspeed: str | None = None,
              timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a training through ``xtuner train`` (entry='xtuner') or ``tools/train.py``.

    ``xtuner train`` always exits 0, so success is judged by the caller from the files it
    wrote; ``tools/train.py`` returns the real exit status.
    """
    options = [f"{k}={'None' if v is None else v}" for k, v in cfg_options.items()]
    head = (["xtuner", "train"] if entry == "xtuner"
            else [sys.executable, str(REPO / "tools" / "train.py")])
    cmd = [*head, str(config), "--work-dir", str(work_dir), *extra_args]
    if deepspeed:
        cmd += ["--deepspeed", deepspeed]
    cmd += ["--cfg-options", *options]
    proc = subprocess.run(cmd, cwd=REPO, env=train_env(bool(deepspeed)), capture_output=True,
                          text=True, timeout=timeout)
    (work_dir / "test_stdout.log").parent.mkdir(parents=True, exist_ok=True)
    (work_dir / "test_stdout.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    return proc
