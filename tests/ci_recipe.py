"""The CI recipe's commands, read from the committed YAML files themselves (docs/ci/), and run.

The tests never hold a copy of the recipe's commands: they take each GitHub step's ``run:`` and
each GitLab job's ``script:`` from the YAML, with the variables the files define, override the
few that name this machine's paths (the profile, the claim, where reports go), and run them with
bash as the CI systems do (``-e -o pipefail``). A step after a failed one runs only when its
``if:`` is ``always()`` or ``!cancelled()``, as in GitHub. What is not run is named: actions
(``uses:``), and the install step (``id: install``; GitLab's ``before_script``), because this
checkout is already installed; :func:`detserve_shim` puts a ``detserve`` on ``PATH`` that runs
this checkout's code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE_DIR = REPO_ROOT / "docs" / "ci"
GITHUB_WORKFLOW = RECIPE_DIR / "github-workflow.yml"
GITLAB_CI = RECIPE_DIR / "gitlab-ci.yml"
#: the conditions under which GitHub runs a step after an earlier one failed
_RUNS_AFTER_A_FAILURE = frozenset({"${{ always() }}", "${{ !cancelled() }}"})
#: the only condition a step may have otherwise: none
_DEFAULT_CONDITION = None
#: what a GitLab job's before_script may do: install detserve, which this checkout is already
_INSTALL = re.compile(
    r"python3 -m venv \.venv|(\.venv/bin/)?pip install -c constraints\.txt \.|export PATH=.*"
)


@dataclass(frozen=True)
class Step:
    """One shell script of the recipe, as a CI system runs it."""

    name: str
    script: str
    after_failure: bool
    """Whether it runs when an earlier step failed (``if: always()``; GitLab's after_script)."""


@dataclass(frozen=True)
class StepRun:
    step: Step
    code: int | None
    """``None``: skipped, because an earlier step failed."""
    out: str
    err: str
    seconds: float

    def __str__(self) -> str:
        return (
            f"step {self.step.name!r}: exit {self.code} in {self.seconds:.1f} s\n"
            f"--- script\n{self.step.script}\n--- stdout\n{self.out}--- stderr\n{self.err}"
        )


def load(path: Path) -> dict[Any, Any]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def _strings(mapping: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(key): str(value) for key, value in (mapping or {}).items()}


def github_job(name: str) -> tuple[list[Step], dict[str, str]]:
    """The steps of a job of the GitHub workflow that run a script, and its environment."""
    workflow = load(GITHUB_WORKFLOW)
    job = workflow["jobs"][name]
    assert workflow["defaults"]["run"]["shell"] == "bash"  # -eo pipefail, as run here
    env = _strings(workflow.get("env")) | _strings(job.get("env"))
    steps = []
    for index, step in enumerate(job["steps"]):
        if "uses" in step:
            continue  # an action: checkout, setup-python, publish, upload
        if step.get("id") == "install":
            assert step["run"] == "pip install -c constraints.txt ."
            continue  # this checkout is installed already
        condition = step.get("if", _DEFAULT_CONDITION)
        assert condition in _RUNS_AFTER_A_FAILURE | {_DEFAULT_CONDITION}, condition
        assert "${{" not in step["run"], "an expression in a script: pass it through env"
        assert "env" not in step, "a step's own env is not read here"
        steps.append(
            Step(
                name=step.get("name", f"step {index}"),
                script=step["run"],
                after_failure=condition in _RUNS_AFTER_A_FAILURE,
            )
        )
    return steps, env


def gitlab_job(name: str) -> tuple[list[Step], dict[str, str]]:
    """A GitLab job's script (one shell, as GitLab runs it) and after_script, and its variables."""
    document = load(GITLAB_CI)
    job = document[name]
    env = _strings(document.get("variables")) | _strings(job.get("variables"))
    for line in job.get("before_script", []):
        # the install only: this checkout is installed already
        assert _INSTALL.fullmatch(line), line
    steps = [Step(name=f"{name}: script", script="\n".join(job["script"]), after_failure=False)]
    if "after_script" in job:
        steps.append(
            Step(
                name=f"{name}: after_script",
                script="\n".join(job["after_script"]),
                after_failure=True,
            )
        )
    return steps, env


def detserve_commands(steps: Sequence[Step]) -> list[str]:
    """Every ``detserve`` command of the steps, one line each, in order (continuations joined,
    runs of spaces made one): what two recipes must agree on."""
    commands = []
    for step in steps:
        text = re.sub(r"\\\n\s*", " ", step.script)
        for line in text.split("\n"):
            line = re.sub(r"\s+", " ", line.strip())
            if line.startswith("detserve "):
                commands.append(line)
    return commands


def detserve_shim(directory: Path) -> Path:
    """A ``detserve`` that runs this checkout's code with this interpreter; returns its folder."""
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "detserve"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m detserve "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    return directory


def workspace(root: Path) -> Path:
    """A working directory for the recipe: the repository's inputs linked in (read, never
    written: configs, artifacts, manifests, constraints), so that what the recipe writes
    (reports/, runs/) lands outside the checkout."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("configs", "artifacts", "manifests", "constraints.txt"):
        (root / name).symlink_to(REPO_ROOT / name)
    return root


def run_steps(
    steps: Sequence[Step],
    *,
    env: Mapping[str, str],
    cwd: Path,
    bin_dir: Path,
    timeout: float = 900,
) -> list[StepRun]:
    """Run the steps in order as GitHub does; each in a new bash, ``-e -o pipefail``."""
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(REPO_ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
        **env,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    runs: list[StepRun] = []
    failed = False
    for step in steps:
        if failed and not step.after_failure:
            runs.append(StepRun(step, None, "", "", 0.0))
            continue
        began = time.monotonic()
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", step.script],
            cwd=cwd,
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        runs.append(
            StepRun(step, done.returncode, done.stdout, done.stderr, time.monotonic() - began)
        )
        failed = failed or done.returncode != 0
    return runs
