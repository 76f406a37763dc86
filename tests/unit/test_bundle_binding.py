"""A bundle belongs to its model: the profile names its bundle, and a bundle measured with another
tokenizer (model id, revision, tokenizer files) is refused before any request.

Every command that samples is driven as a user drives it, against a real HTTP server in a thread
that answers as vLLM does and counts every request it receives, whatever its path: "before any
request" is that count staying at zero. Bundles "measured on another model" are the committed
reference bundle's prompts with the tokenizer ``bundle.json`` records changed one way at a time,
pinned as ``detserve hash`` pins a bundle; snapshot-side changes edit a copy of the tiny model and
hash it again, as a person who trusts the changed snapshot would.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from detserve import api
from detserve.bundle_binding import require_bundle_tokenizer
from detserve.canonical import canonical_bytes
from detserve.errors import BundleModelMismatch, UnpinnedError
from detserve.profile import LoadedProfile, load_profile
from detserve.prompts import PROMPTS_FILE, TOKENIZER_FILES, PromptBundle, load_bundle
from detserve.runtime.container_spec import ContainerSpec, build_container_spec
from detserve.runtime.docker_engine import ContainerInfo, ImageInfo
from detserve.sampling import SampleRequest, sample
from detserve.snapshot import build_manifest, write_manifest

from .committed import BUNDLE_DIR, BUNDLE_PIN, REPO_ROOT, TINY_CONFIG, TINY_REVISION, CliRunner
from .conftest import TinyWorkspace
from .containers import faithful_container, pinned_image
from .fake_http import Answer, serving
from .test_sampling_faults import IMAGE, FakeEngine, FakeVllm

EXIT_OK, EXIT_VERIFICATION, EXIT_INPUT = 0, 1, 2
TINY_ID = "detserve/tiny-llama"
REFERENCE = load_bundle(BUNDLE_DIR, BUNDLE_PIN)
REFERENCE_FILES = dict(REFERENCE.info.tokenizer.files)


class RecordingEngine(FakeEngine):
    """The profile's container; every question asked of the engine is recorded."""

    def __init__(self, container: ContainerInfo, image: ImageInfo) -> None:
        super().__init__(container, image)
        self.calls: list[str] = []

    def find(self, name: str) -> ContainerInfo | None:
        self.calls.append("find")
        return super().find(name)

    def inspect(self, container_id: str) -> ContainerInfo:
        self.calls.append("inspect")
        return super().inspect(container_id)

    def image_by_id(self, image_id: str) -> ImageInfo:
        self.calls.append("image_by_id")
        return super().image_by_id(image_id)

    def ensure_image(self, image: str) -> ImageInfo:
        self.calls.append("ensure_image")
        return self.image

    def create_and_start(self, spec: ContainerSpec) -> ContainerInfo:
        self.calls.append("create_and_start")
        return self.container


@dataclass
class Rig:
    """A pinned copy of the tiny profile whose port is a fake vLLM that counts every request."""

    workspace: TinyWorkspace
    fake: FakeVllm
    engine: RecordingEngine
    requests: list[tuple[str, str]] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.workspace.config

    @property
    def loaded(self) -> LoadedProfile:
        return load_profile(self.config)

    def edit(self, change: Callable[[dict[str, Any]], None]) -> None:
        document = json.loads(self.config.read_text(encoding="utf-8"))
        change(document)
        self.config.write_text(json.dumps(document, indent=2), encoding="utf-8")


@pytest.fixture
def rig(tiny_workspace: TinyWorkspace) -> Iterator[Rig]:
    fake = FakeVllm(n_tokens={p.prompt: p.n_tokens for p in REFERENCE.prompts})
    requests: list[tuple[str, str]] = []

    def counted(method: str, path: str, body: Any) -> Answer:
        requests.append((method, path))
        return fake.answer(method, path, body)

    with serving(counted) as port:
        document = json.loads(tiny_workspace.config.read_text(encoding="utf-8"))
        document["runtime"]["image"] = IMAGE
        document["runtime"]["port"] = port
        # should a refusal fail to come, a replay's wait gives up soon instead of in 10 minutes
        document["runtime"]["startup_timeout_s"] = 10
        tiny_workspace.config.write_text(json.dumps(document), encoding="utf-8")
        spec = build_container_spec(load_profile(tiny_workspace.config))
        engine = RecordingEngine(faithful_container(spec), pinned_image(spec))
        yield Rig(workspace=tiny_workspace, fake=fake, engine=engine, requests=requests)


