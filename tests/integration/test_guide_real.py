"""docs/serve-your-model.md, run: its commands, read out of the page, from an empty Hugging Face
home to a verified signed claim, on the tiny model through a real hub server.

The page's ``sh guide:STEP`` blocks are run as they are shown (tests/guide_steps.py), with the
substitutions the page lists and nothing else: the Qwen repository becomes the tiny model's on
olah (``make_tiny_hub``: a deterministic git repository, so its commit is the same everywhere),
``--device nvidia --gpus 1`` becomes ``--device cpu`` (the CPU image, pinned from the local
registry by the guide's own ``lock-image``, stands in for the GPU image), the profile's name
becomes one of the test's, ``REVISION`` the commit ``lock-model`` wrote; ``HF_ENDPOINT`` names
olah and ``HF_HOME`` an empty folder. The one edit by hand: the profile's port, to a free one.

The operator works in a git repository standing for a clone of detserve; the verifier in a
``git clone`` of what the operator committed, with an empty Hugging Face home, where it
downloads and checks the claim. It replays on the operator's host, against the operator's
running container: vLLM starts once (about a minute on two cores). A verifier elsewhere starts
its own, as ``replay`` does by itself.

The tampered-server case follows the page to the committed manifest, then changes what the hub
serves for the weights (an LFS object: the commit is the same) and follows the page on a second
host: ``download`` is exit 1 naming the file, ``run`` is exit 1 and leaves no container,
``sample`` is exit 1 and writes nothing.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import docker
import docker.errors
import pytest

from guide_steps import GUIDE_STEPS, TinyTarget, guide_steps
from hub_fixtures import TINY_MANIFEST, TinyHub

from .conftest import REPO_ROOT, CliRun, free_port

EXIT_OK, EXIT_VERIFICATION, EXIT_ENVIRONMENT = 0, 1, 3
#: the server is ready 40-80 s after start on two cores; run also verifies and smoke-tests
READY_TIMEOUT_S = 600
COMMAND_TIMEOUT_S = 300
DATASET = Path("artifacts") / "datasets" / "reference_prompts.source.jsonl"
_GIT_ENVIRONMENT = {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "operator",
    "GIT_AUTHOR_EMAIL": "operator@detserve.invalid",
    "GIT_COMMITTER_NAME": "operator",
    "GIT_COMMITTER_EMAIL": "operator@detserve.invalid",
}


@dataclass(frozen=True)
class Checkout:
    """A working directory where the guide's steps run, as a person runs them there."""

    root: Path
    target: TinyTarget
    environment: dict[str, str]
    #: the steps run, by every checkout made from this one (``replace`` shares the list)
    steps_run: list[str] = field(default_factory=list)

    def run(self, words: list[str], timeout: float = COMMAND_TIMEOUT_S) -> CliRun:
        program = [sys.executable, "-m", "detserve"] if words[0] == "detserve" else [words[0]]
        began = time.monotonic()
        completed = subprocess.run(
            [*program, *words[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            env=self.environment,
            check=False,
        )
        return CliRun(
            args=tuple(words),
            code=completed.returncode,
            out=completed.stdout,
            err=completed.stderr,
            seconds=time.monotonic() - began,
        )

    def step(
        self, name: str, *, expect: int = EXIT_OK, timeout: float = COMMAND_TIMEOUT_S
    ) -> list[CliRun]:
        """Run the page's step ``name``, command by command, each expected to exit ``expect``."""
        done: list[CliRun] = []
        self.steps_run.append(name)
        for command in guide_steps()[name]:
            ran = self.run(self.target.words(command), timeout)
            assert ran.code == expect, f"guide step {name}:\n{ran}"
            done.append(ran)
        return done

    @property
    def profile(self) -> Path:
        return self.root / "configs" / f"{self.target.name}.json"

    def document(self) -> dict[str, dict[str, object]]:
        loaded: dict[str, dict[str, object]] = json.loads(self.profile.read_text("utf-8"))
        return loaded

    def knowing_the_commit(self) -> Checkout:
        """The same checkout, its ``REVISION`` now the commit the profile pins."""
        revision = self.document()["model"]["revision"]
        assert isinstance(revision, str)
        return replace(self, target=replace(self.target, revision=revision))


def _environment(hub: TinyHub, home: Path) -> dict[str, str]:
    """This process's environment without any Hugging Face setting, then the hub and an empty
    home: nothing of this machine's cache or token reaches the commands."""
    home.mkdir()
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HF_", "HUGGING_FACE")) and not key.startswith("GIT_")
    }
    return inherited | _GIT_ENVIRONMENT | {"HF_ENDPOINT": hub.url, "HF_HOME": str(home)}


def _checkout(root: Path, hub: TinyHub, name: str, home: Path) -> Checkout:
    """The operator's clone: a git repository holding what the guide's bundle step reads."""
    root.mkdir()
    dataset = root / DATASET
    dataset.parent.mkdir(parents=True)
    shutil.copyfile(REPO_ROOT / DATASET, dataset)
    checkout = Checkout(root, TinyTarget(hub.repo_id, name), _environment(hub, home))
    assert checkout.run(["git", "init", "--quiet", "--initial-branch", "main"]).code == 0
    return checkout


def _on_a_free_port(checkout: Checkout) -> None:
    """The one edit by hand: init's port (8000) may be another server's on a shared machine."""
    document = checkout.document()
    document["runtime"]["port"] = free_port()
    checkout.profile.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _container(client: docker.DockerClient, name: str) -> object | None:
    try:
        return client.containers.get(f"detserve-{name}")
    except docker.errors.NotFound:
        return None


@pytest.fixture
def guide_name(docker_client: docker.DockerClient) -> Iterator[str]:
    """A profile name of this test's own (so its own container), removed whatever happens."""
    name = f"guide-{uuid.uuid4().hex[:8]}"
    yield name
    container = _container(docker_client, name)
    if container is not None:
        container.remove(force=True)  # type: ignore[attr-defined]


def _to_the_trust_roots(operator: Checkout, hub: TinyHub) -> Checkout:
    """The operator's steps from an empty home up to every pin and trust root, checked as the
    page says each one behaves; returns the checkout knowing the commit."""
    operator.step("init")
    _on_a_free_port(operator)
    (doctor,) = operator.step("doctor-host", expect=EXIT_VERIFICATION)
    assert "FAIL pins filled" in doctor.out, doctor
    assert "PASS engine reachable" in doctor.out, doctor
    (locked,) = operator.step("lock-model")
    assert operator.document()["model"]["revision"] == hub.commit
    assert f"resolved by {hub.url})" in locked.err, locked
    operator = operator.knowing_the_commit()

    dry, fetched = operator.step("download")
    listed = [line.split()[-1] for line in dry.out.splitlines() if line.startswith("fetch ")]
    assert "model.safetensors" in listed, dry
    # every file listed is fetched by the second command: the dry run fetched none of them
    assert f"downloaded {len(listed)} files" in fetched.out, fetched
    assert "NOT TRUSTED" in fetched.out, fetched
    # the command download prints for the next step is the page's next step
    (hash_command,) = guide_steps()["hash"]
    printed = shlex.split(fetched.out.splitlines()[-1])
    expected = operator.target.words(hash_command)
    assert printed[:-1] == expected[:-1], (printed, expected)
    assert (operator.root / printed[-1]).resolve() == (operator.root / expected[-1]).resolve()

    operator.step("hash")
    manifest = operator.root / "manifests" / operator.target.name / f"{hub.commit}.sha256"
    # olah served the committed tiny model's files, byte for byte
    assert manifest.read_bytes() == TINY_MANIFEST.read_bytes()
    operator.step("lock-image")
    image = operator.document()["runtime"]["image"]
    assert isinstance(image, str)
    assert "@sha256:" in image
    *_, measured = operator.step("bundle")
    assert f"measured on {hub.repo_id} at {hub.commit}" in measured.out, measured
    return operator


def test_the_guide_from_an_empty_hub_home_to_a_verified_signed_claim(
    make_tiny_hub: Callable[..., TinyHub],
    guide_name: str,
    docker_client: docker.DockerClient,
    pinned_image: str,
    tmp_path: Path,
) -> None:
    hub = make_tiny_hub()
    start = _checkout(tmp_path / "operator", hub, guide_name, tmp_path / "operator-hf-home")
    operator = _to_the_trust_roots(start, hub)
    assert operator.document()["runtime"]["image"] == pinned_image

    operator.step("run", timeout=READY_TIMEOUT_S)
    (doctor,) = operator.step("doctor")
    assert "FAIL" not in doctor.text, doctor
    operator.step("sample")
    run_log = operator.root / "artifacts" / "runs" / f"{guide_name}.runlog.jsonl"
    header = run_log.read_text("utf-8").splitlines()[0]
    for pin in (hub.repo_id, hub.commit, pinned_image):
        assert pin in header, header
    operator.step("attest")
    operator.step("publish")
    operator.step("commit")

    # The verifier: a clone of the operator's commit, an empty Hugging Face home.
    verifier_root = tmp_path / "verifier"
    verifier = replace(
        operator,
        root=verifier_root,
        environment=_environment(hub, tmp_path / "verifier-hf-home"),
    )
    cloned = operator.run(["git", "clone", "--quiet", ".", str(verifier_root)])
    assert cloned.code == 0, cloned
    (downloaded,) = verifier.step("verifier-download")
    assert "OK: " in downloaded.out, downloaded
    (verified,) = verifier.step("verify-claim")
    assert "VERIFIED" in verified.out, verified
    # ... and replays on the operator's running container (one vLLM start for the whole test)
    (replayed,) = operator.step("replay", timeout=READY_TIMEOUT_S)
    assert "IDENTICAL" in replayed.out, replayed
    (compared,) = operator.step("eval-determinism")
    assert "IDENTICAL" in compared.out, compared

    operator.step("stop")
    assert _container(docker_client, guide_name) is None
    # every step the page marks was run, none twice (a new step cannot go untested)
    assert sorted(operator.steps_run) == sorted(GUIDE_STEPS)


def test_a_file_changed_on_the_hub_after_the_manifest_was_committed_fails_closed(
    make_tiny_hub: Callable[..., TinyHub],
    guide_name: str,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    hub = make_tiny_hub()
    start = _checkout(tmp_path / "operator", hub, guide_name, tmp_path / "operator-hf-home")
    operator = _to_the_trust_roots(start, hub)
    # The hub's storage of the weights changes: same commit, same size, other bytes.
    hub.repo.tamper_lfs("model.safetensors", hub.commit)

    # A second host follows the page with the committed files and an empty home.
    second = replace(
        operator,
        root=tmp_path / "second",
        environment=_environment(hub, tmp_path / "second-hf-home"),
    )
    shutil.copytree(operator.root, second.root, ignore=shutil.ignore_patterns("hf-cache"))
    (downloaded,) = second.step("verifier-download", expect=EXIT_VERIFICATION)
    assert "changed: ./model.safetensors expected" in downloaded.err, downloaded
    (ran,) = second.step("run", expect=EXIT_VERIFICATION, timeout=READY_TIMEOUT_S)
    assert "changed: ./model.safetensors" in ran.err, ran
    assert _container(docker_client, guide_name) is None
    # run refused to start, so there is nothing to sample: the snapshot is verified in the
    # lifetime of the container a sample asks (docs/performance.md, issue 24), and none exists
    (sampled,) = second.step("sample", expect=EXIT_ENVIRONMENT)
    assert f"no container detserve-{guide_name} to sample from" in sampled.err, sampled
    assert not (second.root / "artifacts" / "runs").exists() or not any(
        (second.root / "artifacts" / "runs").iterdir()
    )
    # the committed trust root was never remade from what the hub now serves
    manifest = second.root / "manifests" / guide_name / f"{hub.commit}.sha256"
    assert manifest.read_bytes() == TINY_MANIFEST.read_bytes()
