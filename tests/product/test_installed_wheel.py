"""The installed product, as a pip user gets it: the wheel built from this checkout, installed
without ``-e`` into a fresh virtual environment outside the repository, run from an empty
folder with ``PYTHONPATH`` unset.

The new environment has the same pinned stack without downloading it again: a ``.pth``
line puts the test environment's site-packages after its own (only that folder: the
``.pth`` files there, the editable install of this checkout among them, are not read).
Every Python process started in it (``xtuner train`` and the training process it spawns,
each ``xtuner-llava-swap`` subcommand) writes the files of the modules it imported on exit
(``_module_audit.pth``, a test instrument of this environment only); none may come from the
checkout, and the package's must come from the environment's own site-packages.

One module-scoped environment serves every test: build, install, ``copy-cfg`` a shipped
config, ``xtuner train`` it on the tiny parts, ``convert --verify`` the checkpoint next to
it in the work dir, ``swap_llm`` on the config the run dumped, ``chat`` and ``eval``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from support import REPO, train_env
from xtuner_llava_swap.testing.tiny import TinyLLaVA, fixtures_dir

CONFIG = "llava_qwen2_5_7b_instruct_qlora"
# what a clone holds that is no source of the build
NOT_SOURCE = shutil.ignore_patterns(".venv*", ".git", ".whl", ".gl", ".ci", "work_dirs",
                                    "demo_output", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache")
AUDIT = '''"""Test instrument: on exit, write the files of the imported modules (tests/product)."""
import atexit, json, os, sys


def _write():
    folder = os.environ.get("PRODUCT_AUDIT_DIR")
    if folder:
        files = {n: getattr(m, "__file__", None) for n, m in list(sys.modules.items())}
        with open(os.path.join(folder, f"{os.getpid()}.json"), "w") as f:
            json.dump({"argv": sys.argv, "path": sys.path, "files": files}, f)


atexit.register(_write)
'''
XTUNER_SCRIPT = """#!{python}
import sys
from xtuner.entry_point import cli
sys.exit(cli())
"""


class Product:
    """The installed environment and an empty folder to work in."""

    def __init__(self, root: Path):
        self.root = root
        self.venv = root / "venv"
        self.bin = self.venv / "bin"
        self.home = root / "empty"
        self.audit = root / "audit"
        self.env = {k: v for k, v in train_env(python=self.bin / "python").items()
                    if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        self.env["PRODUCT_AUDIT_DIR"] = str(self.audit)

    def site_packages(self) -> Path:
        return Path(self.run("python", "-c", "import sysconfig; "
                             "print(sysconfig.get_paths()['purelib'])").stdout.strip())

    def run(self, program: str, *args, timeout: int = 600, check: bool = True):
        proc = subprocess.run([str(self.bin / program), *map(str, args)], cwd=self.home,
                              env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{program} {' '.join(map(str, args))} exited "
                                 f"{proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc


def options_args(options: dict) -> list[str]:
    return [f"{k}={'None' if v is None else v}" for k, v in options.items()]


@pytest.fixture(scope="module")
def product(tmp_path_factory) -> Product:
    root = tmp_path_factory.mktemp("product")
    assert not root.resolve().is_relative_to(REPO.resolve())
    source = root / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE, symlinks=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(root / "wheel"), str(source)],
                   check=True, timeout=300, capture_output=True)
    wheel, = (root / "wheel").glob("xtuner_llava_swap-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")],
                   check=True, timeout=120)
    found = Product(root)
    found.home.mkdir()
    found.audit.mkdir()
    site = found.site_packages()
    (site / "_pinned_stack.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (site / "_module_audit.py").write_text(AUDIT)
    (site / "_module_audit.pth").write_text("import _module_audit\n")
    subprocess.run([*pip, "--python", str(found.bin / "python"), "install", "--no-deps",
                    "--no-index", "-q", str(wheel)], check=True, timeout=300, capture_output=True)
    # the `xtuner` command, as installing xtuner into this environment writes it
    (found.bin / "xtuner").write_text(XTUNER_SCRIPT.format(python=found.bin / "python"))
    (found.bin / "xtuner").chmod(0o755)
    return found


def test_the_package_is_the_wheels_and_the_old_import_works(product):
    site = product.site_packages()
    proc = product.run("python", "-c", (
        "import json, sys, xtuner_llava_swap\n"
        "from xtuner_llava_swap.configs import swap_llm\n"
        "print(json.dumps([xtuner_llava_swap.__file__, swap_llm.__module__, sys.path]))"))
    package, module, path = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(package) == site / "xtuner_llava_swap" / "__init__.py"
    assert module == "xtuner_llava_swap.training.configs"
    assert str(REPO) not in path and str(REPO.resolve()) not in path


def test_copy_cfg_train_convert_chat_eval(product, tiny_parts):
    home = product.home
    # the command and its subcommands
    listed = product.run("xtuner-llava-swap", "list-cfg").stdout.split()
    assert CONFIG in listed and "llava_qwen7b_qlora" in listed and "_base_" not in listed
    assert "wrote" in product.run("xtuner-llava-swap", "install-startup").stdout
    assert product.run("xtuner-llava-swap-convert", "--help").stdout.startswith(
        "usage: xtuner-llava-swap-convert ")
    copied = product.run("xtuner-llava-swap", "copy-cfg", CONFIG, "my_run").stdout.split("\n")
    assert copied[:3] == [f"wrote my_run/{CONFIG}.py", "wrote my_run/_base_/llava_pretrain.py",
                          "wrote my_run/_base_/llava_qlora_finetune.py"]
    shipped = product.site_packages() / "xtuner_llava_swap" / "shipped_configs"
    assert (home / "my_run" / f"{CONFIG}.py").read_text() == (shipped / f"{CONFIG}.py").read_text()
    assert (shipped / f"{CONFIG}.py").read_text() == (REPO / "configs" / f"{CONFIG}.py").read_text()

    # xtuner train the copy on the tiny parts (CPU), from the empty folder
    pretrain, finetune, images = tiny_parts("data")
    tiny = TinyLLaVA("qwen2", tiny_parts("qwen2"), tiny_parts("clip"), pretrain, finetune,
                     images, uses_real_tokenizer=fixtures_dir() is not None)
    samples = json.loads(finetune.read_text())
    small = home / "small.json"
    small.write_text(json.dumps([s for s in samples if "image" in s][:4]))
    options = tiny.cfg_options(**{"data_path": small, "pretrained_pth": None,
                                  "train_dataloader.sampler.per_device_batch_size": 2,
                                  "train_cfg.max_epochs": 1})
    work_dir = Path("work_dirs") / "my_run"
    product.run("xtuner", "train", f"my_run/{CONFIG}.py", "--work-dir", work_dir,
                "--cfg-options", *options_args(options))
    checkpoint = Path((home / work_dir / "last_checkpoint").read_text().strip())
    assert checkpoint.parent == home / work_dir and checkpoint.name == "iter_2.pth"

    # convert, next to the checkpoint inside the work dir, verified against the run
    out = work_dir / "iter_2_hf"
    convert_options = {k: v for k, v in options.items() if not k.startswith(
        ("train_dataloader", "param_scheduler", "custom_hooks", "randomness", "train_cfg"))}
    proc = product.run("xtuner-llava-swap", "convert", f"my_run/{CONFIG}.py",
                       checkpoint, out, "--verify", "--dtype", "float32", "--no-progress",
                       "--cfg-options", *options_args(convert_options))
    summary = json.loads(proc.stdout[proc.stdout.index('{\n  "out_dir"'):])
    assert summary["out_dir"] == str(home / out) and summary["profile"] == "qwen2.5"
    verified = summary["verify"]["tokens"]
    assert verified == summary["verify"]["reference_tokens"] and verified
    assert (home / out / "config.json").is_file()
    assert product.run("xtuner-llava-swap", "convert", "check", out).returncode == 0

    # swap_llm on the config the run dumped into its work dir: dumps and loads again
    proc = product.run("python", "-c", (
        "from mmengine.config import Config\n"
        "from xtuner_llava_swap.configs import swap_llm\n"
        f"cfg = Config.fromfile('{work_dir / CONFIG}.py')\n"
        "swap_llm(cfg, 'qwen2', 'Qwen/Qwen2-7B-Instruct')\n"
        "cfg.dump('swapped.py')\n"
        "print(Config.fromfile('swapped.py').tokenizer.type)"))
    assert proc.stdout.strip().splitlines()[-1] == (
        "xtuner_llava_swap.training.tokenizers.build_tokenizer")

    # chat one-shot with the run itself, and eval of the run on a small VQA set compared with
    # its export (the README's steps 3 and 4)
    image = next(p for p in sorted(images.rglob("*")) if p.is_file())
    run = ("--config", f"my_run/{CONFIG}.py", "--cfg-options", *options_args(convert_options))
    product.run("xtuner-llava-swap", "chat", checkpoint, *run, "--image", image,
                "--prompt", "What is in the picture?", "--max-new-tokens", "4")
    vqa = home / "vqa.jsonl"
    vqa.write_text("".join(json.dumps({"image": str(image), "question": q, "answer": a}) + "\n"
                           for q, a in (("What colour is it?", "red"), ("Is it a cat?", "no"))))
    product.run("xtuner-llava-swap", "eval", checkpoint, *run, "--data", vqa,
                "--work-dir", "eval_out", "--max-new-tokens", "4", "--no-progress",
                "--compare", out)
    result = json.loads((home / "eval_out" / "result.json").read_text())
    assert result["n_items"] == 2 and result["n_scored"] == 2
    assert result["compare"][0]["identical_share"] == 1.0

    # nothing any of these processes imported came from the checkout
    site = product.site_packages()
    audits = [json.loads(p.read_text()) for p in product.audit.glob("*.json")]
    assert any(a["argv"][0].endswith("xtuner/tools/train.py") for a in audits)
    assert any(a["argv"][0] == "xtuner-llava-swap convert" for a in audits)
    venvs = [p.resolve() for p in REPO.glob(".venv*")]  # the pinned stack, not the checkout
    for audit in audits:
        for name, file in audit["files"].items():
            if not file or not os.path.isabs(file):  # e.g. torch's '_ops.py' namespaces
                continue
            path = Path(file).resolve()
            if name.split(".")[0] in ("xtuner_llava_swap", "xtuner_llava_swap_startup"):
                assert path.is_relative_to(site), (audit["argv"], name, file)
            inside = path.is_relative_to(REPO.resolve())
            assert not inside or any(path.is_relative_to(v) for v in venvs), (audit["argv"], file)
        for entry in audit["path"]:
            path = Path(entry or product.home).resolve()
            inside = path.is_relative_to(REPO.resolve())
            assert not inside or any(path.is_relative_to(v) for v in venvs), (audit["argv"], entry)
