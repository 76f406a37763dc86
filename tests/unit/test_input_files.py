"""Every file a command reads, given as something that is not a small regular file, is bad input.

A table of every option (or derived path) through which a command reads a file, crossed with what
must be refused before anything is read: a FIFO (which blocked the open for ever), a device
(``/dev/zero`` filled memory), a directory, a dangling symbolic link and a file over the kind's
size cap (sparse, so it costs no disk). Each must exit 2, at once, naming the path, and never be
an internal error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from detserve import fileio
from detserve.certificate import MAX_CERTIFICATE_BYTES
from detserve.errors import EXIT_INPUT

from .committed import BUNDLE_DIR, BUNDLE_PIN, CliRunner, TinyWorkspace, sha256_hex
from .runlog_builders import write_log


@dataclass(frozen=True)
class World:
    """Valid inputs for every command, so that the one bad input is what is refused."""

    ws: TinyWorkspace
    tmp: Path
    run_a: Path
    run_b: Path
    dataset: Path
    secrets: Path

    @property
    def bad(self) -> Path:
        return self.tmp / "bad-input"


@pytest.fixture
def world(tiny_workspace: TinyWorkspace, tmp_path: Path) -> World:
    document = json.loads(tiny_workspace.config.read_text(encoding="utf-8"))
    document["runtime"]["image"] = "127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "5a" * 32
    tiny_workspace.config.write_text(json.dumps(document, indent=2), encoding="utf-8")
    dataset = tmp_path / "data.jsonl"
    dataset.write_text('{"text": "hello"}\n', encoding="utf-8")
    secrets = tmp_path / "ok.env"
    secrets.write_text("HF_TOKEN=hf_x\n", encoding="utf-8")
    return World(
        ws=tiny_workspace,
        tmp=tmp_path,
        run_a=write_log(tmp_path / "a.runlog.jsonl", 3),
        run_b=write_log(tmp_path / "b.runlog.jsonl", 3),
        dataset=dataset,
        secrets=secrets,
    )


Args = Callable[[World], tuple[list[str | Path], Path]]


def _config(*command: str) -> Args:
    """``command --config BAD ...``."""

    def args(w: World) -> tuple[list[str | Path], Path]:
        return [*command[:1], *command[1:], "--config", w.bad], w.bad

    return args


def _bootstrap(w: World, config: Path, dataset: Path) -> list[str | Path]:
    return [
        "prompts", "bootstrap", "--config", config, "--output-dir", w.tmp / "out",
        "--n-prompts", "1", "--dataset-file", dataset, "--dataset-sha256", "0" * 64,
    ]  # fmt: skip


def _sample(w: World, config: Path, pin: Path) -> list[str | Path]:
    return [
        "sample", "--config", config, "--bundle", BUNDLE_DIR, "--bundle-pin", pin,
        "--run-log-output", w.tmp / "o.runlog.jsonl", "--output", w.tmp / "o.sidecar.json",
    ]  # fmt: skip


def _keys(w: World) -> tuple[Path, Path]:
    """A genuine key pair in the world (made once)."""
    from detserve.keys import generate_key_pair

    private, public = w.tmp / "keys" / "detserve.key", w.tmp / "keys" / "detserve.pub"
    if not private.exists():
        generate_key_pair(w.tmp / "keys")
    return private, public


def _sidecar(w: World) -> Path:
    """A sidecar of run A without an environment fingerprint (so --environment is read)."""
    from detserve.runlog import run_log_sha256

    sidecar = w.tmp / "a.sidecar.json"
    sidecar.write_text(json.dumps({"run_log_sha256": run_log_sha256(w.run_a)}), encoding="utf-8")
    return sidecar


def _attest(
    w: World,
    *,
    key: Path | None = None,
    run_log: Path | None = None,
    sidecar: Path | None = None,
    environment: Path | None = None,
) -> list[str | Path]:
    args: list[str | Path] = [
        "attest", "--run-log", run_log or w.run_a, "--sidecar", sidecar or _sidecar(w),
        "--key", key or _keys(w)[0], "--envelope-output", w.tmp / "claim.intoto.json",
    ]  # fmt: skip
    if environment is not None:
        args += ["--environment", environment]
    return args


def _verify_claim(
    w: World, *, envelope: Path | None = None, public_key: Path | None = None
) -> list[str | Path]:
    dummy = w.tmp / "dummy.intoto.json"
    dummy.write_text("{}", encoding="utf-8")
    return [
        "verify-claim", "--envelope", envelope or dummy,
        "--public-key", public_key or _keys(w)[1], "--run-log", w.run_a,
    ]  # fmt: skip


def _model_signature(w: World) -> tuple[Path, Path]:
    """The tiny model signed by its publisher's key (made once), and the public key."""
    from .signing_rig import KeyPair, publish_model, sign_with_key

    folder = w.tmp / "publisher"
    if not (folder / "model.sig").exists():
        keys = KeyPair.make(folder, "publisher")
        sign_with_key(publish_model(folder / "model"), folder / "model.sig", keys)
    return folder / "model.sig", folder / "publisher.pub"


