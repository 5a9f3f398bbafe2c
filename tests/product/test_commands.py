"""``xtuner-llava-swap SUBCOMMAND``: every subcommand's help shows an example, list-cfg and
copy-cfg on the shipped configs (a copy loads as the original does, nothing overwritten
without --force), the dispatch of subcommands whose module is not installed, and
``python -m xtuner_llava_swap`` as the same command."""
from __future__ import annotations

import subprocess
import sys

import pytest
from mmengine.config import Config

from support import REPO
from xtuner_llava_swap.commands import main as command
from xtuner_llava_swap.commands.shipped_configs import configs_dir, copy_config

SHIPPED = sorted(p.stem for p in (REPO / "configs").glob("*.py"))


def run(argv, capsys) -> tuple[int, str, str]:
    try:
        status = command.main([str(a) for a in argv])
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("name", list(command.COMMANDS))
def test_every_subcommand_help_lists_an_example(name, capsys):
    status, out, err = run([name, "--help"], capsys)
    if command.load(name) is None:  # chat/eval before the inference room is installed
        assert (status, err.strip()) == (2, f"xtuner-llava-swap {name}: not available in this "
                                            f"version (it needs {command.COMMANDS[name].module}, "
                                            "which this installation does not have)")
        return
    assert status == 0, err
    assert out.startswith(f"usage: xtuner-llava-swap {name}")
    assert "example" in out and f"xtuner-llava-swap {name}" in out.split("example")[1]


def test_overview_and_unknown_subcommand(capsys):
    status, out, _ = run(["--help"], capsys)
    assert status == 0 and all(f"  {name} " in out for name in command.COMMANDS)
    assert run(["copy-cgf"], capsys)[::2] == (
        2, "xtuner-llava-swap: unknown subcommand 'copy-cgf' (did you mean copy-cfg?); "
           "`xtuner-llava-swap --help` lists them\n")


def test_a_missing_dependency_inside_a_subcommand_is_not_hidden(tmp_path, monkeypatch):
    (tmp_path / "needs_more.py").write_text("import no_such_dependency_here\n")
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.setitem(command.COMMANDS, "x", command.Command("needs_more", "main", "", ""))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_here"):
        command.load("x")
    monkeypatch.setitem(command.COMMANDS, "y", command.Command("no_such_module.cli", "main", "", ""))
    assert command.load("y") is None


def test_list_cfg_lists_the_shipped_leaves(capsys):
    assert configs_dir() == REPO / "configs"  # a checkout reads its configs/
    status, out, _ = run(["list-cfg"], capsys)
    assert status == 0 and out.split() == SHIPPED
    assert run(["list-cfg", "-p", "siglip"], capsys)[1].split() == [
        n for n in SHIPPED if "siglip" in n]


def load_outcome(path):
    try:
        return Config.fromfile(path).to_dict()
    except Exception as err:  # e.g. Qwen3 configs on transformers < 4.51: the same refusal
        return f"{type(err).__name__}: {err}"


def test_a_copy_loads_as_the_shipped_config_does(tmp_path):
    for name in SHIPPED:
        written = copy_config(name, tmp_path / "copies")
        assert written[0] == tmp_path / "copies" / f"{name}.py"
        copied, original = load_outcome(written[0]), load_outcome(REPO / "configs" / f"{name}.py")
        assert copied == original, name
    assert sorted(p.name for p in (tmp_path / "copies" / "_base_").iterdir()) == [
        "llava_pretrain.py", "llava_qlora_finetune.py"]


def test_copy_cfg_never_overwrites_without_force(tmp_path, capsys):
    name = "llava_qwen7b_qlora"
    target = tmp_path / "mine.py"
    assert run(["copy-cfg", name, target], capsys)[0] == 0
    assert run(["copy-cfg", name, target], capsys)[1].endswith("its bases\n")  # same text: kept
    target.write_text(target.read_text() + "\nlr = 1e-4\n")
    status, _, err = run(["copy-cfg", name, target], capsys)
    assert (status, err) == (1, f"error: {target} exists and differs from the shipped {name}.py: "
                                "pass --force to replace it, or choose another DEST\n")
    assert target.read_text().endswith("lr = 1e-4\n")
    base = tmp_path / "_base_" / "llava_pretrain.py"
    base.write_text("# my own base\n")
    assert run(["copy-cfg", name, target], capsys)[0] == 1 and base.read_text() == "# my own base\n"
    assert run(["copy-cfg", name, target, "--force"], capsys)[0] == 0
    assert target.read_bytes() == (REPO / "configs" / f"{name}.py").read_bytes()
    assert base.read_bytes() == (REPO / "configs" / "_base_" / "llava_pretrain.py").read_bytes()
    status, _, err = run(["copy-cfg", "llava_qwen25_qlora", tmp_path], capsys)
    assert status == 1 and err.startswith("error: no shipped config 'llava_qwen25_qlora': did "
                                          "you mean ")


def test_python_dash_m_is_the_same_command():
    proc = subprocess.run([sys.executable, "-m", "xtuner_llava_swap", "list-cfg"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == SHIPPED
