"""The committed reference bundles of each request kind are what their recipe builds.

``scripts/make_reference_bundles.sh`` holds the recipe (dataset, format, field, count); each
bundle is rebuilt here with ``detserve prompts bootstrap`` from its committed dataset and must
match byte for byte, and its pin must be the manifest ``detserve hash`` writes.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from .committed import REPO_ROOT, TINY_CONFIG, CliRunner

RECIPE = REPO_ROOT / "scripts" / "make_reference_bundles.sh"
TABLE = re.search(r"<<'TABLE'\n(.*?)\nTABLE\n", RECIPE.read_text(), re.DOTALL)
ROWS = [line.split() for line in TABLE.group(1).splitlines()] if TABLE else []


def test_the_recipe_names_every_kind() -> None:
    assert [row[0] for row in ROWS] == [
        "reference_prompts",
        "chat_prompts",
        "json_prompts",
        "regex_prompts",
        "choice_prompts",
        "grammar_prompts",
    ]


@pytest.mark.parametrize(("name", "fmt", "field", "n"), ROWS, ids=[row[0] for row in ROWS])
def test_each_committed_bundle_is_rebuilt_byte_for_byte(
    tmp_path: Path, cli: CliRunner, name: str, fmt: str, field: str, n: str
) -> None:
    dataset = REPO_ROOT / "artifacts" / "datasets" / f"{name}.source.jsonl"
    output = tmp_path / name
    built = cli(
        "prompts", "bootstrap", "--config", TINY_CONFIG, "--name", name,
        "--dataset-file", dataset,
        "--dataset-sha256", hashlib.sha256(dataset.read_bytes()).hexdigest(),
        "--format", fmt, "--field", field, "--n-prompts", n, "--output-dir", output,
    )  # fmt: skip
    assert built.code == 0, built.text
    for file in ("bundle.json", "prompts.jsonl"):
        committed = REPO_ROOT / "artifacts" / name / file
        assert (output / file).read_bytes() == committed.read_bytes(), file
    pin = tmp_path / "pin.sha256"
    assert cli("hash", "--snapshot", output, "--manifest-output", pin).code == 0
    assert pin.read_bytes() == (REPO_ROOT / "manifests" / name / f"{name}.sha256").read_bytes()
