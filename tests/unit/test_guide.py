"""docs/serve-your-model.md, offline: every command on the page is the real CLI's, the steps its
integration test runs are marked in order, and ``detserve init``'s checklist for the guide's
profile is on the page word for word.

The page is run for real by tests/integration/test_guide_real.py (the tiny model through olah);
this file keeps the page honest where that test cannot look: the GPU host's commands, which
never run here, must still parse; and a step the integration test would skip cannot hide.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from guide_steps import (
    GUIDE,
    GUIDE_STEPS,
    GuideError,
    TinyTarget,
    detserve_commands,
    guide_blocks,
    guide_steps,
)

from .committed import REPO_ROOT, CliRunner, parse_command_line, sha256_hex

#: the dataset the guide's bundle step names (a committed file), standing for init's DATASET
DATASET = "artifacts/datasets/reference_prompts.source.jsonl"
#: what is left of a placeholder after the test's substitutions: an UPPER-CASE word
PLACEHOLDER = re.compile(r"\b[A-Z][A-Z0-9_]{2,}\b")


def _parses(words: list[str]) -> None:
    assert words[0] == "detserve"
    try:
        parse_command_line(words[1:])
    except Exception as exc:  # noqa: BLE001  # click's own, or typer's copy of it
        pytest.fail(f"{shlex.join(words)}: {exc}")


def test_the_steps_the_integration_test_runs_are_marked_in_order() -> None:
    assert tuple(guide_steps()) == GUIDE_STEPS


def test_every_detserve_command_on_the_page_parses_with_the_real_cli() -> None:
    commands = detserve_commands()
    # the GPU host's own forms are on the page too: the publisher-signature hash and verify
    assert any(block.step is None for block, _ in commands)
    for _, words in commands:
        _parses(words)


def test_every_command_init_prints_for_this_profile_is_on_the_page(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (init,) = guide_steps()["init"]
    ran = cli(*shlex.split(init)[1:], "--json")
    assert ran.code == 0, ran.text
    on_page = {command for block in guide_blocks() for command in block.commands}
    dataset_sha256 = sha256_hex((REPO_ROOT / DATASET).read_bytes())
    checklist = json.loads(ran.out)["checklist"]
    assert [step["step"] for step in checklist] == [
        "lock-model", "download", "hash", "lock-image", "bundle", "run", "sample", "attest",
    ]  # fmt: skip
    for step in checklist:
        for command in step["commands"] + step["instead"]:
            # the one value init leaves to the operator that the guide fills in
            filled = command.replace("DATASET_SHA256", dataset_sha256).replace("DATASET", DATASET)
            assert filled in on_page, f"init's step {step['step']}: {filled!r} is not in {GUIDE}"


def test_the_bundle_step_names_the_dataset_by_its_real_sha256() -> None:
    bootstrap = shlex.split(guide_steps()["bundle"][0])
    dataset = bootstrap[bootstrap.index("--dataset-file") + 1]
    given = bootstrap[bootstrap.index("--dataset-sha256") + 1]
    assert dataset == DATASET
    assert sha256_hex((REPO_ROOT / dataset).read_bytes()) == given


def test_the_tiny_substitutions_leave_no_placeholder_and_every_command_parses() -> None:
    target = TinyTarget(
        "detserve/tiny-llama-guide", "guide-unit", "4fc793a4657951bc1ec90a04b4c6730b0a9a50c4"
    )
    for step, commands in guide_steps().items():
        for command in commands:
            words = target.words(command)
            assert not PLACEHOLDER.findall(" ".join(words)), (step, words)
            assert not any("qwen" in word.lower() for word in words), (step, words)
            if words[0] == "detserve":
                _parses(words)


def test_a_command_that_needs_the_commit_before_it_is_known_is_refused() -> None:
    (hash_command,) = guide_steps()["hash"]
    with pytest.raises(GuideError, match="needs the commit"):
        TinyTarget("detserve/tiny-llama-guide", "guide-unit").words(hash_command)


@pytest.mark.parametrize(
    "line",
    [
        "detserve sample --config c.json | tee out.txt",
        "detserve download --config $PROFILE",
        "detserve run --config c.json && detserve sample --config c.json",
        "detserve doctor --config c.json > doctor.txt",
        "curl https://example.invalid/install.sh",
    ],
)
def test_a_runnable_step_that_a_shell_would_read_otherwise_is_refused(line: str) -> None:
    """What the test runs must be what the page shows: no shell between them."""
    page = f"# t\n\n```sh guide:x\n{line}\n```\n"
    with pytest.raises(GuideError):
        guide_steps(page)


def test_a_step_marked_twice_or_an_unclosed_block_is_refused() -> None:
    twice = "```sh guide:x\ndetserve stop --config c.json\n```\n" * 2
    with pytest.raises(GuideError, match="twice"):
        guide_steps(twice)
    with pytest.raises(GuideError, match="never closed"):
        guide_blocks("```sh guide:x\ndetserve stop --config c.json\n")


def test_a_quoted_message_and_a_continuation_are_one_command() -> None:
    page = (
        '```sh guide:x\ngit commit -m "a; b | c"\ndetserve stop \\\n  --config c.json  # why\n```\n'
    )
    assert guide_steps(page) == {
        "x": ('git commit -m "a; b | c"', "detserve stop    --config c.json  # why")
    }


def test_the_readme_points_at_the_guide() -> None:
    assert "docs/serve-your-model.md" in (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def test_the_signing_key_the_guide_makes_in_the_checkout_is_never_committed() -> None:
    """The guide's keygen writes keys/detserve.key in the clone: git must ignore it."""
    ignored = subprocess.run(
        ["git", "check-ignore", "--quiet", "keys/detserve.key"], cwd=REPO_ROOT, check=False
    )
    assert ignored.returncode == 0