def measured_on(directory: Path, **tokenizer: Any) -> tuple[Path, Path]:
    """The reference bundle's prompts, as if measured with ``tokenizer`` (fields of
    bundle.json's ``tokenizer`` replaced), and its pin: ``(bundle dir, pin)``."""
    info = REFERENCE.info.model_copy(
        update={"tokenizer": REFERENCE.info.tokenizer.model_copy(update=tokenizer)}
    )
    directory.mkdir(parents=True)
    shutil.copyfile(BUNDLE_DIR / PROMPTS_FILE, directory / PROMPTS_FILE)
    (directory / "bundle.json").write_bytes(canonical_bytes(info.model_dump()))
    pin = directory.with_name(directory.name + ".sha256")
    write_manifest(build_manifest(directory), pin, force=False)
    return directory, pin


OTHER_REVISION = "0123456789abcdef0123456789abcdef01234567"
ELSEWHERE = "ab" * 32

#: kind -> (the bundle's tokenizer, the detail line that names the difference)
MISMATCHES: dict[str, tuple[dict[str, Any], str]] = {
    "other model id": (
        {"model_id": "detserve/other-llama"},
        f"model id: bundle 'detserve/other-llama', profile '{TINY_ID}'",
    ),
    "other revision": (
        {"model_revision": OTHER_REVISION},
        f"model revision: bundle '{OTHER_REVISION}', profile '{TINY_REVISION}'",
    ),
    "changed tokenizer file": (
        {"files": REFERENCE_FILES | {"tokenizer.json": ELSEWHERE}},
        f"changed: 'tokenizer.json' bundle {ELSEWHERE}, snapshot "
        f"{REFERENCE_FILES['tokenizer.json']}",
    ),
    "tokenizer file in the bundle only": (
        {"files": REFERENCE_FILES | {"tokenizer.model": ELSEWHERE}},
        f"missing: 'tokenizer.model' (the bundle was measured with sha256 {ELSEWHERE}; the "
        "snapshot has no such file)",
    ),
    "a name outside the list, in the bundle only": (
        {"files": REFERENCE_FILES | {"added_tokens.json": ELSEWHERE}},
        "missing: 'added_tokens.json'",
    ),
    "tokenizer file in the snapshot only": (
        {"files": {k: v for k, v in REFERENCE_FILES.items() if k != "special_tokens_map.json"}},
        "extra: 'special_tokens_map.json' (sha256 "
        f"{REFERENCE_FILES['special_tokens_map.json']} in the snapshot; the bundle was measured "
        "without it)",
    ),
}


def sample_cli(cli: CliRunner, rig: Rig, out: Path, *options: str | Path) -> Any:
    return cli(
        "sample",
        "--config",
        rig.config,
        *options,
        "--run-log-output",
        out / "a.runlog.jsonl",
        "--sidecar-output",
        out / "a.sidecar.json",
    )


# --- the comparison -----------------------------------------------------------------------------


def test_the_reference_bundle_was_measured_on_the_tiny_profile() -> None:
    # the control: the committed bundle and the committed model agree, name for name
    assert set(REFERENCE_FILES) <= set(TOKENIZER_FILES)
    loaded = load_profile(TINY_CONFIG)
    digests = dict(build_manifest(loaded.snapshot_dir).digests)
    require_bundle_tokenizer(REFERENCE, loaded, digests)


