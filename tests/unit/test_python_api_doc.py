"""The library face is documented: every public name, with its docstring, in docs/python-api.md."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import detserve
from detserve import api

from .committed import REPO_ROOT

DOC = REPO_ROOT / "docs" / "python-api.md"


def _generator() -> object:
    spec = importlib.util.spec_from_file_location(
        "api_reference", REPO_ROOT / "scripts" / "api_reference.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_reference_is_the_generated_one() -> None:
    generator = _generator()
    text = DOC.read_text(encoding="utf-8")
    assert generator.reference() in text, "run `make schemas` to regenerate docs/python-api.md"  # type: ignore[attr-defined]


def test_every_public_function_is_documented_and_re_exported() -> None:
    for name in api.__all__:
        value = getattr(api, name)
        assert getattr(detserve, name) is value
        if inspect.isfunction(value):
            assert inspect.getdoc(value), f"detserve.{name} has no docstring"


def _face_modules() -> list[ModuleType]:
    """Every module of the face's package, :mod:`detserve.api` itself and each family."""
    names = [info.name for info in pkgutil.iter_modules(api.__path__, prefix="detserve.api.")]
    assert {"detserve.api.snapshots", "detserve.api.claims"} <= set(names)
    return [api, *(importlib.import_module(name) for name in names)]


def test_the_list_names_every_public_function_and_class_of_the_api() -> None:
    # detserve.api.__all__ is the one list: a function or class added to a family of the face
    # but not to that list would be neither re-exported nor documented.
    defined = {
        name
        for module in _face_modules()
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__ == module.__name__
    }
    assert defined - set(api.__all__) == set()
    assert len(api.__all__) == len(set(api.__all__)), "a name listed twice"
    assert set(detserve.__all__) - set(api.__all__) == {"DetserveError", "__version__"}
    for name in detserve.__all__:
        assert hasattr(detserve, name), name


def test_type_checkers_see_the_same_names_as_the_runtime() -> None:
    # What detserve/__init__.py imports under TYPE_CHECKING is what mypy and IDEs see as
    # detserve.X: a star import of the face, which re-exports exactly detserve.api.__all__, the
    # list __getattr__ serves at run time; nothing else but the error base.
    tree = ast.parse(Path(detserve.__file__).read_text(encoding="utf-8"))
    (block,) = (
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    typed = {
        (node.module, alias.name, alias.asname)
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert typed == {
        ("detserve.api", "*", None),
        ("detserve.errors", "DetserveError", "DetserveError"),
    }
    assert all(isinstance(node, ast.ImportFrom) for node in block.body)


def test_help_documents_sample() -> None:
    shown = subprocess.run(
        [sys.executable, "-c", "import detserve; help(detserve.sample)"],
        capture_output=True,
        text=True,
        check=True,
        env={"PAGER": "cat", "PATH": "/usr/bin:/bin"},
    )
    assert "Sample the pinned prompt bundle" in shown.stdout


@pytest.mark.parametrize("module", ["detserve", "detserve.api"])
def test_importing_detserve_imports_no_heavy_dependency(module: str) -> None:
    # the face too: every command imports it, and `hash` and `verify` pay for their start-up
    probe = (
        f"import sys, {module}; "
        "print(sorted(m for m in ('docker', 'httpx', 'pydantic', 'rich') if m in sys.modules))"
    )
    shown = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert shown.stdout.strip() == "[]"


def test_no_api_name_is_also_a_module_of_the_package() -> None:
    # Importing detserve.X sets the package's attribute X to the module, which would hide the
    # API function of that name (as detserve/replay.py once hid detserve.replay).
    for name in api.__all__:
        assert importlib.util.find_spec(f"detserve.{name}") is None, name