def _signed(
    w: World, command: str, *, signature: Path | None = None, trust: Path | None = None
) -> list[str | Path]:
    """``hash``/``verify`` of the tiny snapshot with a model signature, one piece bad. The trust
    root is read before the signature's form is checked, so a key signature serves both forms."""
    good_signature, good_key = _model_signature(w)
    verb, option = command.split()
    target: list[str | Path] = (
        ["--manifest-output", w.tmp / "m.sha256"]
        if verb == "hash"
        else ["--manifest", w.ws.manifest]
    )
    return [
        verb, "--snapshot", w.ws.snapshot, *target,
        "--model-signature", signature or good_signature, option, trust or good_key,
    ]  # fmt: skip


def _mkdir(directory: Path, *, mode: int = 0o777) -> Path:
    directory.mkdir(mode=mode, exist_ok=True)
    return directory


def _replay(w: World, config: Path, pin: Path, claim: Path) -> list[str | Path]:
    return [
        "replay", "--claim", claim, "--config", config, "--bundle", BUNDLE_DIR,
        "--bundle-pin", pin, "--output-dir", w.tmp / "replay",
    ]  # fmt: skip


#: (id, the command line with the bad path and where the bad thing goes, the cap of its kind)
INPUTS: list[tuple[str, Args, int]] = [
    *(
        (f"{' '.join(command)} --config", _config(*command), fileio.MAX_PROFILE_BYTES)
        for command in [
            ("config", "validate"),
            ("verify",),
            ("lock-model",),
            ("lock-image",),
            ("download",),
            ("start",),
            ("wait",),
            ("smoke",),
            ("stop",),
            ("run",),
            ("status",),
            ("logs",),
            ("env",),
            ("doctor",),
        ]
    ),
    (
        "attest --key",
        lambda w: (_attest(w, key=w.bad), w.bad),
        4 * 1024 * 1024,
    ),
    (
        "attest --run-log",
        lambda w: (_attest(w, run_log=w.bad), w.bad),
        fileio.MAX_RUN_LOG_BYTES,
    ),
    (
        "attest --sidecar",
        lambda w: (_attest(w, sidecar=w.bad), w.bad),
        4 * 1024 * 1024,
    ),
    (
        "attest --environment",
        lambda w: (_attest(w, environment=w.bad), w.bad),
        1024 * 1024,
    ),
    (
        "verify-claim --public-key",
        lambda w: (_verify_claim(w, public_key=w.bad), w.bad),
        4 * 1024 * 1024,
    ),
    (
        "verify-claim --envelope",
        lambda w: (_verify_claim(w, envelope=w.bad), w.bad),
        4 * 1024 * 1024,
    ),
    (
        "hash --config",
        lambda w: (["hash", "--config", w.bad, "--output", w.tmp / "m.sha256"], w.bad),
        fileio.MAX_PROFILE_BYTES,
    ),
    (
        "prompts bootstrap --config",
        lambda w: (_bootstrap(w, w.bad, w.dataset), w.bad),
        fileio.MAX_PROFILE_BYTES,
    ),
    (
        "sample --config",
        lambda w: (_sample(w, w.bad, BUNDLE_PIN), w.bad),
        fileio.MAX_PROFILE_BYTES,
    ),
    (
        "replay --config",
        lambda w: (_replay(w, w.bad, BUNDLE_PIN, w.run_a), w.bad),
        fileio.MAX_PROFILE_BYTES,
    ),
    (
        "verify --manifest",
        lambda w: (["verify", "--snapshot", w.ws.snapshot, "--manifest", w.bad], w.bad),
        fileio.MAX_MANIFEST_BYTES,
    ),
    (
        "verify --config (the profile's manifest)",
        lambda w: (["verify", "--config", w.ws.config], w.ws.manifest),
        fileio.MAX_MANIFEST_BYTES,
    ),
    (
        "start --config (the profile's manifest)",
        lambda w: (["start", "--config", w.ws.config], w.ws.manifest),
        fileio.MAX_MANIFEST_BYTES,
    ),
    (
        "prompts verify --bundle-pin",
        lambda w: (["prompts", "verify", "--bundle", BUNDLE_DIR, "--bundle-pin", w.bad], w.bad),
        fileio.MAX_MANIFEST_BYTES,
    ),
    (
        "sample --bundle-pin",
        lambda w: (_sample(w, w.ws.config, w.bad), w.bad),
        fileio.MAX_MANIFEST_BYTES,
    ),
    (
        "sample --certificate",
        lambda w: (
            [
                *_sample(w, w.ws.config, BUNDLE_PIN),
                "--concurrency",
                "4",
                "--certificate",
                w.bad,
                "--certificate-key",
                _keys(w)[1],
            ],
            w.bad,
        ),
        MAX_CERTIFICATE_BYTES,
    ),
    (
        "sample --certificate-key",
        lambda w: (
            [
                *_sample(w, w.ws.config, BUNDLE_PIN),
                "--concurrency",
                "4",
                "--certificate",
                w.tmp / "certificate.json",
                "--certificate-key",
                w.bad,
            ],
            w.bad,
        ),
        4 * 1024 * 1024,
    ),
    (
        "check --signing-key",
        lambda w: (
            [
                "check",
                "--config",
                w.ws.config,
                "--bundle",
                BUNDLE_DIR,
                "--bundle-pin",
                BUNDLE_PIN,
                "--output-dir",
                w.tmp / "check",
                "--signing-key",
                w.bad,
            ],
            w.bad,
        ),
        4 * 1024 * 1024,
    ),
    (
        "replay --bundle-pin",
        lambda w: (_replay(w, w.ws.config, w.bad, w.run_a), w.bad),
        fileio.MAX_MANIFEST_BYTES,
    ),
    (
        "replay --claim",
        lambda w: (_replay(w, w.ws.config, BUNDLE_PIN, w.bad), w.bad),
        fileio.MAX_RUN_LOG_BYTES,
    ),
    (
        "eval-determinism --run-a",
        lambda w: (["eval-determinism", "--run-a", w.bad, "--run-b", w.run_b], w.bad),
        fileio.MAX_RUN_LOG_BYTES,
    ),
    (
        "eval-determinism --run-b",
        lambda w: (["eval-determinism", "--run-a", w.run_a, "--run-b", w.bad], w.bad),
        fileio.MAX_RUN_LOG_BYTES,
    ),
    (
        "eval-determinism --run-a --expected-hash",
        lambda w: (["eval-determinism", "--run-a", w.bad, "--expected-hash", "0" * 64], w.bad),
        fileio.MAX_RUN_LOG_BYTES,
    ),
    (
        "eval-determinism --run",
        lambda w: (
            ["eval-determinism", "--run", w.run_a, "--run", w.run_b, "--run", w.bad],
            w.bad,
        ),
        fileio.MAX_RUN_LOG_BYTES,
    ),
    (
        "prompts bootstrap --dataset-file",
        lambda w: (_bootstrap(w, w.ws.config, w.bad), w.bad),
        fileio.MAX_DATASET_BYTES,
    ),
    (
        "serve --transcript-dir (a segment of an earlier run in it)",
        lambda w: (
            ["serve", "--config", w.ws.config, "--transcript-dir", w.tmp / "gateway"],
            _mkdir(w.tmp / "gateway", mode=0o700) / f"{'d' * 32}.000000.transcript.jsonl",
        ),
        fileio.MAX_RUN_LOG_BYTES,
    ),
    *(
        (
            f"{verb} --model-signature",
            lambda w, verb=verb: (_signed(w, f"{verb} --public-key", signature=w.bad), w.bad),
            64 * 1024 * 1024,
        )
        for verb in ("hash", "verify")
    ),
    *(
        (
            f"{verb} --model-signature {option}",
            lambda w, verb=verb, option=option: (
                _signed(w, f"{verb} {option}", trust=w.bad),
                w.bad,
            ),
            1024 * 1024,
        )
        for verb in ("hash", "verify")
        for option in ("--public-key", "--certificate-chain")
    ),
    (
        "download --secrets-file",
        # read before the hub is asked: nothing listens at this address
        lambda w: (
            [
                "download",
                "--config",
                w.ws.config,
                "--endpoint",
                "http://127.0.0.1:9",
                "--secrets-file",
                w.bad,
            ],
            w.bad,
        ),
        fileio.MAX_SECRETS_BYTES,
    ),
    (
        "start --secrets-file",
        lambda w: (["start", "--config", w.ws.config, "--secrets-file", w.bad], w.bad),
        fileio.MAX_SECRETS_BYTES,
    ),
]