@pytest.mark.parametrize("kind", sorted(MISMATCHES))
def test_each_kind_of_difference_is_named(kind: str, tmp_path: Path) -> None:
    tokenizer, detail = MISMATCHES[kind]
    directory, pin = measured_on(tmp_path / "other", **tokenizer)
    other = load_bundle(directory, pin)
    loaded = load_profile(TINY_CONFIG)
    digests = dict(build_manifest(loaded.snapshot_dir).digests)
    with pytest.raises(BundleModelMismatch) as raised:
        require_bundle_tokenizer(other, loaded, digests)
    error = raised.value
    assert error.exit_code == EXIT_VERIFICATION
    assert len(error.details) == 1
    assert error.details[0].startswith(detail), error.details
    assert f"prompt bundle {directory} was measured on another model" in error.message
    recorded = other.info.tokenizer
    assert f"bundle:  {recorded.model_id} at revision {recorded.model_revision}" in error.message
    assert f"profile: {TINY_ID} at revision {TINY_REVISION}" in error.message


def test_a_name_outside_the_list_that_both_sides_hold_alike_is_no_difference(
    tmp_path: Path,
) -> None:
    # bundle.json may name more files than detserve records today: compared, not ignored
    loaded = load_profile(TINY_CONFIG)
    digests = dict(build_manifest(loaded.snapshot_dir).digests)
    files = REFERENCE_FILES | {"config.json": digests["config.json"]}
    directory, pin = measured_on(tmp_path / "more", files=files)
    require_bundle_tokenizer(load_bundle(directory, pin), loaded, digests)
    with pytest.raises(BundleModelMismatch) as raised:
        require_bundle_tokenizer(
            load_bundle(directory, pin), loaded, digests | {"config.json": ELSEWHERE}
        )
    assert raised.value.details[0].startswith("changed: 'config.json'")


def test_differences_are_listed_in_order(tmp_path: Path) -> None:
    files = {k: v for k, v in REFERENCE_FILES.items() if k != "special_tokens_map.json"}
    files |= {"tokenizer.json": ELSEWHERE, "merges.txt": ELSEWHERE}
    directory, pin = measured_on(
        tmp_path / "other", model_id="a/b", model_revision=OTHER_REVISION, files=files
    )
    loaded = load_profile(TINY_CONFIG)
    with pytest.raises(BundleModelMismatch) as raised:
        require_bundle_tokenizer(
            load_bundle(directory, pin), loaded, build_manifest(loaded.snapshot_dir).digests
        )
    kinds = [line.split(":")[0] for line in raised.value.details]
    assert kinds == ["model id", "model revision", "missing", "extra", "changed"]


# --- before any request: every command that samples ---------------------------------------------


@pytest.mark.parametrize("kind", sorted(MISMATCHES))
def test_sample_refuses_a_bundle_of_another_model_before_any_request(
    kind: str, rig: Rig, cli: CliRunner, tmp_path: Path
) -> None:
    tokenizer, detail = MISMATCHES[kind]
    directory, pin = measured_on(tmp_path / "other", **tokenizer)
    out = tmp_path / "out"
    ran = sample_cli(cli, rig, out, "--bundle", directory, "--bundle-pin", pin)
    assert ran.code == EXIT_VERIFICATION, ran.err
    assert "was measured on another model" in ran.err
    assert f"profile: {TINY_ID} at revision {TINY_REVISION}" in ran.err
    assert detail in ran.err
    assert rig.requests == []
    assert not out.exists()


def test_sample_with_the_profiles_own_bundle_of_another_model_is_refused(
    rig: Rig, cli: CliRunner, tmp_path: Path
) -> None:
    # no flag: the bundle is the one the profile names
    directory, pin = measured_on(tmp_path / "other", model_id="detserve/other-llama")
    rig.edit(lambda d: d.update(prompts={"bundle": str(directory), "manifest": str(pin)}))
    ran = sample_cli(cli, rig, tmp_path / "out")
    assert ran.code == EXIT_VERIFICATION, ran.err
    assert "bundle:  detserve/other-llama at revision" in ran.err
    assert f"profile: {TINY_ID} at revision {TINY_REVISION}" in ran.err
    assert rig.requests == []


