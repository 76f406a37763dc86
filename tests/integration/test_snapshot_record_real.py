"""One full pass per container lifetime, against the real container.

`detserve run` verifies the snapshot while the server loads and leaves the record of that pass;
`sample` then checks the record before its first request and before its commit (no byte read);
a new lifetime (the container stopped and run again) hashes every byte again; `--full-verify`
always does.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .conftest import DetserveRunner, ProfileFactory

REPO_ROOT = Path(__file__).resolve().parents[2]
HF_CACHE = REPO_ROOT / "artifacts" / "hf-cache"
BUNDLE = REPO_ROOT / "artifacts" / "reference_prompts"
BUNDLE_PIN = REPO_ROOT / "manifests" / "reference_prompts" / "reference_prompts.sha256"


def sample(detserve: DetserveRunner, profile: Path, out: Path, *extra: str) -> dict[str, Any]:
    ran = detserve(
        "sample",
        "--json",
        "--config",
        profile,
        "--n-prompts",
        "2",
        "--max-tokens",
        "4",
        "--bundle",
        BUNDLE,
        "--bundle-pin",
        BUNDLE_PIN,
        "--run-log-output",
        out / "run.runlog.jsonl",
        "--sidecar-output",
        out / "run.sidecar.json",
        "--force",
        *extra,
    )
    assert ran.code == 0, ran
    summary: dict[str, Any] = ran.json()
    return summary


def verified_by(summary: dict[str, Any]) -> list[str]:
    return [check["verified_by"] for check in summary["snapshot_checks"]]


def test_one_full_pass_per_container_lifetime(
    profile_factory: ProfileFactory, detserve: DetserveRunner, tmp_path: Path
) -> None:
    profile = profile_factory("snapshot-record")
    out = tmp_path / "out"
    out.mkdir()
    try:
        ran = detserve("run", "--json", "--config", profile)
        assert ran.code == 0, ran
        verify = ran.json()["wait"]["snapshot_verified"]
        assert verify["verified_by"] == "full pass"
        assert verify["record"].endswith("record written"), verify
        assert verified_by(sample(detserve, profile, out)) == ["record", "record"]
        assert verified_by(sample(detserve, profile, out, "--full-verify")) == [
            "full pass",
            "full pass",
        ]
        again = detserve("run", "--json", "--config", profile)  # the same lifetime
        assert again.code == 0, again
        assert again.json()["wait"]["snapshot_verified"]["verified_by"] == "record"
        assert detserve("stop", "--config", profile).code == 0
        renewed = detserve("run", "--json", "--config", profile)  # a new lifetime
        assert renewed.code == 0, renewed
        verify = renewed.json()["wait"]["snapshot_verified"]
        assert verify["verified_by"] == "full pass"
        assert "another container lifetime" in verify["record"]
    finally:
        detserve("stop", "--config", profile)
        shutil.rmtree(out, ignore_errors=True)
