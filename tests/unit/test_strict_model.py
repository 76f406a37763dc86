"""Every pydantic model of ``src/detserve`` is a :class:`StrictModel`: frozen, closed, strict.

The rule is written once (:mod:`detserve.strict_model`); these tests keep it from being written
again. The source is read with ``ast`` for a second base (a class of ``BaseModel`` or
``RootModel`` elsewhere, a ``ConfigDict`` that loosens one of the three settings), and every
model class the package defines is imported and asked for its effective configuration.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from collections.abc import Iterator

import pytest
from pydantic import BaseModel

import detserve
from detserve.strict_model import StrictModel

from .committed import REPO_ROOT

PACKAGE_DIR = REPO_ROOT / "src" / "detserve"
BASE_MODULE = "strict_model.py"
#: model classes that read another program's answers, where unknown fields are that program's
#: business: (module, class) -> the ``extra`` they use instead of ``forbid``
LOOSER_EXTRA = {("detserve.runtime.vllm_client", "_Shape"): "ignore"}
#: the settings the base holds and no subclass may set again (``extra`` only as listed above)
BASE_SETTINGS = frozenset({"frozen", "strict", "extra"})


def _name(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def _sources() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        yield str(path.relative_to(PACKAGE_DIR)), ast.parse(path.read_text("utf-8"), str(path))


def test_no_model_derives_from_pydantic_outside_the_base() -> None:
    second_bases = sorted(
        f"{where}: class {node.name}"
        for where, tree in _sources()
        if where != BASE_MODULE
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        and any(_name(base) in {"BaseModel", "RootModel"} for base in node.bases)
    )
    assert second_bases == [], f"derive from detserve.strict_model.StrictModel: {second_bases}"


def test_no_config_sets_the_base_settings_again() -> None:
    again = sorted(
        f"{where}:{node.lineno}: {keyword.arg}"
        for where, tree in _sources()
        if where != BASE_MODULE
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _name(node.func) == "ConfigDict"
        for keyword in node.keywords
        if keyword.arg in BASE_SETTINGS
        and not (where == "runtime/vllm_client.py" and keyword.arg == "extra")
    )
    assert again == [], f"the base's settings are written once, in {BASE_MODULE}: {again}"


def _package_models() -> list[type[BaseModel]]:
    # Not the CLI: importing its command modules registers their commands, in this walk's order
    # rather than the application's (the source scan above covers its classes).
    for module in pkgutil.walk_packages(detserve.__path__, "detserve."):
        if not module.name.endswith("__main__") and not module.name.startswith("detserve.cli"):
            importlib.import_module(module.name)
    found: list[type[BaseModel]] = []
    pending: list[type[BaseModel]] = [BaseModel]
    while pending:
        for sub in pending.pop().__subclasses__():
            pending.append(sub)
            if sub.__module__.startswith("detserve.") and sub not in found:
                found.append(sub)
    return sorted(found, key=lambda cls: (cls.__module__, cls.__qualname__))


MODELS = _package_models()


def test_the_package_defines_models() -> None:
    # a sanity check of the walk: were it to find nothing, the test below would pass vacuously
    names = {cls.__qualname__ for cls in MODELS}
    assert {"Profile", "Record", "ClaimStatement", "SnapshotRecord", "_ModelCard"} <= names


@pytest.mark.parametrize("model", MODELS, ids=lambda cls: f"{cls.__module__}.{cls.__qualname__}")
def test_every_model_is_strict_frozen_and_closed(model: type[BaseModel]) -> None:
    assert issubclass(model, StrictModel)
    config = model.model_config
    extra = next(
        (
            looser
            for (module, name), looser in LOOSER_EXTRA.items()
            for cls in model.__mro__
            if cls.__module__ == module and cls.__qualname__ == name
        ),
        "forbid",
    )
    assert (config.get("frozen"), config.get("strict"), config.get("extra")) == (True, True, extra)