def test_the_sampler_checks_the_verified_snapshot_before_any_request(
    rig: Rig, tmp_path: Path
) -> None:
    # the core, without the loader's early check: refused against the manifest bytes the snapshot
    # is verified against, before the engine is asked and before any request
    directory, pin = measured_on(tmp_path / "other", model_id="detserve/other-llama")
    request = SampleRequest(
        n_prompts=2,
        max_tokens=4,
        logprobs=None,
        run_log_output=tmp_path / "out" / "a.runlog.jsonl",
        sidecar_output=tmp_path / "out" / "a.sidecar.json",
    )
    with pytest.raises(BundleModelMismatch):
        sample(rig.loaded, load_bundle(directory, pin), request, engine=rig.engine)
    assert rig.requests == []
    assert rig.engine.calls == []
    assert not (tmp_path / "out").exists()


def _retrust(workspace: TinyWorkspace, change: Callable[[Path], None]) -> None:
    """Change the snapshot copy and hash it again: a person who trusts the changed files."""
    change(workspace.snapshot)
    workspace.manifest.unlink()
    write_manifest(build_manifest(workspace.snapshot), workspace.manifest, force=False)


def _replace_link(snapshot: Path, name: str, content: bytes) -> None:
    (snapshot / name).unlink(missing_ok=True)
    (snapshot / name).write_bytes(content)


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        (
            lambda s: _replace_link(s, "tokenizer_config.json", b'{"model_max_length": 8}\n'),
            "changed: 'tokenizer_config.json' bundle",
        ),
        (lambda s: _replace_link(s, "vocab.json", b"{}\n"), "extra: 'vocab.json'"),
        (lambda s: (s / "special_tokens_map.json").unlink(), "missing: 'special_tokens_map.json'"),
    ],
    ids=["changed file", "file added to the snapshot", "file gone from the snapshot"],
)
def test_a_snapshot_with_other_tokenizer_files_refuses_the_bundle(
    change: Callable[[Path], None], detail: str, rig: Rig, cli: CliRunner, tmp_path: Path
) -> None:
    _retrust(rig.workspace, change)
    ran = sample_cli(cli, rig, tmp_path / "out")
    assert ran.code == EXIT_VERIFICATION, ran.err
    assert detail in ran.err
    assert rig.requests == []
    # and the sampler itself, against the digests it just verified
    request = SampleRequest(
        n_prompts=2,
        max_tokens=4,
        logprobs=None,
        run_log_output=tmp_path / "core" / "a.runlog.jsonl",
        sidecar_output=tmp_path / "core" / "a.sidecar.json",
    )
    with pytest.raises(BundleModelMismatch):
        sample(rig.loaded, REFERENCE, request, engine=rig.engine)
    assert rig.requests == []


def test_check_refuses_before_any_request(rig: Rig, cli: CliRunner, tmp_path: Path) -> None:
    directory, pin = measured_on(tmp_path / "other", model_revision=OTHER_REVISION)
    ran = cli(
        "check",
        "--config",
        rig.config,
        "--bundle",
        directory,
        "--bundle-pin",
        pin,
        "--output-dir",
        tmp_path / "pack",
    )
    assert ran.code == EXIT_VERIFICATION, ran.err
    assert "model revision: bundle" in ran.err
    assert rig.requests == []
    assert not (tmp_path / "pack").exists()


def test_check_core_refuses_after_verification_before_any_request(rig: Rig, tmp_path: Path) -> None:
    from detserve.diagnosis.check import run_check
    from detserve.diagnosis.measure import CheckPlan

    directory, pin = measured_on(tmp_path / "other", model_revision=OTHER_REVISION)
    plan = CheckPlan(
        tier=1,
        runs=2,
        levels=(1, 2),
        n_prompts=2,
        max_tokens=4,
        logprobs=None,
        shuffle=False,
        shuffle_seed=0,
    )
    with pytest.raises(BundleModelMismatch):
        run_check(rig.loaded, load_bundle(directory, pin), plan, engine=rig.engine)
    assert rig.requests == []
    assert rig.engine.calls == []