def _plant(kind: str, where: Path, cap: int) -> None:
    """Put a ``kind`` thing at ``where``, replacing what is there."""
    if where.exists() or where.is_symlink():
        where.unlink()
    if kind == "fifo":
        os.mkfifo(where)
    elif kind == "device":
        where.symlink_to("/dev/zero")  # the link is followed: the device is what is checked
    elif kind == "directory":
        where.mkdir()
    elif kind == "dangling-symlink":
        where.symlink_to(where.parent / "nowhere")
    elif kind == "oversized":
        with where.open("wb") as handle:
            handle.truncate(cap + 1)  # sparse: no disk, and nothing reads it
    else:
        raise AssertionError(kind)


#: each kind, and what the refusal says about it
KINDS = {
    "fifo": ("a FIFO",),
    "device": ("a character device",),
    "directory": ("directory",),
    "dangling-symlink": ("No such file or directory", "manifest not found"),
    "oversized": ("over the limit",),
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("args", "cap"), [(a, c) for _, a, c in INPUTS], ids=[i for i, *_ in INPUTS]
)
def test_an_input_that_is_not_a_small_regular_file_exits_2(
    world: World, cli: CliRunner, args: Args, cap: int, kind: str
) -> None:
    argv, where = args(world)
    _plant(kind, where, cap)
    result = cli(*argv)
    assert result.code == EXIT_INPUT, result.text
    assert "internal error" not in result.err
    assert where.name in result.err, result.err  # the path is named (click may abbreviate it)
    assert any(said in result.err for said in KINDS[kind]), result.err


