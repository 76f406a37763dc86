"""The face's snapshot verbs: verify and hash a snapshot, download it, and lock the pins.

The lock functions are the only ones that create pins. Each function is a thin wrapper: it takes
paths (or a loaded profile), calls the room that does the work (:mod:`detserve.snapshot`,
:mod:`detserve.download`, :mod:`detserve.locks`) and returns a frozen result.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from detserve.api._common import ProfileLike, load_profile
from detserve.errors import UsageError
from detserve.fileio import check_outputs

if TYPE_CHECKING:
    # the defaults and SignedVerifyReport are served by __getattr__ below, on first use
    from detserve.download import DEFAULT_EXCLUDE as DEFAULT_EXCLUDE
    from detserve.download import DEFAULT_INCLUDE as DEFAULT_INCLUDE
    from detserve.download import DEFAULT_WORKERS as DEFAULT_WORKERS
    from detserve.download import DownloadObserver, DownloadPlan, DownloadResult
    from detserve.locks import LockResult
    from detserve.profile import LoadedProfile
    from detserve.signed_snapshot import SignedVerifyReport as SignedVerifyReport
    from detserve.signed_statement import SignedModel
    from detserve.snapshot import VerifyReport


#: what ``download`` fetches, leaves out and fetches at once unless told otherwise (the CLI's help
#: says them), and what ``verify`` returns with a publisher's signature: imported when first asked
#: for, so that ``import detserve.api`` stays light
_LAZY = {
    "DEFAULT_EXCLUDE": "detserve.download",
    "DEFAULT_INCLUDE": "detserve.download",
    "DEFAULT_WORKERS": "detserve.download",
    "SignedVerifyReport": "detserve.signed_snapshot",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class BytesObserver(Protocol):
    """Told how many bytes there are to hash, then each chunk hashed (from several threads)."""

    def set_total(self, total: int) -> None: ...

    def advance(self, count: int) -> None: ...


# --- verify and hash ---------------------------------------------------------------------------


def _snapshot_of(
    config: ProfileLike | None, snapshot: Path | str | None
) -> tuple[Path, LoadedProfile | None]:
    if config is not None:
        if snapshot is not None:
            raise UsageError(
                "--snapshot and --config are exclusive: the profile names the snapshot"
            )
        loaded = load_profile(config)
        loaded.require_pins(("model.revision",))
        return loaded.snapshot_dir, loaded
    if snapshot is None:
        raise UsageError("give --config PROFILE, or --snapshot DIR (with --manifest PATH)")
    return Path(snapshot), None


def verify(
    config: ProfileLike | None = None,
    *,
    snapshot: Path | str | None = None,
    manifest: Path | str | None = None,
    workers: int | None = None,
    observer: BytesObserver | None = None,
    model_signature: Path | str | None = None,
    public_key: Path | str | None = None,
    certificate_chain: Sequence[Path | str] = (),
) -> VerifyReport:
    """Verify every file of a snapshot against its sha256 manifest; raise on any difference.

    Give a profile (its pinned snapshot and committed manifest), or any ``snapshot`` directory
    with a ``manifest``. Raises :class:`~detserve.errors.SnapshotMismatch` (exit 1) naming every
    missing, extra, changed or unsafe file, :class:`~detserve.errors.ManifestError` (exit 2) for a
    missing or malformed manifest.

    With ``model_signature`` (and ``public_key`` or ``certificate_chain``), the publisher's
    signature is verified too, and the snapshot, the manifest and the signature must agree on
    every file (each file read once); the report is a ``SignedVerifyReport``.

    >>> report = detserve.verify("configs/tiny-cpu.json")          # doctest: +SKIP
    >>> report.files, report.manifest_sha256                       # doctest: +SKIP
    """
    from detserve.snapshot import verify_snapshot

    snapshot_dir, loaded = _snapshot_of(config, snapshot)
    if manifest is None:
        if loaded is None:
            raise UsageError("--snapshot needs --manifest PATH")
        manifest_path = loaded.manifest_path
    else:
        manifest_path = Path(manifest)
    progress = observer.advance if observer is not None else None
    on_total = observer.set_total if observer is not None else None
    signed = _signed_model(model_signature, public_key, certificate_chain)
    if signed is not None:
        from detserve.signed_snapshot import verify_signed_snapshot

        return verify_signed_snapshot(
            snapshot_dir,
            manifest_path,
            signed,
            workers=workers,
            progress=progress,
            on_total=on_total,
        )
    return verify_snapshot(
        snapshot_dir, manifest_path, workers=workers, progress=progress, on_total=on_total
    )


def _signed_model(
    model_signature: Path | str | None,
    public_key: Path | str | None,
    certificate_chain: Sequence[Path | str],
) -> SignedModel | None:
    """The verified content of ``model_signature``, before any file of the snapshot is read."""
    if model_signature is None:
        if public_key is not None or certificate_chain:
            raise UsageError("--public-key and --certificate-chain verify a --model-signature")
        return None
    from detserve.model_signature import SignatureTrust, verify_model_signature

    trust = SignatureTrust.of(public_key, certificate_chain)
    return verify_model_signature(Path(model_signature), trust)


@dataclass(frozen=True)
class HashResult:
    """A manifest written by :func:`hash_snapshot`."""

    manifest: Path
    manifest_sha256: str
    files: int
    bytes: int
    seconds: float
    snapshot: Path
    #: the verified model signature the manifest was derived from, if any
    signature: SignedModel | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "manifest": str(self.manifest),
            "manifest_sha256": self.manifest_sha256,
            "files": self.files,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "throughput_bytes_per_s": round(self.bytes / self.seconds) if self.seconds else None,
            "snapshot": str(self.snapshot),
            "signature": None if self.signature is None else self.signature.as_json(),
        }


def hash_snapshot(
    config: ProfileLike | None = None,
    *,
    output: Path | str,
    snapshot: Path | str | None = None,
    force: bool = False,
    workers: int | None = None,
    observer: BytesObserver | None = None,
    model_signature: Path | str | None = None,
    public_key: Path | str | None = None,
    certificate_chain: Sequence[Path | str] = (),
) -> HashResult:
    """Hash every file of a snapshot into a coreutils-compatible sha256 manifest at ``output``.

    Making a manifest creates a trust root: review it and commit it. The output is checked
    before hashing (a regular file or nothing, not inside the snapshot, not replaced without
    ``force``) and written atomically.

    With ``model_signature`` (and ``public_key`` or ``certificate_chain``), the manifest is
    derived from the publisher's signature instead: written only once the signature verifies
    and the snapshot holds exactly the signed files with the signed digests. Raises
    :class:`~detserve.errors.SignatureInvalid` or
    :class:`~detserve.errors.SignatureMismatch` (exit 1), or
    :class:`~detserve.errors.ModelSignatureError` (exit 2).
    """
    import time

    from detserve.snapshot import build_manifest, write_manifest

    snapshot_dir, loaded = _snapshot_of(config, snapshot)
    output = Path(output)
    # Before hashing, not after; a manifest written into the snapshot would pin itself.
    inputs: tuple[Path, ...] = (snapshot_dir,) if loaded is None else (loaded.path, snapshot_dir)
    if model_signature is not None:
        inputs += (Path(model_signature), *map(Path, certificate_chain))
        inputs += () if public_key is None else (Path(public_key),)
    check_outputs([output], force=force, inputs=inputs)
    signed = _signed_model(model_signature, public_key, certificate_chain)
    started = time.perf_counter()
    total = 0

    def on_total(value: int) -> None:
        nonlocal total
        total = value
        if observer is not None:
            observer.set_total(value)

    progress = observer.advance if observer is not None else None
    if signed is None:
        manifest = build_manifest(
            snapshot_dir, workers=workers, progress=progress, on_total=on_total
        )
    else:
        from detserve.signed_snapshot import derive_manifest

        manifest = derive_manifest(
            snapshot_dir, signed, workers=workers, progress=progress, on_total=on_total
        )
    write_manifest(manifest, output, force=force, inputs=inputs)
    return HashResult(
        manifest=output,
        manifest_sha256=manifest.sha256,
        files=manifest.total_files,
        bytes=total,
        seconds=time.perf_counter() - started,
        snapshot=snapshot_dir,
        signature=signed,
    )


# --- download: the files of the pinned commit ---------------------------------------------


@dataclass(frozen=True)
class _DownloadInputs:
    """Every input of a download, read and checked before the hub is asked anything."""

    loaded: LoadedProfile
    endpoint: str
    token: str | None
    include: tuple[str, ...]
    exclude: tuple[str, ...]

    def __repr__(self) -> str:
        return f"_DownloadInputs({self.loaded.path}, {self.endpoint})"  # never the token

    @classmethod
    def read(
        cls,
        config: ProfileLike,
        secrets_file: Path | str | None,
        endpoint: str | None,
        include: Sequence[str] | None,
        exclude: Sequence[str] | None,
    ) -> _DownloadInputs:
        import detserve.download as room
        from detserve.hub import hub_endpoint

        loaded = load_profile(config)
        loaded.require_pins(("model.revision",))
        chosen = tuple(include) if include is not None else room.DEFAULT_INCLUDE
        left_out = tuple(exclude) if exclude is not None else room.DEFAULT_EXCLUDE
        room.check_patterns(chosen, left_out)
        token = room.token_from(Path(secrets_file) if secrets_file is not None else None)
        return cls(loaded, hub_endpoint(endpoint), token, chosen, left_out)


def plan_download(
    config: ProfileLike,
    *,
    secrets_file: Path | str | None = None,
    endpoint: str | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> DownloadPlan:
    """What :func:`download_snapshot` would fetch: the pinned commit's files the patterns
    choose, what is on disk already, the bytes to fetch and the free space. Nothing is written
    but the removal of partial files a killed download left."""
    from detserve.download import plan_download as plan

    what = _DownloadInputs.read(config, secrets_file, endpoint, include, exclude)
    return plan(
        what.loaded,
        endpoint=what.endpoint,
        token=what.token,
        include=what.include,
        exclude=what.exclude,
    )


def download_snapshot(
    config: ProfileLike,
    *,
    secrets_file: Path | str | None = None,
    endpoint: str | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    workers: int | None = None,
    observer: DownloadObserver | None = None,
) -> DownloadResult:
    """Fetch the pinned commit's model files into the profile's Hugging Face home, then verify.

    Only ``model.revision`` is asked for (unpinned: :class:`~detserve.errors.UnpinnedError`,
    exit 2), and only the files vLLM loads (``include`` replaces
    :data:`detserve.download.DEFAULT_INCLUDE`, ``exclude`` replaces ``DEFAULT_EXCLUDE``). The
    hub token is ``HF_TOKEN`` of ``secrets_file``, and only that. Too little free space is
    :class:`~detserve.errors.DiskSpaceError` and an unreachable hub
    :class:`~detserve.errors.HubError` (exit 3). With a committed manifest the snapshot is
    verified (:class:`~detserve.errors.SnapshotMismatch`, exit 1, names every file that
    differs); without one the result says so (``trusted`` is false, ``next_command`` makes the
    manifest): nothing here writes a manifest. ``observer`` (a
    :class:`detserve.download.DownloadObserver`) is told the plan, the bytes and the check.

    >>> result = detserve.download_snapshot("configs/qwen3-8b.json")  # doctest: +SKIP
    >>> result.trusted, result.plan.fetch_bytes                    # doctest: +SKIP
    """
    import detserve.download as room

    what = _DownloadInputs.read(config, secrets_file, endpoint, include, exclude)
    return room.download(
        what.loaded,
        endpoint=what.endpoint,
        token=what.token,
        include=what.include,
        exclude=what.exclude,
        workers=workers or room.DEFAULT_WORKERS,
        observer=observer,
    )


# --- locks: the only functions that create pins ---------------------------------------------


@dataclass(frozen=True)
class LockOutcome:
    """A pin resolved (and, with ``write``, written: the profile file it went to)."""

    lock: LockResult
    written: Path | None


def _lock(
    config: Path | str,
    resolve: Callable[[LoadedProfile], LockResult],
    *,
    write: bool,
    profile_output: Path | str | None,
    force: bool,
) -> LockOutcome:
    from detserve.locks import check_unchanged, write_lock

    config = Path(config)
    output = Path(profile_output) if profile_output is not None else None
    # Before the hub or the registry is asked anything: a usage error needs no network.
    if output is not None and not write:
        raise UsageError("--profile-output goes with --write")
    if output is not None:
        check_outputs([output], force=force, inputs=[config])
    elif write:
        # In place is the purpose of --write; the profile must still be a regular file.
        check_outputs([config], force=True)
    loaded = load_profile(config)
    lock = resolve(loaded)
    if not write:
        check_unchanged(lock)  # a pin that no longer matches its reference: PinMismatch, exit 1
        return LockOutcome(lock=lock, written=None)
    return LockOutcome(lock=lock, written=write_lock(loaded, lock, output, force=force))


def lock_model(
    config: Path | str,
    *,
    write: bool = False,
    profile_output: Path | str | None = None,
    force: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
) -> LockOutcome:
    """Resolve ``model.ref`` to a commit with huggingface_hub; with ``write``, pin it.

    Without ``write`` nothing is written, and a profile that pins another commit than the
    reference now names raises :class:`~detserve.errors.PinMismatch` (exit 1). The token
    defaults to ``HF_TOKEN``. Making a pin creates a trust root: review and commit it.
    """
    import os

    from detserve.locks import resolve_model_revision

    secret = token if token is not None else os.environ.get("HF_TOKEN")
    return _lock(
        config,
        lambda loaded: resolve_model_revision(loaded, endpoint=endpoint, token=secret),
        write=write,
        profile_output=profile_output,
        force=force,
    )


def lock_image(
    config: Path | str,
    *,
    write: bool = False,
    profile_output: Path | str | None = None,
    force: bool = False,
    docker_host: str | None = None,
) -> LockOutcome:
    """Resolve ``runtime.image_tag`` to its registry digest through the engine (the one at
    ``docker_host`` when given); with ``write``, pin it. Without ``write``, a moved tag raises
    :class:`~detserve.errors.PinMismatch`."""
    from detserve.locks import resolve_image_digest

    def resolve(loaded: LoadedProfile) -> LockResult:
        if docker_host is None:
            return resolve_image_digest(loaded)
        from detserve.runtime.docker_engine import connect

        return resolve_image_digest(loaded, connect(docker_host)[0])

    return _lock(
        config,
        resolve,
        write=write,
        profile_output=profile_output,
        force=force,
    )
