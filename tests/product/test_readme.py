"""The front page: short enough to read in five minutes, every link resolving, and every
command it shows valid (the subcommand exists, it accepts each option) and run by a test or
the demo (the program, subcommand and each option appear in what the tests or
``tools/demo.py`` run)."""
from __future__ import annotations

import configparser
import functools
import re
import shlex
import subprocess
import sys

import pytest

from support import REPO
from xtuner_llava_swap.commands.main import COMMANDS

README = REPO / "README.md"
MAX_LINES = 250
# what runs commands: the tests (their command lines are lists of quoted words) and the demo
RUNNERS = sorted((REPO / "tests").rglob("*.py")) + [REPO / "tools" / "demo.py"]


def readme_commands() -> list[str]:
    """Each command of the README: the lines of its ``bash`` blocks (comments dropped,
    continuations joined) and the inline code spans that start with a program."""
    text = README.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        commands += [line.split("  #")[0].strip() for line in joined.splitlines()
                     if line.strip() and not line.lstrip().startswith("#")]
    commands += [span for span in re.findall(r"`([^`\n]+)`", text)
                 if span.split()[0] in ("xtuner-llava-swap", "xtuner", "make", "pip")]
    return commands


def options(words: list[str]) -> list[str]:
    return [w.split("=")[0] for w in words if w.startswith("--")]


@functools.lru_cache(maxsize=None)
def help_text(*argv: str) -> str:
    """``xtuner-llava-swap ARGV --help``'s output (each subcommand's help is asked once)."""
    shown = subprocess.run([sys.executable, "-m", "xtuner_llava_swap", *argv, "--help"],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    return shown.stdout


@functools.lru_cache(maxsize=None)
def runner_text() -> str:
    return "\n".join(p.read_text() for p in RUNNERS)


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


def test_every_relative_link_resolves():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    local = [link for link in links if "://" not in link]
    assert local, "the README links to docs/"
    missing = [link for link in local if not (REPO / link).exists()]
    assert not missing, missing


def test_the_readme_shows_the_users_path():
    commands = readme_commands()
    shown = {" ".join(shlex.split(c)[:2]) for c in commands}
    for step in ("make demo", "make test", "xtuner-llava-swap copy-cfg", "xtuner train",
                 "xtuner-llava-swap chat", "xtuner-llava-swap eval", "xtuner-llava-swap convert"):
        assert step in shown, step


@pytest.mark.parametrize("command", readme_commands())
def test_every_command_is_valid_and_run_by_a_test_or_the_demo(command):
    words = shlex.split(command)
    program, rest = words[0], words[1:]
    ran = runner_text()
    if program == "make":
        targets = re.findall(r"^([a-z-]+):", (REPO / "Makefile").read_text(), re.M)
        assert rest and all(t in targets for t in rest), command
        assert "make test" in (REPO / ".ci" / "run").read_text() or rest == ["demo"]
    elif program == "pip":
        assert rest[0] == "install"
        package, extra = re.fullmatch(r"([\w-]+)(?:\[([\w,]+)\])?", rest[1]).groups()
        cfg = configparser.ConfigParser()
        cfg.read(REPO / "setup.cfg")
        assert package == cfg["metadata"]["name"]
        extras = cfg["options.extras_require"]
        assert all(e in extras for e in (extra or "").split(",") if e), command
        assert '"install", "--no-deps"' in ran  # the installed-wheel test installs the wheel
    elif program == "xtuner":
        assert rest[0] == "train", command
        assert '"xtuner", "train"' in ran, command
        for option in options(rest):
            assert f'"{option}"' in ran, (command, option)
    else:
        assert program == "xtuner-llava-swap", command
        subcommand = rest[0]
        assert subcommand in COMMANDS, command
        assert f'"{subcommand}"' in ran, (command, "no test or the demo runs this subcommand")
        shown = help_text(subcommand, *(["check"] if rest[1:2] == ["check"] else []))
        for option in options(rest):
            assert option in shown, (command, option, "not an option of this subcommand")
            assert f'"{option}"' in ran, (command, option, "no test or the demo passes it")
