"""The shape of ``src/detserve``: no import cycles, no upward arrows, one concept a module.

The import graph is built from the source with ``ast``, so nothing is imported to check it.
Every ``import detserve...`` and ``from detserve... import ...`` counts, at module level or inside
a function (a late import is still a dependency). ``from detserve.x import y`` is an arrow to
``detserve.x.y`` when that is a module and to ``detserve.x`` otherwise, so a package's
``__init__`` imports what it re-exports. Importing ``detserve.x.y`` also runs the packages above
it; those implicit arrows are not counted, or every package re-exporting its own modules would
be a cycle. The layering: the data flows one way, profile -> pins -> container -> requests -> run
log -> report; evaluation depends on run logs and the runtime on neither; the CLI is a skin over
the core.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

from .committed import REPO_ROOT

PACKAGE_DIR = REPO_ROOT / "src" / "detserve"
MAX_LINES = 450
#: the words a module's docstring must hold to be longer than MAX_LINES
LONG_MODULE_REASON = "over 450 lines because"
#: modules over MAX_LINES whose split is under way elsewhere, each with why it is not done here;
#: an entry is refused once its module is short enough, so the list only shrinks.
KNOWN_LONG_MODULES: Mapping[str, str] = {}

#: (importer prefix, imported prefix, why the arrow is forbidden)
FORBIDDEN: tuple[tuple[str, str, str], ...] = (
    ("detserve.runtime", "detserve.evaluation", "the runtime depends on neither evaluation"),
    ("detserve.runtime", "detserve.runlog", "nor on run logs"),
    ("detserve.runtime", "detserve.sampling", "sampling drives the runtime, not the reverse"),
    ("detserve.runtime", "detserve.replay_plan", "replay drives the runtime, not the reverse"),
    ("detserve.runtime", "detserve.cli", "the CLI is a skin over the core"),
    ("detserve.runlog", "detserve.runtime", "a run log is a format, below the runtime"),
    ("detserve.runlog", "detserve.evaluation", "evaluation depends on run logs"),
    ("detserve.runlog", "detserve.sampling", "sampling writes run logs"),
)
#: the only modules outside ``detserve.cli`` that may import it: the program's entry point
CLI_ENTRY_POINTS = frozenset({"detserve.__main__"})


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _imports(module: str, path: Path, modules: Iterable[str]) -> set[str]:
    """The ``detserve`` modules that ``module`` (at ``path``) imports, anywhere in its body."""
    known = set(modules)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in known else source)
    return {name for name in found if _under(name, "detserve") and name != module}


def import_graph() -> dict[str, set[str]]:
    """Each module of ``src/detserve`` and the ``detserve`` modules it imports."""
    sources = _sources()
    return {module: _imports(module, path, sources) for module, path in sources.items()}


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A cycle of ``graph`` (its first module repeated at the end), or None when there is none."""
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        return list(reversed(exc.args[1]))  # graphlib lists it against the arrows
    return None


GRAPH = import_graph()


def test_the_graph_is_built_from_every_module() -> None:
    # A sanity check of the builder: were it to miss imports, the other tests would pass vacuously.
    assert {"detserve.runlog", "detserve.runlog.models", "detserve.evaluation.pair"} <= GRAPH.keys()
    assert "detserve.runlog.models" in GRAPH["detserve.runlog"]  # a re-export is an arrow
    assert "detserve.runlog" in GRAPH["detserve.evaluation.pair"]
    assert "detserve.evaluation.pair" in GRAPH["detserve.evaluation.majority"]
    assert "detserve.cli" in GRAPH["detserve.__main__"]


def test_find_cycle_finds_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    cycle = find_cycle(graph)
    assert cycle is not None
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"a", "b", "c"}
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


@pytest.mark.parametrize(
    ("importer", "imported", "why"),
    [pytest.param(*rule, id=f"{rule[0]}-/->{rule[1]}") for rule in FORBIDDEN],
)
def test_no_upward_arrows(importer: str, imported: str, why: str) -> None:
    arrows = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if _under(module, importer)
        for target in targets
        if _under(target, imported)
    )
    assert arrows == [], f"{importer} must not import {imported} ({why}): {arrows}"


def test_only_the_cli_imports_the_cli() -> None:
    arrows = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if not _under(module, "detserve.cli") and module not in CLI_ENTRY_POINTS
        for target in targets
        if _under(target, "detserve.cli")
    )
    assert arrows == [], f"the CLI is a skin over the core: {arrows}"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_a_module_holds_one_concept(module: str) -> None:
    path = _sources()[module]
    text = path.read_text("utf-8")
    n_lines = len(text.splitlines())
    docstring = ast.get_docstring(ast.parse(text)) or ""
    if module in KNOWN_LONG_MODULES:
        assert n_lines > MAX_LINES, f"{module} is short now: drop it from KNOWN_LONG_MODULES"
        return
    assert n_lines <= MAX_LINES or LONG_MODULE_REASON in docstring, (
        f"{path.relative_to(REPO_ROOT)} has {n_lines} lines: split it along its concepts, or "
        f"say in its docstring why it is {LONG_MODULE_REASON} ..."
    )
