"""Strict sampling, evaluation and replay against the real engine and the real vLLM container.

Containers are expensive here (40-80 s to start on two cores, then about 20 s of kernel
compilation on the first completions), so the whole file starts the server three times:

1. ``run`` (with a secrets file), ``sample`` A and A with logprobs, ``stop``;
2. ``run`` again, a fresh container: ``sample`` B and B with logprobs, ``replay`` of A (which
   finds the container running with its pins). Every test of :class:`TestSampling` then uses
   this server, the ones that break it last;
3. the restart of that container by :meth:`TestSampling.test_a_server_restarted_mid_run_voids_it`
   (same container, another lifetime), which the last test then kills.

The shared profile's Hugging Face home is a copy of the committed cache, so that tests can flip a
byte of *its* weights (and flip it back) while the container serves them. Every command runs as a
user runs it (``python -m detserve ...``), except where the test must act between two samples:
those call :func:`detserve.sampling.sample` with a ``progress`` callback.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from detserve.errors import ContainerError, DetserveError, ServerError, SnapshotMismatch
from detserve.profile import load_profile
from detserve.prompts import load_bundle
from detserve.runlog import read_run_log, write_run_log
from detserve.runtime import lifecycle
from detserve.runtime.container_spec import LABEL_PROFILE
from detserve.runtime.docker_engine import DockerEngine
from detserve.sampling import SampleRequest, sample

from .conftest import (
    REPO_ROOT,
    CliRun,
    DetserveRunner,
    ProfileFactory,
    container_of,
    wait_for_run_log,
)

#: generous: the server is ready 40-80 s after start on two cores
READY_TIMEOUT_S = 400
EXIT_VERIFICATION, EXIT_INPUT, EXIT_ENVIRONMENT = 1, 2, 3
N_PROMPTS = 8
MAX_TOKENS = 16
BUNDLE_DIR = REPO_ROOT / "artifacts" / "reference_prompts"
BUNDLE_PIN = REPO_ROOT / "manifests" / "reference_prompts" / "reference_prompts.sha256"
SECRET_NAME = "HUGGING_FACE_HUB_TOKEN"


def flip_last_byte(path: Path) -> None:
    """Flip one bit of the last byte in place: same size, same shape, other numbers."""
    with path.open("r+b") as handle:
        handle.seek(-1, 2)
        byte = handle.read(1)[0]
        handle.seek(-1, 2)
        handle.write(bytes([byte ^ 0x01]))


def nothing_written(folder: Path) -> list[str]:
    """What is in ``folder`` (which the failed command was to write into), ``.partial`` included."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def rewrite_log(
    source: Path,
    target: Path,
    *,
    pins: dict[str, Any] | None = None,
    edit_samples: Callable[[list[dict[str, Any]]], None] | None = None,
) -> Path:
    """A valid run log made from ``source`` through the run-log writer (footer recomputed)."""
    records = list(read_run_log(source))
    header = records[0].model_dump(mode="json")
    header["pins"].update(pins or {})
    samples = [record.model_dump(mode="json") for record in records[1:-1]]
    if edit_samples is not None:
        edit_samples(samples)
    write_run_log(target, header, samples)
    return target


def completions_served(client: docker.DockerClient, name: str) -> int:
    """How many completion requests the server has logged so far."""
    return (
        client.containers.get(name).logs().decode("utf-8", "replace").count("POST /v1/completions")
    )


def sample_into(
    detserve: Callable[..., CliRun], profile: Path, out: Path, *options: object
) -> CliRun:
    """``detserve sample`` writing ``x.runlog.jsonl`` and ``x.sidecar.json`` into ``out``."""
    return detserve(
        "sample",
        "--config",
        profile,
        *options,
        "--run-log-output",
        out / "x.runlog.jsonl",
        "--output",
        out / "x.sidecar.json",
    )


# --- refusals that need no server ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--skip-reference-hash-check"], "--skip-reference-hash-check is refused"),
        (["--concurrency", "2"], "--concurrency 2 is refused: strict sampling is sequential"),
        (["--temperature", "0.7"], "--temperature 0.7 is refused: strict sampling is greedy"),
    ],
)
def test_weakening_options_are_refused_and_nothing_is_written(
    local_profile: Path,
    detserve: DetserveRunner,
    tmp_path: Path,
    option: list[str],
    message: str,
) -> None:
    out = tmp_path / "out"
    ran = sample_into(detserve, local_profile, out, *option)
    assert ran.code == EXIT_INPUT, ran
    assert message in ran.err, ran
    assert nothing_written(out) == []


