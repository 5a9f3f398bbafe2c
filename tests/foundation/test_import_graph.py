"""The package's import graph has no cycles, counting imports inside functions too, and
its rooms import only the rooms before them.

Walks every module of ``xtuner_llava_swap`` with :mod:`ast` (nothing is imported): an edge
goes from a module to each package module it imports, at the top or deferred inside a
function; ``from . import name`` is an edge to the submodule ``name`` when there is one.
"""
from __future__ import annotations

import ast
from pathlib import Path

from support import REPO

PACKAGE = REPO / "xtuner_llava_swap"


def module_files() -> dict[str, Path]:
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names} & known
            found.update(submodules or {base})
    return (found & known) - {name}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imported_modules(name, path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as a path that returns to its start, or [] when there is none."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_walker_sees_deferred_and_relative_imports():
    graph = import_graph()
    assert "xtuner_llava_swap.checkpoint.readers" in graph["xtuner_llava_swap.export.convert"]
    # deferred (inside a function) and `from . import name` edges are both followed
    assert "xtuner_llava_swap.export.verify" in graph["xtuner_llava_swap.export.convert"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert not cycle, " -> ".join(cycle)


# room -> the rooms it must not import. The family, profile and tower registries come first:
# every later stage asks them. Data comes before training: training uses the data room
# (its map functions, its image preprocessing), never the other way. The export comes last:
# nothing before it imports it. The checkpoint room reads what a run left on disk, for the export
# and for swap_vision_tower (its projector check): it imports none of the stages that use it.
# The inference room comes last (its loading and tools use training, the checkpoint room and
# the export), except its core, prompt rendering and generation over built models, which
# comes right after data: the evaluation hook (training) and --verify (export) generate
# through it, so the core imports neither of them, and they import nothing else of the room.
INFERENCE_CORE = ("inference.prompt", "inference.generation")
INFERENCE_FRONT = ("inference.loading", "inference.answers", "inference.benchmarks",
                   "inference.evaluation", "inference.chat_cli", "inference.eval_cli")
MUST_NOT_IMPORT = {
    **{room: ("data", "training", "checkpoint", "export", "inference")
       for room in ("families", "profiles", "towers")},
    "data": ("training", "checkpoint", "export", "inference"),
    **{core: ("training", "checkpoint", "export", *INFERENCE_FRONT) for core in INFERENCE_CORE},
    "training": ("export", *INFERENCE_FRONT),
    "checkpoint": ("data", "training", "export", "inference"),
    "export": INFERENCE_FRONT,
}


def test_every_inference_module_is_placed():
    modules = {name.removeprefix("xtuner_llava_swap.") for name in module_files()
               if name.startswith("xtuner_llava_swap.inference.")}
    assert modules == set(INFERENCE_CORE + INFERENCE_FRONT)


def in_room(module: str, room: str) -> bool:
    prefix = f"xtuner_llava_swap.{room}"
    return module == prefix or module.startswith(prefix + ".")


def backward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``"module -> target"`` for each import of a room that ``MUST_NOT_IMPORT`` forbids."""
    return [f"{module} -> {target}" for room, forbidden in MUST_NOT_IMPORT.items()
            for module in sorted(graph) if in_room(module, room)
            for target in sorted(graph[module]) if any(in_room(target, r) for r in forbidden)]


def test_the_room_check_sees_a_backward_import():
    graph = {"xtuner_llava_swap.checkpoint.readers": {"xtuner_llava_swap.export.run_config"},
             "xtuner_llava_swap.export.run_config": {"xtuner_llava_swap.checkpoint.readers"}}
    assert backward_imports(graph) == [
        "xtuner_llava_swap.checkpoint.readers -> xtuner_llava_swap.export.run_config"]


def test_rooms_import_no_room_they_must_not():
    backwards = backward_imports(import_graph())
    assert not backwards, "\n".join(backwards)