@pytest.mark.timeout(20)
@pytest.mark.parametrize("args", [a for _, a, _ in INPUTS], ids=[i for i, *_ in INPUTS])
def test_a_20_mib_path_is_refused_in_a_bounded_message(
    world: World, cli: CliRunner, args: Args, monkeypatch: pytest.MonkeyPatch
) -> None:
    huge = Path("d/" + "x" * (20 * 1024 * 1024))
    argv, where = args(world)
    if where != world.bad:
        pytest.skip("the path is the profile's, not an option")
    argv = [huge if arg == world.bad else arg for arg in argv]
    result = cli(*argv)
    assert result.code == EXIT_INPUT, result.err[:1000]
    assert "internal error" not in result.err
    assert len(result.err) < 20_000, len(result.err)


def test_every_input_option_is_in_the_table() -> None:
    """A new option that names a file must be added to the table above."""
    from detserve.cli.app import _COMMAND_MODULES, app

    for module in _COMMAND_MODULES:
        __import__(f"detserve.cli.{module}")
    file_options = {"--config", "--manifest", "--bundle-pin", "--claim", "--run-a", "--run-b",
                    "--run", "--dataset-file", "--secrets-file", "--key", "--run-log",
                    "--sidecar", "--environment", "--public-key", "--envelope",
                    "--certificate", "--certificate-key", "--signing-key",
                    "--model-signature", "--certificate-chain"}  # fmt: skip
    covered = {option for name, *_ in INPUTS for option in name.split() if option.startswith("--")}
    assert file_options <= covered

    import typing

    import typer

    def commands(typer_app: typer.Typer) -> list[typing.Callable[..., object]]:
        found = [info.callback for info in typer_app.registered_commands if info.callback]
        for group in typer_app.registered_groups:
            if group.typer_instance is not None:
                found += commands(group.typer_instance)
        return found

    seen: set[str] = set()
    for callback in commands(app):
        hints = typing.get_type_hints(callback, include_extras=True)
        for hint in hints.values():
            if typing.get_origin(hint) is not typing.Annotated or "Path" not in str(hint):
                continue
            option = hint.__metadata__[0]
            if getattr(option, "file_okay", True) is False:
                continue  # a directory
            names = [option.default, *(option.param_decls or ())]
            long = [n for n in names if isinstance(n, str) and n.startswith("--")]
            # outputs: named for what they are, and --junit-xml (tests/unit/test_output_files.py)
            seen.update(n for n in long if "output" not in n and n != "--junit-xml")
    assert "--config" in seen  # the walk finds options at all
    assert "--claim" in seen
    assert seen <= file_options, f"file options not in the table: {sorted(seen - file_options)}"


def test_a_dataset_that_is_the_right_one_still_reads(world: World, cli: CliRunner) -> None:
    """The refusals above are not refusals of everything: the same command with valid inputs
    gets past reading (here, to the dataset hash check, exit 1)."""
    argv = _bootstrap(world, world.ws.config, world.dataset)
    result = cli(*argv)
    assert "does not match the given sha256" in result.err, result.err
    assert sha256_hex(world.dataset.read_bytes()) in result.err