def test_sampling_with_no_container_is_an_environment_error(
    local_profile: Path, detserve: DetserveRunner, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    ran = sample_into(detserve, local_profile, out)
    assert ran.code == EXIT_ENVIRONMENT, ran
    assert f"no container {container_of(local_profile)} to sample from" in ran.err, ran
    assert nothing_written(out) == []


# --- one profile, two container lifetimes -------------------------------------------------------


@dataclass
class Session:
    """The shared profile, its server, what was run against it and where outputs go."""

    profile: Path
    name: str
    container: str
    hf_home: Path
    secret: str
    secrets_file: Path
    work: Path
    detserve: DetserveRunner
    ran: list[CliRun] = field(default_factory=list)
    runs: dict[str, CliRun] = field(default_factory=dict)

    def cli(self, *args: str | Path, timeout: float = 600) -> CliRun:
        """Run a command and keep it, for the secrets test to read every output."""
        ran = self.detserve(*args, timeout=timeout)
        self.ran.append(ran)
        return ran

    def sample_cli(self, label: str, *extra: str | Path) -> CliRun:
        ran = self.cli(
            "sample",
            "--config",
            self.profile,
            "--n-prompts",
            str(N_PROMPTS),
            "--max-tokens",
            str(MAX_TOKENS),
            "--run-log-output",
            self.log(label),
            "--output",
            self.work / f"{label}.sidecar.json",
            *extra,
        )
        self.runs[label] = ran
        return ran

    def log(self, label: str) -> Path:
        return self.work / f"{label}.runlog.jsonl"

    def run_server(self, label: str) -> None:
        ran = self.cli(
            "run",
            "--json",
            "--config",
            self.profile,
            "--secrets-file",
            self.secrets_file,
            "--timeout",
            str(READY_TIMEOUT_S),
            timeout=READY_TIMEOUT_S + 120,
        )
        self.runs[label] = ran
        if ran.code != 0:
            pytest.fail(f"the shared server did not come up:\n{ran}")

    @property
    def weights(self) -> Path:
        """The copied cache's weights blob, which the container has mounted."""
        return next(self.hf_home.glob("hub/*/snapshots/*/model.safetensors")).resolve()

    def core_request(self, label: str, n_prompts: int = N_PROMPTS) -> SampleRequest:
        out = self.work / label
        return SampleRequest(
            n_prompts=n_prompts,
            max_tokens=MAX_TOKENS,
            logprobs=None,
            run_log_output=out / "run.runlog.jsonl",
            sidecar_output=out / "run.sidecar.json",
        )


@pytest.fixture(scope="class")
def session(
    profile_factory: ProfileFactory,
    detserve: DetserveRunner,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Session]:
    root = tmp_path_factory.mktemp("sampling")
    hf_home = root / "hf-cache"
    secret = f"hf_{secrets.token_hex(16)}"
    secrets_file = root / "secrets.env"
    secrets_file.write_text(f"{SECRET_NAME}={secret}\n", encoding="utf-8")

    def on_copied_cache(document: dict[str, Any]) -> None:
        shutil.copytree(document["snapshot"]["hf_home"], hf_home, symlinks=True)
        document["snapshot"]["hf_home"] = str(hf_home)

    profile = profile_factory("sampling", edit=on_copied_cache)
    name = json.loads(profile.read_text(encoding="utf-8"))["name"]
    work = root / "work"
    work.mkdir()
    state = Session(
        profile=profile,
        name=name,
        container=container_of(profile),
        hf_home=hf_home,
        secret=secret,
        secrets_file=secrets_file,
        work=work,
        detserve=detserve,
    )
    # Lifetime 1: run, sample A (with and without logprobs), stop.
    state.run_server("run-1")
    state.sample_cli("a")
    state.sample_cli("a-logprobs", "--logprobs", "1")
    state.runs["stop-1"] = state.cli("stop", "--config", profile)
    # Lifetime 2: a fresh container; every later test uses it.
    state.run_server("run-2")
    state.sample_cli("b")
    state.sample_cli("b-logprobs", "--logprobs", "1")
    # A replay of A on the running server (same pins: it starts nothing). Here rather than in its
    # test, so that the secrets test reads a replay's output whatever ran before it.
    state.runs["replay-a"] = state.cli(
        "replay",
        "--claim",
        state.log("a"),
        "--config",
        profile,
        "--output-dir",
        state.work / "replay-a",
    )
    yield state
    detserve("stop", "--config", profile)


class TestSampling:
    """In order: determinism across lifetimes, refusals, evaluation, replay, then the faults."""

    def test_two_container_lifetimes_give_byte_identical_run_logs(
        self, session: Session, docker_client: docker.DockerClient
    ) -> None:
        first = session.runs["run-1"].json()["start"]["container"]["id"]
        second = session.runs["run-2"].json()["start"]["container"]["id"]
        assert first != second, "the second run must start a fresh container"
        assert session.runs["stop-1"].code == 0, session.runs["stop-1"]
        for label in ("a", "a-logprobs", "b", "b-logprobs"):
            assert session.runs[label].code == 0, session.runs[label]
        for suffix in ("", "-logprobs"):
            run_a, run_b = session.log(f"a{suffix}"), session.log(f"b{suffix}")
            ran = session.cli(
                "eval-determinism",
                "--run-a",
                run_a,
                "--run-b",
                run_b,
                "--output",
                session.work / f"a-vs-b{suffix}.report.json",
            )
            assert ran.code == 0, ran
            assert (
                f"IDENTICAL: the two run logs are byte-identical ({N_PROMPTS} samples)" in ran.out
            )
            assert run_a.read_bytes() == run_b.read_bytes()
        records = list(read_run_log(session.log("a-logprobs")))
        assert records[0].sampling.logprobs == 1
        assert all(len(s.logprobs) == len(s.output_token_ids) for s in records[1:-1])
        assert session.log("a").read_bytes() != session.log("a-logprobs").read_bytes()
        print(
            f"\nrun 1 took {session.runs['run-1'].seconds:.1f} s, run 2 "
            f"{session.runs['run-2'].seconds:.1f} s; sample {session.runs['b'].seconds:.1f} s"
        )

    def test_a_changed_prompt_bundle_is_refused(self, session: Session, tmp_path: Path) -> None:
        bundle = tmp_path / "bundle"
        shutil.copytree(BUNDLE_DIR, bundle)
        prompts = bundle / "prompts.jsonl"
        prompts.write_bytes(prompts.read_bytes().replace(b"France", b"Frbnce", 1))
        out = tmp_path / "out"
        ran = sample_into(
            session.cli, session.profile, out, "--bundle", bundle, "--bundle-pin", BUNDLE_PIN
        )
        assert ran.code == EXIT_VERIFICATION, ran
        assert f"prompt bundle {bundle} does not match its pinned hash" in ran.err, ran
        assert "changed: ./prompts.jsonl" in ran.err, ran
        assert nothing_written(out) == []

    def test_a_bundle_measured_on_another_model_is_refused_before_any_request(
        self, session: Session, docker_client: docker.DockerClient, tmp_path: Path
    ) -> None:
        # Another model, made as an operator makes one: a copy of the tiny model under another
        # id whose tokenizer_config.json differs, hashed; a bundle bootstrapped on it and pinned.
        document = json.loads(session.profile.read_text(encoding="utf-8"))
        other_home = tmp_path / "other-hf"
        other_model = other_home / "hub" / "models--detserve--other-llama"
        source = next(session.hf_home.glob("hub/models--detserve--tiny-llama"))
        shutil.copytree(source, other_model, symlinks=True)
        revision = document["model"]["revision"]
        config = other_model / "snapshots" / revision / "tokenizer_config.json"
        changed = json.loads(config.read_text(encoding="utf-8")) | {"model_max_length": 4096}
        config.unlink()
        config.write_text(json.dumps(changed), encoding="utf-8")
        other = dict(document, name="other-llama", model=dict(document["model"]))
        other["model"]["id"] = "detserve/other-llama"
        other["snapshot"] = {"hf_home": str(other_home), "manifest_dir": str(tmp_path / "m")}
        other_profile = tmp_path / "other-llama.json"
        other_profile.write_text(json.dumps(other), encoding="utf-8")
        manifest = tmp_path / "m" / "other-llama" / f"{revision}.sha256"
        manifest.parent.mkdir(parents=True)
        hashed = session.cli("hash", "--config", other_profile, "--manifest-output", manifest)
        assert hashed.code == 0, hashed
        dataset = REPO_ROOT / "artifacts" / "datasets" / "reference_prompts.source.jsonl"
        bundle = tmp_path / "other-bundle"
        built = session.cli(
            "prompts",
            "bootstrap",
            "--config",
            other_profile,
            "--dataset-file",
            dataset,
            "--dataset-sha256",
            hashlib.sha256(dataset.read_bytes()).hexdigest(),
            "--n-prompts",
            "4",
            "--output-dir",
            bundle,
        )
        assert built.code == 0, built
        pin = tmp_path / "other-bundle.sha256"
        pinned = session.cli("hash", "--snapshot", bundle, "--manifest-output", pin)
        assert pinned.code == 0, pinned
        # The served profile, naming that bundle as its own (no flag), its image locked into a
        # .local.json by lock-image as make demo does: the same container binds, since the
        # bundle is no server input.
        unlocked = dict(document, prompts={"bundle": str(bundle), "manifest": str(pin)})
        unlocked["runtime"] = dict(document["runtime"], image=None)
        committed = tmp_path / "tiny-cpu.json"
        committed.write_text(json.dumps(unlocked, indent=2), encoding="utf-8")
        local = tmp_path / "tiny-cpu.local.json"
        locked = session.cli(
            "lock-image", "--config", committed, "--write", "--profile-output", local
        )
        assert locked.code == 0, locked
        assert (
            json.loads(local.read_text(encoding="utf-8"))["runtime"]["image"]
            == (document["runtime"]["image"])
        )
        served = completions_served(docker_client, session.container)
        out = tmp_path / "out"
        ran = sample_into(session.cli, local, out)
        assert ran.code == EXIT_VERIFICATION, ran
        assert f"prompt bundle {bundle} was measured on another model" in ran.err, ran
        assert f"bundle:  detserve/other-llama at revision {revision}" in ran.err, ran
        assert f"profile: detserve/tiny-llama at revision {revision}" in ran.err, ran
        assert "model id: bundle 'detserve/other-llama', profile 'detserve/tiny-llama'" in ran.err
        assert "changed: 'tokenizer_config.json' bundle" in ran.err, ran
        assert nothing_written(out) == []
        assert completions_served(docker_client, session.container) == served
        # the control: the same profile with its own bundle is the bound server, and samples
        good = sample_into(session.cli, session.profile, tmp_path / "good", "--n-prompts", "1")
        assert good.code == 0, good
        assert completions_served(docker_client, session.container) > served

    def test_a_tampered_snapshot_is_refused_before_any_request(
        self, session: Session, docker_client: docker.DockerClient, tmp_path: Path
    ) -> None:
        served = completions_served(docker_client, session.container)
        out = tmp_path / "out"
        flip_last_byte(session.weights)
        try:
            ran = sample_into(session.cli, session.profile, out)
        finally:
            flip_last_byte(session.weights)
        assert ran.code == EXIT_VERIFICATION, ran
        assert "changed: ./model.safetensors expected" in ran.err, ran
        assert nothing_written(out) == []
        assert completions_served(docker_client, session.container) == served

    def test_one_changed_token_is_a_divergence_at_that_sample_and_token(
        self, session: Session
    ) -> None:
        def change_token(samples: list[dict[str, Any]]) -> None:
            tokens = samples[3]["output_token_ids"]
            tokens[5] = (tokens[5] + 1) % 512

        changed = rewrite_log(
            session.log("b"), session.work / "b-token.runlog.jsonl", edit_samples=change_token
        )
        report = session.work / "b-token.report.json"
        ran = session.cli(
            "eval-determinism", "--run-a", session.log("a"), "--run-b", changed, "--output", report
        )
        assert ran.code == EXIT_VERIFICATION, ran
        assert f"DIVERGENT: {N_PROMPTS - 1} identical, 0 within tolerance, 1 divergent" in ran.out
        assert "sample 3 (p00003, completion): output token 5 differs" in ran.out, ran
        document = json.loads(report.read_text(encoding="utf-8"))
        assert document["verdict"] == "divergent"
        [divergence] = document["divergences"]
        assert (divergence["index"], divergence["first_divergence"]) == (3, 5)
        assert divergence["fields"] == ["output_token_ids"]

    def test_a_log_under_other_pins_is_not_a_replay(self, session: Session) -> None:
        other_image = session.runs["run-2"].json()["start"]["container"]["image"].split("@")[0]
        other = rewrite_log(
            session.log("b"),
            session.work / "other-pins.runlog.jsonl",
            pins={"image": f"{other_image}@sha256:{'e' * 64}"},
        )
        ran = session.cli("eval-determinism", "--run-a", session.log("a"), "--run-b", other)
        assert ran.code == EXIT_VERIFICATION, ran
        assert "NOT A REPLAY" in ran.out, ran
        assert "pins.image" in ran.out, ran
        assert "is not a replay of" in ran.err, ran

    def test_replay_of_a_genuine_claim_is_identical(self, session: Session) -> None:
        output = session.work / "replay-a"
        ran = session.runs["replay-a"]  # run by the fixture, on the second container
        assert ran.code == 0, ran
        assert "pins match" in ran.err, ran
        assert "already running with these pins" in ran.err, ran
        assert "IDENTICAL" in ran.out, ran
        assert (output / "replay.runlog.jsonl").read_bytes() == session.log("a").read_bytes()
        assert json.loads((output / "report.json").read_text())["verdict"] == "identical"

    def test_replay_of_a_claim_under_other_pins_starts_nothing(
        self, session: Session, docker_client: docker.DockerClient
    ) -> None:
        claim = rewrite_log(
            session.log("a"),
            session.work / "other-revision.runlog.jsonl",
            pins={"model_revision": "0" * 40},
        )
        before = docker_client.containers.get(session.container).attrs["State"]["StartedAt"]
        since = int(time.time())
        output = session.work / "replay-other"
        ran = session.cli(
            "replay", "--claim", claim, "--config", session.profile, "--output-dir", output
        )
        until = int(time.time()) + 1
        assert ran.code == EXIT_VERIFICATION, ran
        assert "not a replay" in ran.err, ran
        assert "model_revision: claim '0000000000000000000000000000000000000000'" in ran.err, ran
        assert not output.exists()
        events = docker_client.events(
            since=since,
            until=until,
            decode=True,
            filters={"type": "container", "label": f"{LABEL_PROFILE}={session.name}"},
        )
        assert [event["Action"] for event in events] == []
        after = docker_client.containers.get(session.container).attrs["State"]["StartedAt"]
        assert after == before

    def test_ctrl_c_mid_run_leaves_nothing(self, session: Session) -> None:
        out = session.work / "interrupted"
        command = [
            sys.executable,
            "-m",
            "detserve",
            "sample",
            "--config",
            str(session.profile),
            "--max-tokens",
            "256",  # long enough that the signal lands mid-run however fast the machine is
            "--run-log-output",
            str(out / "x.runlog.jsonl"),
            "--output",
            str(out / "x.sidecar.json"),
        ]
        sampling = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
            # a suite started in the background (`cmd &`) ignores SIGINT, and Python keeps an
            # ignored SIGINT ignored: give the child the default, as a terminal would
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            wait_for_run_log(sampling, out, 60)
            time.sleep(0.5)  # a few samples in
            assert sampling.poll() is None, "sampling finished before it could be interrupted"
            sampling.send_signal(signal.SIGINT)
            stdout, stderr = sampling.communicate(timeout=60)
        finally:
            if sampling.poll() is None:
                sampling.kill()
        session.ran.append(CliRun(tuple(command[3:]), sampling.returncode, stdout, stderr, 0.0))
        assert sampling.returncode == EXIT_ENVIRONMENT, stderr
        assert "interrupted; nothing was written" in stderr
        assert nothing_written(out) == []

    def test_a_snapshot_changed_after_start_voids_the_run(self, session: Session) -> None:
        loaded = load_profile(session.profile)
        request = session.core_request("snapshot-changed")
        weights = session.weights
        flipped: list[int] = []

        def flip_after_first(done: int, tokens: int) -> None:
            if done == 1:
                flip_last_byte(weights)
                flipped.append(done)

        try:
            with pytest.raises(SnapshotMismatch) as raised:
                sample(
                    loaded,
                    load_bundle(BUNDLE_DIR, BUNDLE_PIN),
                    request,
                    engine=DockerEngine.from_env(),
                    progress=flip_after_first,
                )
        finally:
            if flipped:
                flip_last_byte(weights)
        assert raised.value.exit_code == EXIT_VERIFICATION
        assert "changed: ./model.safetensors" in raised.value.diagnostics()
        assert nothing_written(request.run_log_output.parent) == []

    def test_the_secret_shows_only_in_the_container_environment(
        self, session: Session, docker_client: docker.DockerClient
    ) -> None:
        """Reads what the fixture ran (run with the secrets file, sample, stop, replay) and what
        this test runs itself, none of which starts a container; so it needs no other test to
        have run first. Whatever other tests ran before it is read too."""
        secret = session.secret
        session.cli(
            "eval-determinism",
            "--run-a",
            session.log("a"),
            "--run-b",
            session.log("b"),
            "--output",
            session.work / "secret-check.report.json",
        )
        session.cli("status", "--json", "--config", session.profile)
        session.cli("logs", "--tail", "100000", "--config", session.profile)
        commands = {ran.args[0] for ran in session.ran}
        assert {"run", "sample", "stop", "replay", "eval-determinism", "status", "logs"} <= commands
        for ran in session.ran:
            assert secret not in ran.text, f"the secret leaked through: {ran.args}"
        files = [path for path in session.work.rglob("*") if path.is_file()]
        assert {
            "a.runlog.jsonl",
            "a.sidecar.json",
            "b.sidecar.json",
            "replay.runlog.jsonl",
            "replay.sidecar.json",
            "report.json",
            "secret-check.report.json",
        } <= {path.name for path in files}
        for path in files:
            assert secret.encode() not in path.read_bytes(), f"the secret leaked into {path}"
        container = docker_client.containers.get(session.container)
        attrs = container.attrs
        assert f"{SECRET_NAME}={secret}" in attrs["Config"]["Env"]
        for where in (
            attrs["Config"]["Labels"],
            attrs["Config"]["Cmd"],
            attrs["Config"]["Entrypoint"],
            attrs["Path"],
            attrs["Args"],
        ):
            assert secret not in json.dumps(where)
        assert secret.encode() not in container.logs()

    def test_a_server_restarted_mid_run_voids_it(
        self, session: Session, docker_client: docker.DockerClient
    ) -> None:
        loaded = load_profile(session.profile)
        engine = DockerEngine.from_env()
        request = session.core_request("restarted")
        before = docker_client.containers.get(session.container).attrs["State"]["StartedAt"]

        def restart_after_second(done: int, tokens: int) -> None:
            if done == 2:
                docker_client.containers.get(session.container).restart(timeout=10)
                # ready again before returning, so that the next requests succeed
                lifecycle.wait(loaded, READY_TIMEOUT_S, engine=engine)

        with pytest.raises(ContainerError) as raised:
            sample(
                loaded,
                load_bundle(BUNDLE_DIR, BUNDLE_PIN),
                request,
                engine=engine,
                progress=restart_after_second,
            )
        assert raised.value.exit_code == EXIT_ENVIRONMENT
        assert "the server changed during the run; no run log was written" in raised.value.message
        assert any(before in detail for detail in raised.value.details), raised.value.details
        assert nothing_written(request.run_log_output.parent) == []

    def test_a_container_killed_mid_run_leaves_nothing(
        self, session: Session, docker_client: docker.DockerClient
    ) -> None:
        loaded = load_profile(session.profile)
        request = session.core_request("killed", n_prompts=16)

        def kill_after_second(done: int, tokens: int) -> None:
            if done == 2:
                docker_client.containers.get(session.container).kill()

        with pytest.raises(DetserveError) as raised:
            sample(
                loaded,
                load_bundle(BUNDLE_DIR, BUNDLE_PIN),
                request,
                engine=DockerEngine.from_env(),
                progress=kill_after_second,
            )
        assert raised.value.exit_code == EXIT_ENVIRONMENT, raised.value.diagnostics()
        assert isinstance(raised.value, ServerError | ContainerError)
        assert nothing_written(request.run_log_output.parent) == []
        assert docker_client.containers.get(session.container).status == "exited"
