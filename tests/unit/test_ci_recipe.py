"""The CI recipe (docs/ci/, docs/ci.md): valid for GitHub and GitLab, and its commands run.

The YAML cannot be executed here, so it is validated against the GitHub workflow and GitLab CI
schemas that ``check-jsonschema`` vendors (offline), and the commands of the jobs that need no
Docker engine are taken from the files and run on this checkout's profiles and bundles, writing
JUnit reports that are read back. The Docker job's commands run in
tests/integration/test_ci_recipe_real.py; here, the two files must hold the same ones.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import junitparser
import pytest
import yaml

from ci_recipe import (
    GITHUB_WORKFLOW,
    GITLAB_CI,
    REPO_ROOT,
    detserve_commands,
    detserve_shim,
    github_job,
    gitlab_job,
    load,
    run_steps,
    workspace,
)

SCHEMAS = {GITHUB_WORKFLOW: "vendor.github-workflows", GITLAB_CI: "vendor.gitlab-ci"}


def _validate(path: Path, schema: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("path", list(SCHEMAS), ids=lambda path: path.name)
def test_the_recipe_is_valid_for_its_ci_system(path: Path) -> None:
    done = _validate(path, SCHEMAS[path])
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("path", "breakage"),
    [
        (GITHUB_WORKFLOW, lambda doc: doc["jobs"]["inputs"].pop("runs-on")),
        (GITHUB_WORKFLOW, lambda doc: doc["jobs"]["replay"]["steps"][3].update(rn="x")),
        (GITLAB_CI, lambda doc: doc["replay"].update(script=42)),
        (GITLAB_CI, lambda doc: doc["inputs"]["artifacts"].update(when="sometimes")),
    ],
    ids=["github-no-runs-on", "github-unknown-key", "gitlab-script-not-a-list", "gitlab-when"],
)
def test_the_schemas_refuse_a_broken_recipe(path: Path, breakage: object, tmp_path: Path) -> None:
    """The validation above can fail: the same schemas refuse a copy broken in one place."""
    document = load(path)
    breakage(document)  # type: ignore[operator]
    if True in document:  # PyYAML reads GitHub's `on:` as the boolean
        document["on"] = document.pop(True)
    broken = tmp_path / path.name
    broken.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    assert _validate(broken, SCHEMAS[path]).returncode == 1


def _profiles_and_bundles() -> tuple[list[str], list[str]]:
    profiles = sorted(path.stem for path in (REPO_ROOT / "configs").glob("*.json"))
    bundles = sorted(path.parent.name for path in (REPO_ROOT / "artifacts").glob("*/bundle.json"))
    return profiles, bundles


@pytest.mark.parametrize("system", ["github", "gitlab"])
def test_the_inputs_job_validates_every_profile_and_verifies_every_bundle(
    system: str, tmp_path: Path
) -> None:
    steps, env = github_job("inputs") if system == "github" else gitlab_job("inputs")
    assert env["REPORTS"] == "reports"
    env["REPORTS"] = str(tmp_path / "reports")
    runs = run_steps(
        steps, env=env, cwd=workspace(tmp_path / "work"), bin_dir=detserve_shim(tmp_path / "bin")
    )
    for run in runs:
        assert run.code == 0, run
    profiles, bundles = _profiles_and_bundles()
    assert len(profiles) >= 3
    assert len(bundles) >= 6
    expected = {f"config-{name}.xml" for name in profiles} | {
        f"prompts-{name}.xml" for name in bundles
    }
    reports = tmp_path / "reports"
    assert {path.name for path in reports.iterdir()} == expected
    for path in sorted(reports.iterdir()):
        [case] = list(next(iter(junitparser.JUnitXml.fromfile(str(path)))))
        assert case.is_passed, path.name


def test_a_bad_bundle_fails_the_job_and_every_other_input_is_still_reported(
    tmp_path: Path,
) -> None:
    """One bundle that does not match its pin: the step fails, its report says so, and the
    other bundles and every profile are checked and reported all the same."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("configs", "manifests", "constraints.txt"):
        (work / name).symlink_to(REPO_ROOT / name)
    artifacts = work / "artifacts"
    artifacts.mkdir()
    _, bundles = _profiles_and_bundles()
    for name in bundles:
        (artifacts / name).symlink_to(REPO_ROOT / "artifacts" / name)
    tampered = artifacts / "reference_prompts"
    tampered.unlink()
    tampered.mkdir()
    for source in (REPO_ROOT / "artifacts" / "reference_prompts").iterdir():
        data = source.read_bytes()
        (tampered / source.name).write_bytes(
            data + b"\n" if source.name == "prompts.jsonl" else data
        )
    steps, env = github_job("inputs")
    env["REPORTS"] = str(tmp_path / "reports")
    runs = run_steps(steps, env=env, cwd=work, bin_dir=detserve_shim(tmp_path / "bin"))
    by_name = {run.step.name: run for run in runs}
    assert by_name["validate every profile"].code == 0
    assert by_name["verify every prompt bundle against its pin"].code == 1
    reports = {path.name: path for path in (tmp_path / "reports").iterdir()}
    [case] = list(
        next(iter(junitparser.JUnitXml.fromfile(str(reports.pop("prompts-reference_prompts.xml")))))
    )
    assert case.is_failure
    for path in reports.values():
        [case] = list(next(iter(junitparser.JUnitXml.fromfile(str(path)))))
        assert case.is_passed, path.name
    assert len(reports) == len(bundles) - 1 + len(_profiles_and_bundles()[0])


def test_both_recipes_run_the_same_detserve_commands() -> None:
    for job in ("inputs", "replay"):
        github_steps, github_env = github_job(job)
        gitlab_steps, gitlab_env = gitlab_job(job)
        github = detserve_commands(github_steps)
        gitlab = detserve_commands([step for step in gitlab_steps if not step.after_failure])
        assert github == gitlab, job
        assert github
        shared = ("REPORTS", "PROFILE", "CLAIM", "N_PROMPTS", "MAX_TOKENS")
        assert {key: github_env[key] for key in shared} == {key: gitlab_env[key] for key in shared}
    replay = detserve_commands(github_job("replay")[0])
    assert [command.split(" ")[1] for command in replay] == [
        "run", "run", "sample", "stop", "eval-determinism",
    ]  # fmt: skip
    assert replay[0] == 'detserve run --config "$PROFILE" --hash --stop'
    assert "--junit-xml" in replay[-1]


def test_the_reports_are_where_the_ci_systems_read_them() -> None:
    workflow = load(GITHUB_WORKFLOW)
    reports = workflow["env"]["REPORTS"]
    for job in workflow["jobs"].values():
        published = [
            step for step in job["steps"] if "publish-unit-test-result" in step.get("uses", "")
        ]
        assert len(published) == 1
        assert published[0]["with"]["files"] == f"{reports}/*.xml"
        assert published[0]["if"] == "${{ !cancelled() }}"  # failures are published too
    gitlab = load(GITLAB_CI)
    for name in ("inputs", "replay"):
        artifacts = gitlab[name]["artifacts"]
        assert artifacts["reports"]["junit"] == f"{gitlab['variables']['REPORTS']}/*.xml"
        assert artifacts["when"] == "always"
