"""seqrl's import graph, read from the source: no cycles, `nn` and `core` stand alone, layers hold.

The graph has an edge A -> B for every `import` / `from ... import` in module A of a seqrl module
B, at module level and inside functions alike (a function-level import is still a dependency),
but not inside `if TYPE_CHECKING:` blocks (those never run). `from seqrl.x import y` is an edge to
`seqrl.x.y` when that is a module, else to `seqrl.x`. The implicit import of a module's parent
package is *not* an edge: `seqrl.nn.gpt` does not depend on `seqrl.nn` just by living in it.

Layers, lowest first; a module may import its own rank or lower, never higher:

    0  seqrl.core, seqrl.config, seqrl.checkpoint
    1  seqrl.nn.*
    2  seqrl.buffers.*, seqrl.envs.*
    3  seqrl.agents.*
    4  seqrl.train.*, seqrl.export, seqrl.export_graph, seqrl.runtime, seqrl.sweep, seqrl.collect,
       seqrl.datasets_catalog
    5  seqrl.cli, seqrl.demo, seqrl.__main__, seqrl

and on top of that `seqrl.nn.*` imports nothing of seqrl outside `seqrl.nn`, and `seqrl.core`
imports no seqrl module at all.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "seqrl"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("seqrl.core", "seqrl.config", "seqrl.checkpoint"),
    ("seqrl.nn.*",),
    ("seqrl.buffers.*", "seqrl.envs.*"),
    ("seqrl.agents.*",),
    (
        "seqrl.train.*",
        "seqrl.export",
        "seqrl.export_graph",
        "seqrl.runtime",
        "seqrl.collect",
        "seqrl.datasets_catalog",
        "seqrl.sweep",
    ),
    ("seqrl.cli", "seqrl.demo", "seqrl.__main__", "seqrl"),
)
"""Rank r = LAYERS[r]; `pkg.*` is the package `pkg` and every module below it."""

Graph = dict[str, set[str]]


# --------------------------------------------------------------------------------- the graph


def module_name(path: str) -> str:
    """`seqrl/nn/gpt.py` -> `seqrl.nn.gpt`; `seqrl/nn/__init__.py` -> `seqrl.nn`."""
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the `else:` branch does run
            continue
        stack.extend(ast.iter_child_nodes(node))
    return found


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` reads from (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_ours(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def build_graph(sources: dict[str, str]) -> Graph:
    """Import graph of the modules in `sources` (repository-relative path -> source text)."""
    modules = {module_name(path): path for path in sources}
    graph: Graph = {}
    for module, path in modules.items():
        is_package = path.endswith("__init__.py")
        targets: set[str] = set()
        for node in _import_nodes(ast.parse(sources[path], filename=path)):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = _absolute(module, is_package, node)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in modules else base)
        graph[module] = {t for t in targets if _is_ours(t) and t != module}
    return graph


def read_sources(root: Path = REPO) -> dict[str, str]:
    """Every `seqrl/**/*.py` under `root`, by repository-relative path."""
    return {
        path.relative_to(root).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted((root / PACKAGE).rglob("*.py"))
    }


# --------------------------------------------------------------------------------- the rules


def find_cycles(graph: Graph) -> list[list[str]]:
    """One cycle (first module repeated at the end) per strongly connected component of > 1."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_through(graph, set(component)) for component in components]


