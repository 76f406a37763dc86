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
#: no module is longer, and no docstring or list waives it: a longer one holds two concepts
MAX_LINES = 500

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
    ("detserve.diagnosis", "detserve.sampling", "check and sample are peers over verified.py"),
    ("detserve.sampling", "detserve.diagnosis", "check and sample are peers over verified.py"),
    ("detserve.verified", "detserve.sampling", "sample, check and serve ask verified.py"),
    ("detserve.verified", "detserve.diagnosis", "sample, check and serve ask verified.py"),
    ("detserve.verified", "detserve.gateway", "sample, check and serve ask verified.py"),
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


def _type_checking_only(tree: ast.AST) -> set[int]:
    """The ids of the nodes only type checkers see: the body of every ``if TYPE_CHECKING:``."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            hidden.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return hidden


def _imports(
    module: str, path: Path, modules: Iterable[str], *, at_run_time: bool = False
) -> set[str]:
    """The ``detserve`` modules that ``module`` (at ``path``) imports, anywhere in its body;
    ``at_run_time``: less those imported only for type checkers (``if TYPE_CHECKING:``)."""
    known = set(modules)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text("utf-8"), str(path))
    hidden = _type_checking_only(tree) if at_run_time else set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
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
    n_lines = len(path.read_text("utf-8").splitlines())
    assert n_lines <= MAX_LINES, (
        f"{path.relative_to(REPO_ROOT)} has {n_lines} lines (at most {MAX_LINES}): split it along "
        "its concepts"
    )


#: what the CLI may import at run time besides itself and the face (``detserve.api``), and why;
#: what it imports only for type checkers (the types of the face's results) executes nothing
CLI_MAY_IMPORT: Mapping[str, str] = {
    "detserve.errors": "the one error hierarchy and its exit codes, which the CLI maps to",
    "detserve.printable": "rendering: text from outside is escaped before it is printed",
    "detserve.canonical": "rendering: --json documents in canonical form",
    "detserve._version": "rendering: --version",
    "detserve.junit": "rendering: --junit-xml, a command's outcome as a JUnit XML report",
    "detserve.fileio": "--junit-xml's file is checked against the command's inputs, as any output",
}


def cli_reaches_past_the_face(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Each arrow from a CLI module to a module other than the face, the CLI's own and
    :data:`CLI_MAY_IMPORT`."""
    return sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if _under(module, "detserve.cli")
        for target in targets
        if not any(_under(target, allowed) for allowed in ("detserve.cli", "detserve.api"))
        and target not in CLI_MAY_IMPORT
    )


def test_the_cli_imports_only_the_face() -> None:
    # Every command is: parse options, one call of the face, render. A CLI module that imports
    # a room of the core at run time does the face's work, or a workflow, itself.
    sources = _sources()
    at_run_time = {
        module: _imports(module, path, sources, at_run_time=True)
        for module, path in sources.items()
        if _under(module, "detserve.cli")
    }
    assert "detserve.api" in at_run_time["detserve.cli.commands_runtime"]  # the builder sees it
    arrows = cli_reaches_past_the_face(at_run_time)
    assert arrows == [], f"the CLI reaches past the face: {arrows}"


def test_a_type_checking_import_is_not_a_run_time_one() -> None:
    path = PACKAGE_DIR / "cli" / "commands_download.py"
    typed = _imports("detserve.cli.commands_download", path, _sources())
    ran = _imports("detserve.cli.commands_download", path, _sources(), at_run_time=True)
    assert "detserve.download" in typed - ran  # its plan's types, for annotations only


def test_no_room_imports_the_face() -> None:
    # The face (detserve.api) wraps the rooms; a room that imported it would run back up.
    arrows = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if not _under(module, "detserve.api")
        and not _under(module, "detserve.cli")
        and module != "detserve"  # the package re-exports the face
        for target in targets
        if _under(target, "detserve.api")
    )
    assert arrows == [], f"the face is the top of the core: {arrows}"