def _claim(rig: Rig, tmp_path: Path, bundle: PromptBundle) -> Path:
    """A genuine claim sampled from the fake server, then re-pinned to ``bundle``'s hash."""
    from detserve.runlog import read_run_log, write_run_log

    out = tmp_path / "claim"
    request = SampleRequest(
        n_prompts=2,
        max_tokens=4,
        logprobs=None,
        run_log_output=out / "a.runlog.jsonl",
        sidecar_output=out / "a.sidecar.json",
    )
    sample(rig.loaded, REFERENCE, request, engine=rig.engine)
    records = list(read_run_log(request.run_log_output))
    header = records[0].model_dump(mode="json")
    header["pins"]["prompt_bundle_sha256"] = bundle.sha256
    claim = out / "claim.runlog.jsonl"
    write_run_log(claim, header, [r.model_dump(mode="json") for r in records[1:-1]])
    rig.requests.clear()
    rig.engine.calls.clear()
    return claim


def test_replay_starts_nothing_for_a_bundle_of_another_model(rig: Rig, tmp_path: Path) -> None:
    # a claim whose pins match the profile and the other bundle: only the model check stops it
    directory, pin = measured_on(tmp_path / "other", model_id="detserve/other-llama")
    claim = _claim(rig, tmp_path, load_bundle(directory, pin))
    with pytest.raises(BundleModelMismatch):
        api.replay(
            claim,
            rig.config,
            output_dir=tmp_path / "replay",
            bundle=directory,
            bundle_pin=pin,
            engine=rig.engine,
        )
    assert rig.engine.calls == []
    assert rig.requests == []
    assert not (tmp_path / "replay").exists()


def test_fleet_asks_no_node_for_a_bundle_of_another_model(
    rig: Rig, cli: CliRunner, tmp_path: Path
) -> None:
    directory, pin = measured_on(tmp_path / "other", model_id="detserve/other-llama")
    claim = _claim(rig, tmp_path, load_bundle(directory, pin))
    rig.edit(lambda d: d.update(prompts={"bundle": str(directory), "manifest": str(pin)}))
    ran = cli(
        "fleet",
        "--config",
        rig.config,
        "--claim",
        claim,
        "--node",
        "unix:///nonexistent/docker.sock",
        "--output-dir",
        tmp_path / "fleet",
    )
    assert ran.code == EXIT_VERIFICATION, ran.err
    assert "was measured on another model" in ran.err
    assert rig.requests == []
    assert not (tmp_path / "fleet").exists()


def test_prompts_verify_with_a_profile_checks_the_model(cli: CliRunner, tmp_path: Path) -> None:
    directory, pin = measured_on(tmp_path / "other", model_id="detserve/other-llama")
    ran = cli(
        "prompts", "verify", "--config", TINY_CONFIG, "--bundle", directory, "--bundle-pin", pin
    )
    assert ran.code == EXIT_VERIFICATION, ran.err
    assert "model id: bundle 'detserve/other-llama'" in ran.err
    # the same bundle is a valid bundle when no model is asked about
    assert cli("prompts", "verify", "--bundle", directory, "--bundle-pin", pin).code == EXIT_OK


# --- which bundle -------------------------------------------------------------------------------

REFERENCE_BUNDLES = ("reference_prompts", "chat_prompts", "json_prompts", "regex_prompts")


def test_the_tiny_profile_names_its_bundle(cli: CliRunner) -> None:
    ran = cli("prompts", "verify", "--config", TINY_CONFIG, "--json")
    assert ran.code == EXIT_OK, ran.err
    document = json.loads(ran.out)
    assert Path(document["bundle"]) == BUNDLE_DIR
    assert document["bundle_sha256"] == REFERENCE.sha256
    assert (document["model_id"], document["model_revision"]) == (TINY_ID, TINY_REVISION)


@pytest.mark.parametrize("name", [*REFERENCE_BUNDLES, "choice_prompts", "grammar_prompts"], ids=str)
def test_every_committed_bundle_was_measured_on_the_tiny_model(name: str) -> None:
    pin = REPO_ROOT / "manifests" / name / f"{name}.sha256"
    loaded = api.load_prompts(REPO_ROOT / "artifacts" / name, pin, config=TINY_CONFIG)
    assert loaded.info.tokenizer.model_id == TINY_ID