def _cycle_through(graph: Graph, component: set[str]) -> list[str]:
    """A shortest cycle from the first module of a strongly connected component back to it."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    return paths[node] + [start]
                if target not in paths:
                    paths[target] = paths[node] + [target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def rank_of(module: str) -> int | None:
    for rank, patterns in enumerate(LAYERS):
        for pattern in patterns:
            package = pattern.removesuffix(".*")
            if module == package or (pattern.endswith(".*") and module.startswith(package + ".")):
                return rank
    return None


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def rule_violations(graph: Graph) -> list[str]:
    """Every broken rule of the module docstring, as `importer -> imported: why`."""
    problems = [
        f"{module}: not in any layer; add it to LAYERS in tests/test_import_graph.py"
        for module in sorted(graph)
        if rank_of(module) is None
    ]
    for module in sorted(graph):
        for target in sorted(graph[module]):
            edge = f"{module} -> {target}"
            if module == "seqrl.core":
                problems.append(f"{edge}: seqrl.core imports no seqrl module")
            elif _in(module, "seqrl.nn") and not _in(target, "seqrl.nn"):
                problems.append(f"{edge}: seqrl.nn imports nothing of seqrl outside seqrl.nn")
            source_rank, target_rank = rank_of(module), rank_of(target)
            if source_rank is not None and target_rank is not None and target_rank > source_rank:
                problems.append(f"{edge}: rank {source_rank} imports rank {target_rank}")
    return problems


def describe_cycles(cycles: list[list[str]]) -> str:
    return "\n".join(" -> ".join(cycle) for cycle in cycles)


# --------------------------------------------------------------------------------- the tests


def test_seqrl_has_no_import_cycles() -> None:
    cycles = find_cycles(build_graph(read_sources()))
    assert not cycles, f"import cycles in seqrl:\n{describe_cycles(cycles)}"


def test_seqrl_imports_respect_the_layers() -> None:
    problems = rule_violations(build_graph(read_sources()))
    assert not problems, "import rules broken:\n" + "\n".join(problems)


SYNTHETIC = {
    "seqrl/__init__.py": "",
    "seqrl/core.py": "import numpy\n",
    "seqrl/nn/__init__.py": "from seqrl.nn.gpt import GPT\n",
    "seqrl/nn/gpt.py": "from .base import State\n",
    "seqrl/nn/base.py": (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from seqrl.buffers import EpisodeStore\n"
        "def helper():\n"
        "    from .. import core\n"
    ),
    "seqrl/buffers/__init__.py": "",
    "seqrl/buffers/episode_store.py": "from seqrl.buffers import minari_io\n",
    "seqrl/buffers/minari_io.py": "def load():\n    import seqrl.buffers.episode_store\n",
}


def test_graph_resolves_relative_function_level_and_submodule_imports() -> None:
    graph = build_graph(SYNTHETIC)
    assert graph["seqrl.nn.gpt"] == {"seqrl.nn.base"}  # relative, resolved
    assert graph["seqrl.nn"] == {"seqrl.nn.gpt"}  # no implicit edge back to the parent package
    assert graph["seqrl.nn.base"] == {"seqrl.core"}  # inside a function; TYPE_CHECKING skipped
    assert graph["seqrl.buffers.episode_store"] == {"seqrl.buffers.minari_io"}  # a submodule
    assert graph["seqrl.core"] == set()  # third-party imports are not edges


def test_cycle_check_reports_a_cycle_in_synthetic_sources() -> None:
    cycles = find_cycles(build_graph(SYNTHETIC))
    assert describe_cycles(cycles) == (
        "seqrl.buffers.episode_store -> seqrl.buffers.minari_io -> seqrl.buffers.episode_store"
    )
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_rule_check_reports_nn_core_and_layer_violations_in_synthetic_sources() -> None:
    graph = build_graph(SYNTHETIC)
    assert rule_violations(graph) == [
        "seqrl.nn.base -> seqrl.core: seqrl.nn imports nothing of seqrl outside seqrl.nn"
    ]
    graph["seqrl.core"] = {"seqrl.nn"}
    graph["seqrl.buffers.minari_io"] |= {"seqrl.cli"}
    graph["seqrl.tools"] = set()
    assert rule_violations(graph) == [
        "seqrl.tools: not in any layer; add it to LAYERS in tests/test_import_graph.py",
        "seqrl.buffers.minari_io -> seqrl.cli: rank 2 imports rank 5",
        "seqrl.core -> seqrl.nn: seqrl.core imports no seqrl module",
        "seqrl.core -> seqrl.nn: rank 0 imports rank 1",
        "seqrl.nn.base -> seqrl.core: seqrl.nn imports nothing of seqrl outside seqrl.nn",
    ]


@pytest.mark.parametrize(
    ("module", "rank"),
    [("seqrl", 5), ("seqrl.nn", 1), ("seqrl.nn.gpt", 1), ("seqrl.export", 4), ("seqrl.nnx", None)],
)
def test_layers_match_packages_and_their_modules(module: str, rank: int | None) -> None:
    assert rank_of(module) == rank


def test_buffers_rollout_samplers_and_nn_do_not_import_heavy_dependencies() -> None:
    heavy = ("gymnasium", "h5py", "minari", "tensorboard")
    code = (
        "import seqrl.buffers.rollout, seqrl.buffers.samplers, seqrl.nn, sys; "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"imported: {result.stdout.strip()}"
