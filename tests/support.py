"""Helpers shared by the test modules: fixture skips and running `xtuner train`."""
from __future__ import annotations

import os
import shutil
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

# The newer stack (transformers 4.57, bitsandbytes 0.50: nf4 on a CPU), built by `make setup`.
TF457_PYTHON = REPO / ".venv-tf457" / "bin" / "python"
requires_tf457 = pytest.mark.skipif(
    not TF457_PYTHON.exists(),
    reason=".venv-tf457 is absent; `make setup` builds it (tests/export/make_tf457_venv.sh)")

# transformers 5 (no xtuner: it does not import there), built by `make setup`: the `hf`
# export is loaded in it as a user of the newest transformers loads it.
TF5_PYTHON = REPO / ".venv-tf5" / "bin" / "python"
requires_tf5 = pytest.mark.skipif(
    not TF5_PYTHON.exists(),
    reason=".venv-tf5 is absent; `make setup` builds it (tests/export/make_tf5_venv.sh)")


def hub_cache(root: Path, hub_id: str, folder: Path) -> Path:
    """A Hugging Face hub cache at ``root`` holding ``folder`` as ``hub_id`` (a download's
    layout: snapshot + refs/main), for loaders that take a tower by hub id; returns root."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{hub_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return root


def config_with_lines(config: Path, folder: Path, name: str, lines: str) -> Path:
    """A copy of a shipped ``config`` with ``lines`` appended, written into ``folder`` beside
    a copy of the stage bases it reads (its ``read_base`` import of ``._base_`` is relative)."""
    shutil.copytree(config.parent / "_base_", folder / "_base_", dirs_exist_ok=True)
    target = folder / name
    target.write_text(config.read_text() + "\n\n" + lines)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_env(deepspeed: bool = False, nproc: int = 1,
              python: str | Path = sys.executable) -> dict:
    """Environment of a training subprocess: ``python``'s venv first on PATH; for ``nproc`` > 1
    the variables ``xtuner train`` reads to launch torchrun (``NPROC_PER_NODE``, a free
    ``PORT``), else the one-rank DeepSpeed variables when ``deepspeed``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NPROC_PER_NODE",
                        "NNODES", "NODE_RANK", "PORT", "ADDR", "MASTER_ADDR", "MASTER_PORT")}
    env["PATH"] = f"{Path(python).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # DeepSpeed JIT-compiles its CPU communication op on first use; a cache of that venv's
    # own, so that environments built elsewhere do not invalidate it (one build per venv)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(python).parent.parent / "torch_extensions"))
    if nproc > 1:
        env.update(NPROC_PER_NODE=str(nproc), PORT=str(free_port()))
    elif deepspeed:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    return env


def run_train(config: str | Path, work_dir: Path, cfg_options: dict, *, entry: str = "xtuner",
              extra_args: tuple = (), deepspeed: str | None = None, nproc: int = 1,
              timeout: int = 900,
              python: str | Path = sys.executable) -> subprocess.CompletedProcess:
    """Run a training through ``xtuner train`` (entry='xtuner') or ``tools/train.py``, in the
    environment of ``python`` (default: this one; e.g. ``.venv-tf457/bin/python``).

    With ``nproc`` > 1 it runs on that many ranks (gloo on a CPU): ``xtuner train`` launches
    torchrun itself (``NPROC_PER_NODE``), ``tools/train.py`` is started by torchrun. Both
    return the real exit status (compat fixes ``xtuner train``'s). Output goes to
    ``work_dir/test_stdout.log``.
    """
    options = [f"{k}={'None' if v is None else v}" for k, v in cfg_options.items()]
    env = train_env(bool(deepspeed), nproc, python)
    if entry == "xtuner":
        head = ["xtuner", "train"]
    elif nproc > 1:
        head = [str(python), "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                "--master_addr=127.0.0.1", f"--master_port={env['PORT']}",
                str(REPO / "tools" / "train.py")]
    else:
        head = [str(python), str(REPO / "tools" / "train.py")]
    cmd = [*head, str(config), "--work-dir", str(work_dir), *extra_args]
    if deepspeed:
        cmd += ["--deepspeed", deepspeed]
    cmd += ["--cfg-options", *options]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    (work_dir / "test_stdout.log").parent.mkdir(parents=True, exist_ok=True)
    (work_dir / "test_stdout.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    return proc