def test_the_profiles_bundle_is_relative_to_the_profile_file(
    tiny_workspace: TinyWorkspace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # not the repository: nothing is found through the working dir
    loaded = api.load_prompts(config=tiny_workspace.config)
    assert loaded.path == tiny_workspace.root / "artifacts" / "reference_prompts"
    assert loaded.pin_path == (
        tiny_workspace.root / "manifests" / "reference_prompts" / "reference_prompts.sha256"
    )


def test_flags_override_the_profiles_bundle(tiny_workspace: TinyWorkspace) -> None:
    chat = REPO_ROOT / "artifacts" / "chat_prompts"
    chat_pin = REPO_ROOT / "manifests" / "chat_prompts" / "chat_prompts.sha256"
    loaded = api.load_prompts(chat, chat_pin, config=tiny_workspace.config)
    assert (loaded.path, loaded.pin_path) == (chat, chat_pin)


def _without_prompts(document: dict[str, Any]) -> None:
    del document["prompts"]


SAMPLING_COMMANDS: dict[str, Callable[[Path, Path], list[str | Path]]] = {
    "sample": lambda config, out: [
        "sample",
        "--config",
        config,
        "--run-log-output",
        out / "a.runlog.jsonl",
        "--sidecar-output",
        out / "a.sidecar.json",
    ],
    "check": lambda config, out: ["check", "--config", config, "--output-dir", out],
    "replay": lambda config, out: [
        "replay",
        "--claim",
        out / "claim.runlog.jsonl",
        "--config",
        config,
        "--output-dir",
        out,
    ],
    "fleet": lambda config, out: [
        "fleet",
        "--config",
        config,
        "--claim",
        out / "claim.runlog.jsonl",
        "--output-dir",
        out,
    ],
}


@pytest.mark.parametrize("command", sorted(SAMPLING_COMMANDS))
def test_a_profile_naming_no_bundle_is_bad_input_naming_the_field(
    command: str, rig: Rig, cli: CliRunner, tmp_path: Path
) -> None:
    rig.edit(_without_prompts)
    ran = cli(*SAMPLING_COMMANDS[command](rig.config, tmp_path / "out"))
    assert ran.code == EXIT_INPUT, ran.err
    assert f"profile {rig.config} names no prompt bundle" in ran.err
    assert "prompts.bundle: unset (or pass --bundle DIR)" in ran.err
    assert "prompts.manifest: unset (or pass --bundle-pin FILE)" in ran.err
    assert f"detserve prompts bootstrap --config {rig.config}" in ran.err
    assert rig.requests == []


@pytest.mark.parametrize("command", sorted(SAMPLING_COMMANDS))
def test_a_bundle_the_profile_names_but_nobody_pinned_yet_is_bad_input(
    command: str, rig: Rig, cli: CliRunner, tmp_path: Path
) -> None:
    rig.edit(
        lambda d: d.update(
            prompts={"bundle": "../artifacts/mine", "manifest": "../manifests/mine/mine.sha256"}
        )
    )
    ran = cli(*SAMPLING_COMMANDS[command](rig.config, tmp_path / "out"))
    assert ran.code == EXIT_INPUT, ran.err
    assert "prompts.manifest: ../manifests/mine/mine.sha256 (not found)" in ran.err
    pin = rig.workspace.root / "manifests" / "mine" / "mine.sha256"
    assert f"--manifest-output {pin}" in ran.err
    assert rig.requests == []


def test_flags_stand_in_for_a_profile_naming_no_bundle(rig: Rig) -> None:
    rig.edit(_without_prompts)
    loaded = api.load_prompts(BUNDLE_DIR, BUNDLE_PIN, config=rig.config)
    assert loaded.sha256 == REFERENCE.sha256
    with pytest.raises(UnpinnedError) as raised:
        api.load_prompts(BUNDLE_DIR, None, config=rig.config)
    assert raised.value.details == ("prompts.manifest: unset (or pass --bundle-pin FILE)",)


def test_the_bundle_is_not_part_of_the_containers_binding(rig: Rig, tmp_path: Path) -> None:
    before = rig.loaded.content_sha256
    rig.edit(lambda d: d.update(prompts={"bundle": "x", "manifest": "y"}))
    assert rig.loaded.content_sha256 == before
    rig.edit(_without_prompts)
    assert rig.loaded.content_sha256 == before
    rig.edit(lambda d: d["sampling"].update(max_tokens=31))
    assert rig.loaded.content_sha256 != before
