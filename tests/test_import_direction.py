"""Dependencies run one way (docs/layout.md, Dependencies): the core imports neither lm/, serving/ nor data_synthesis/.

Every .py file of the four packages is parsed with ``ast`` (nothing is imported), every import statement is
collected, wherever it stands (module level, inside a function, under ``if TYPE_CHECKING``: a lazy import that
dodges a cycle at run time is still a dependency), and the module graph is checked against the layers:

========================  =============================================================================
layer                     may import
========================  =============================================================================
core: ``deepspeech.*``    core
  less the CLI modules
``lm.*``                  core, lm, data_synthesis
``data_synthesis.*``      core, data_synthesis, lm
``serving.*``             core, lm, data_synthesis, serving
cli                       anything. The CLI modules: the ``deepspeech.cli`` package and every
                          ``deepspeech.cli.*`` module in it (one per subcommand, ``serve`` and ``stream``
                          included: no server module may import them)
========================  =============================================================================

and no module reaches itself through its imports (no cycles, of any length). An import names the deepest module
that exists: ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``; the package
``__init__`` files that Python runs on the way are not counted as edges.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("deepspeech", "lm", "serving", "data_synthesis")
CLI_PACKAGE = "deepspeech.cli"
CLI_MODULES = frozenset({CLI_PACKAGE, *(f"{CLI_PACKAGE}.{f.stem}" for f in (ROOT / "deepspeech" / "cli").glob("*.py")
                                       if f.stem != "__init__")})
ALLOWED = {
    "core": frozenset({"core"}),
    "lm": frozenset({"core", "lm", "data_synthesis"}),
    "data_synthesis": frozenset({"core", "data_synthesis", "lm"}),
    "serving": frozenset({"core", "lm", "data_synthesis", "serving"}),
    "cli": frozenset({"core", "lm", "data_synthesis", "serving", "cli"}),
}


@dataclass(frozen=True)
class Edge:
    src: str  # importing module
    dst: str  # imported module
    where: str  # "path/to/file.py:LINE" of the import statement

    def __str__(self) -> str:
        return f"{self.where}: {self.src} imports {self.dst}"


def layer(module: str) -> str:
    if module in CLI_MODULES or module.startswith(f"{CLI_PACKAGE}."):  # prefix: also any subpackage of it
        return "cli"
    top = module.split(".")[0]
    return "core" if top == "deepspeech" else top


def module_files(root: Path) -> dict[str, Path]:
    """Module name -> file, for every .py file of the packages under ``root``."""
    out = {}
    for pkg in PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = f.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _resolve(name: str, known: set[str]) -> str | None:
    """The deepest existing module along the dotted ``name`` (None outside the packages)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        cand = ".".join(parts[:n])
        if cand in known:
            return cand
    return None


def import_edges(root: Path) -> list[Edge]:
    """Every import between modules of the packages under ``root``, wherever it stands in the file."""
    files = module_files(root)
    known = set(files)
    edges: set[Edge] = set()
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        where = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the importing module's package
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join([*base, node.module] if node.module else base)
                else:
                    stem = node.module or ""
                names = [f"{stem}.{a.name}" for a in node.names]
            for name in names:
                dst = _resolve(name, known)
                if dst is not None and dst != mod:
                    edges.add(Edge(mod, dst, f"{where}:{node.lineno}"))
    return sorted(edges, key=lambda e: (e.src, int(e.where.rsplit(":", 1)[1]), e.dst))


def wrong_way(edges: Iterable[Edge]) -> list[Edge]:
    return [e for e in edges if layer(e.dst) not in ALLOWED[layer(e.src)]]


def cycles(edges: Iterable[Edge]) -> list[list[Edge]]:
    """The imports inside each strongly connected component of more than one module (Tarjan's algorithm)."""
    edges = list(edges)
    succ: dict[str, set[str]] = defaultdict(set)
    for e in edges:
        succ[e.src].add(e.dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the number of modules (a few hundred)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted({e.src for e in edges} | {e.dst for e in edges}):
        if v not in index:
            visit(v)
    return [[e for e in edges if e.src in c and e.dst in c] for c in components]


def _report(title: str, items: Iterable[object]) -> str:
    return title + "\n" + "\n".join(f"  {i}" for i in items)


def test_imports_run_one_way() -> None:
    bad = wrong_way(import_edges(ROOT))
    assert not bad, _report("imports against the layers (core <- lm, data_synthesis, serving <- cli):", bad)


def test_no_import_cycles() -> None:
    found = cycles(import_edges(ROOT))
    assert not found, "\n".join(_report(f"import cycle {i + 1}:", c) for i, c in enumerate(found))


def test_the_checks_catch_a_wrong_way_import_and_a_cycle(tmp_path: Path) -> None:
    """The checks above on a synthetic tree: a lazy core -> lm import inside a function, which also closes a cycle
    through a relative import, and an lm module importing the CLI."""
    files = {
        "deepspeech/__init__.py": "",
        "deepspeech/beam.py": "import numpy\n\n\ndef f():\n    from lm.ngram import NgramLM\n",
        "deepspeech/cli.py": "import argparse\n",
        "lm/__init__.py": "",
        "lm/ngram.py": "from . import util\n",
        "lm/util.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import deepspeech.beam\n"
                      "from deepspeech.cli import main\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    edges = import_edges(tmp_path)
    assert {str(e) for e in wrong_way(edges)} == {
        "deepspeech/beam.py:5: deepspeech.beam imports lm.ngram",
        "lm/util.py:4: lm.util imports deepspeech.cli",
    }
    (cycle,) = cycles(edges)
    assert {str(e) for e in cycle} == {
        "deepspeech/beam.py:5: deepspeech.beam imports lm.ngram",
        "lm/ngram.py:1: lm.ngram imports lm.util",
        "lm/util.py:3: lm.util imports deepspeech.beam",
    }
    assert layer("deepspeech.cli.train") == layer("deepspeech.cli") == "cli" and layer("deepspeech.parallel") == "core"
    assert {"deepspeech.cli.common", "deepspeech.cli.serve", "deepspeech.cli.lm"} <= CLI_MODULES
    assert layer("serving.server") == "serving"
