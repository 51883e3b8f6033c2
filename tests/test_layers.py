"""The shape of lab/: one folder per layer, import arrows running one way, short functions.

The layers, bottom to top, are LAYERS below (README "Architecture" says what each is for). A
module may import from its own folder and from the folders below it; an import of a folder
above, even one deferred into a function, fails here, as does a function over MAX_LINES. The
folder graph is printed (`pytest -s tests/test_layers.py`) so a change of shape can be seen.
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

LAB = Path(__file__).resolve().parents[1] / "lab"
TESTS = Path(__file__).resolve().parent

LAYERS = [  # bottom to top
    "lab.errors", "lab.version", "lab.net", "lab.images", "lab.config", "lab.model", "lab.lb",
    "lab.workload", "lab.backends", "lab.load", "lab.capture", "lab.experiment", "lab.tm",
    "lab.tm.live", "lab.ops", "lab.vm", "lab.cli",
]
MAX_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(LAB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """The deepest layer whose name prefixes `module` ("lab" itself: the bottom)."""
    found = [name for name in LAYERS if module == name or module.startswith(name + ".")]
    return max(found, key=len) if found else LAYERS[0]


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every lab import in a file, deferred ones included."""
    package = module_name(path) if path.name == "__init__.py" else \
        module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "lab":  # `from lab import lb`: each name is a module
                yield from ((node.lineno, f"lab.{a.name}") for a in node.names)
            elif base.startswith("lab."):
                yield node.lineno, base
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if a.name.startswith("lab."))


def sources() -> list[Path]:
    return sorted(LAB.rglob("*.py"))


def folder_graph() -> Counter[tuple[str, str]]:
    arrows: Counter[tuple[str, str]] = Counter()
    for path in sources():
        here = layer_of(module_name(path))
        for _, target in imports(path):
            there = layer_of(target)
            if there != here:
                arrows[here, there] += 1
    return arrows


def test_every_module_belongs_to_a_layer() -> None:
    loose = [module_name(p) for p in sources()
             if module_name(p) != "lab" and not any(
                 module_name(p) == n or module_name(p).startswith(n + ".") for n in LAYERS)]
    assert not loose, f"modules outside every layer (add a folder to LAYERS or move them): {loose}"


def test_imports_run_down_the_layers() -> None:
    arrows = folder_graph()
    print(f"\nfolder graph: {len({a for a, _ in arrows} | {b for _, b in arrows})} folders, "
          f"{len(arrows)} arrows (importer -> imported: import statements)")
    for (a, b), n in sorted(arrows.items(), key=lambda kv: (LAYERS.index(kv[0][0]), kv[0][1])):
        print(f"  {a:15} -> {b:15} {n}")
    upward = []
    for path in sources():
        here = LAYERS.index(layer_of(module_name(path)))
        for line, target in imports(path):
            if LAYERS.index(layer_of(target)) > here:
                upward.append(f"{path.relative_to(LAB.parent)}:{line} imports {target}")
    assert not upward, "imports of a layer above:\n" + "\n".join(upward)


def test_functions_fit_on_a_screen() -> None:
    long = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(LAB.parent)}:{node.lineno} "
                                f"{node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_LINES} lines:\n" + "\n".join(long)


@pytest.mark.parametrize("layer", [n for n in LAYERS if n != "lab.errors"])
def test_tests_mirror_the_layers(layer: str) -> None:
    parts = layer.split(".")[1:]
    if LAB.joinpath(*parts).with_suffix(".py").is_file():  # a one-module layer: tests/test_x.py
        assert TESTS.joinpath(f"test_{parts[-1]}.py").is_file(), f"no tests/test_{parts[-1]}.py"
        return
    folder = TESTS.joinpath(*parts)
    assert folder.is_dir() and any(folder.glob("test_*.py")), \
        f"no tests/{folder.relative_to(TESTS)}/test_*.py for {layer}"
