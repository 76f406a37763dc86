"""The CI recipe's Docker job, run on the tiny model against the real engine and vLLM container.

The commands are the ``run:`` scripts of the GitHub workflow's ``replay`` job
(docs/ci/github-workflow.yml), read from the file and run in order with bash as GitHub runs them,
its variables pointing at this machine's pinned profile and at a claim sampled here first, in an
earlier container lifetime, with the recipe's own parameters (a committed claim can only be
replayed with the image it names, and this machine builds its own). tests/unit/test_ci_recipe.py
holds the GitLab job to the same commands.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import docker
import docker.errors
import junitparser
import pytest

from ci_recipe import detserve_shim, github_job, run_steps, workspace

from .conftest import DetserveRunner, ProfileFactory, container_of
from .test_sampling import rewrite_log


def test_the_replay_job_reproduces_the_claim_and_reports_it(
    profile_factory: ProfileFactory,
    detserve: DetserveRunner,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    profile = profile_factory("ci-recipe")
    steps, env = github_job("replay")
    claim = tmp_path / "claims" / "tiny-cpu.runlog.jsonl"
    started = detserve("run", "--config", profile)
    assert started.code == 0, started
    try:
        sampled = detserve(
            "sample", "--config", profile, "--n-prompts", env["N_PROMPTS"],
            "--max-tokens", env["MAX_TOKENS"], "--run-log-output", claim,
            "--sidecar-output", tmp_path / "claims" / "tiny-cpu.sidecar.json",
        )  # fmt: skip
        assert sampled.code == 0, sampled
    finally:
        stopped = detserve("stop", "--config", profile)
    assert stopped.code == 0, stopped

    work = workspace(tmp_path / "work")
    env.update(PROFILE=str(profile), CLAIM=str(claim), REPORTS=str(tmp_path / "reports"))
    runs = run_steps(steps, env=env, cwd=work, bin_dir=detserve_shim(tmp_path / "bin"))
    for run in runs:
        print(f"{run.step.name}: exit {run.code} in {run.seconds:.1f} s")  # the cost of each
        assert run.code == 0, run
    assert (work / "runs" / "ci.runlog.jsonl").read_bytes() == claim.read_bytes()
    [case] = list(
        next(
            iter(junitparser.JUnitXml.fromfile(str(tmp_path / "reports" / "eval-determinism.xml")))
        )
    )
    assert case.is_passed
    assert "IDENTICAL" in (case.system_out or "")
    with pytest.raises(docker.errors.NotFound):  # the job left no container behind
        docker_client.containers.get(container_of(profile))

    # The comparison step against a claim that differs in one token: exit 1, and the report a
    # failure naming it (no server needed: the run log of the job is compared again).
    def change_one_token(samples: list[dict[str, Any]]) -> None:
        samples[2]["output_token_ids"][5] += 1

    rewrite_log(claim, tmp_path / "claims" / "other.runlog.jsonl", edit_samples=change_one_token)
    compare = [step for step in steps if "eval-determinism" in step.script]
    again = workspace(tmp_path / "again")
    (again / "runs").mkdir()
    shutil.copyfile(work / "runs" / "ci.runlog.jsonl", again / "runs" / "ci.runlog.jsonl")
    env.update(CLAIM=str(tmp_path / "claims" / "other.runlog.jsonl"))
    env.update(REPORTS=str(tmp_path / "reports-other"))
    [run] = run_steps(compare, env=env, cwd=again, bin_dir=tmp_path / "bin")
    assert run.code == 1, run
    [case] = list(
        next(
            iter(
                junitparser.JUnitXml.fromfile(
                    str(tmp_path / "reports-other" / "eval-determinism.xml")
                )
            )
        )
    )
    assert case.is_failure
    assert "sample 2" in (case.result[0].text or "")
