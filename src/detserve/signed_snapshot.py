"""A snapshot checked against a verified model signature, and the manifest derived from it.

:func:`derive_manifest` (behind ``detserve hash --model-signature``) and
:func:`verify_signed_snapshot` (behind ``detserve verify --model-signature``) compare the files of
a snapshot with a :class:`~detserve.model_signature.SignedModel`, a signature that already
verified. A manifest comes from nothing else: there is no trust on first use on this path.

Invariants:

* Each file is read once: one pass computes its sha256 (the detserve manifest's digest) and the
  digests the signature states (the whole file's, or each shard's, in the signed algorithm), so a
  derived manifest pins exactly the bytes that matched the signature. When the signature states
  whole-file sha256 digests, the manifest's digests are the signed ones.
* The file set is the snapshot as :func:`~detserve.snapshot.scan_snapshot` sees it: links are
  followed only inside the snapshot or into the same model's ``blobs/`` (the Hugging Face cache
  layout), whatever the signer's ``allow_symlinks`` said. (The library itself refuses every link
  unless the signer allowed links, and then follows them anywhere.)
* Coverage is exact, both ways: a file on disk the signature does not list (one the signer
  ignored, such as ``.gitattributes``, an added one, an empty one under a sharded signature, which
  cannot list it) and a signed file that is not on disk both fail (exit 1), by name. The one
  exception is the signature file itself when it lies in the snapshot: it is pinned, and must be
  the very bytes that verified.
* Every difference is reported at once, sorted within its kind; nothing is written when any is
  found.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from detserve.errors import InputError, SignatureMismatch, SnapshotChanged, SnapshotMismatch
from detserve.fileio import NotRegularFile, open_regular
from detserve.hashing import (
    DEFAULT_CHUNK_SIZE,
    PROGRESS_EVERY,
    ProgressCallback,
    default_workers,
)
from detserve.manifest import SnapshotManifest, parse_manifest, read_manifest_bytes
from detserve.signed_statement import SignedFile, SignedModel
from detserve.snapshot import (
    SnapshotDiff,
    SnapshotScan,
    VerifyReport,
    pinnable_scan,
    scan_snapshot,
)

_HINT: Final = (
    "a signed snapshot holds exactly the files the publisher signed: download every signed file "
    "(all of the repository's at the signed revision, not only what vLLM loads), remove the "
    "others, and do not serve it until this passes"
)


class _Hasher(Protocol):
    def update(self, data: memoryview, /) -> object: ...

    def hexdigest(self) -> str: ...


def _algorithm(name: str) -> Callable[[], _Hasher]:
    if name == "blake3":
        from blake3 import blake3

        return blake3
    if name == "blake2b":
        return hashlib.blake2b
    return hashlib.sha256


@dataclass(frozen=True)
class FileRead:
    """One file read once: its sha256 and the digests in the signature's form."""

    sha256: str
    size: int
    #: the whole file's digest, or each shard's in order, in the signed algorithm
    signed_form: tuple[str, ...]


def read_file(
    path: Path, signed: SignedModel, view: memoryview, progress: ProgressCallback | None = None
) -> FileRead:
    """Hash ``path`` once into its sha256 and ``signed``'s digests; raises ``OSError``."""
    make = _algorithm(signed.hash_type)
    shard_size = signed.shard_size
    whole = hashlib.sha256()
    # Whole-file sha256 signatures need no second hasher: the sha256 is the signed digest.
    other: _Hasher | None = None if shard_size is None and signed.hash_type == "sha256" else make()
    shards: list[str] = []
    filled = size = pending = 0
    fd, _ = open_regular(path)
    try:
        while count := os.readv(fd, [view]):
            chunk = view[:count]
            whole.update(chunk)
            size += count
            if other is not None and shard_size is None:
                other.update(chunk)
            elif other is not None and shard_size is not None:
                at = 0
                while at < count:  # a chunk may end one shard and start the next
                    take = min(count - at, shard_size - filled)
                    other.update(chunk[at : at + take])
                    filled += take
                    at += take
                    if filled == shard_size:
                        shards.append(other.hexdigest())
                        other, filled = make(), 0
            pending += count
            if progress is not None and pending >= PROGRESS_EVERY:
                progress(pending)  # batched: the bar takes a lock, a chunk is 256 KiB
                pending = 0
    finally:
        os.close(fd)
        if progress is not None and pending:
            progress(pending)
    sha256 = whole.hexdigest()
    if shard_size is None:
        return FileRead(sha256, size, (sha256 if other is None else other.hexdigest(),))
    if filled and other is not None:
        shards.append(other.hexdigest())
    return FileRead(sha256, size, tuple(shards))


def _read_all(
    snapshot_dir: Path,
    paths: Iterable[str],
    signed: SignedModel,
    sizes: Mapping[str, int],
    workers: int | None,
    progress: ProgressCallback | None,
) -> dict[str, FileRead]:
    """Every path read in parallel, largest first; a file that vanished is a race (exit 1)."""
    ordered = sorted(paths, key=lambda p: (-sizes[p], p))
    buffers = threading.local()

    def one(path: str) -> tuple[str, FileRead]:
        if not hasattr(buffers, "view"):
            buffers.view = memoryview(bytearray(DEFAULT_CHUNK_SIZE))
        return path, read_file(snapshot_dir / path, signed, buffers.view, progress)

    count = max(1, min(workers or default_workers(), len(ordered)))
    pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="signed-sha256")
    try:
        return dict(pool.map(one, ordered))
    except (FileNotFoundError, NotRegularFile) as exc:
        what = "is no longer a regular file" if isinstance(exc, NotRegularFile) else "vanished"
        raise SnapshotChanged(
            f"snapshot {snapshot_dir} changed while it was read: {exc.filename} {what}",
            hint="something is writing the snapshot; stop it, then run again",
        ) from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def signature_entry(snapshot_dir: Path, signature: Path) -> str | None:
    """The signature file's path in the snapshot, when it lies there (named, not resolved:
    in a Hugging Face cache the entry is a link into ``blobs/``)."""
    where = Path(signature).parent.resolve() / Path(signature).name
    root = Path(snapshot_dir).resolve()
    return where.relative_to(root).as_posix() if where.is_relative_to(root) else None


def _check_entry(
    snapshot_dir: Path, signed: SignedModel, entry: str | None, reads: Mapping[str, FileRead]
) -> None:
    if entry is not None and entry in reads and reads[entry].sha256 != signed.signature_sha256:
        raise SnapshotChanged(
            f"snapshot {snapshot_dir} changed while it was read: the model signature ./{entry} "
            "is not the file that verified",
            hint="something is writing the snapshot; stop it, then run again",
        )


def _differences(signed_file: SignedFile, read: FileRead, signed: SignedModel) -> list[str]:
    if signed_file.size is not None and read.size != signed_file.size:
        return [f"size signed {signed_file.size} actual {read.size}"]
    if signed.shard_size is None:
        if read.signed_form != signed_file.digests:
            return [
                f"{signed.hash_type} signed {signed_file.digests[0]} actual {read.signed_form[0]}"
            ]
        return []
    size = signed.shard_size
    return [
        f"shard {i * size}:{min((i + 1) * size, read.size)} {signed.hash_type} signed {want} "
        f"actual {got}"
        for i, (want, got) in enumerate(zip(signed_file.digests, read.signed_form, strict=True))
        if want != got
    ]


def signature_lines(
    signed: SignedModel, scan: SnapshotScan, reads: Mapping[str, FileRead], entry: str | None
) -> list[str]:
    """How the snapshot differs from the signature: unsigned, missing, then changed files."""
    lines = []
    for path in sorted(scan.files):
        if path == entry or path in signed.files:
            continue
        ignored = signed.ignored_by(path)
        why = (
            f" (the signer ignored {ignored})"
            if ignored
            else " (empty: a sharded signature cannot list an empty file)"
            if scan.files[path] == 0 and signed.shard_size is not None
            else ""
        )
        lines.append(f"not signed: ./{path}{why}")
    missing = (p for p in signed.files if p not in scan.files and p not in scan.unsafe)
    lines += [f"signed but missing: ./{path}" for path in sorted(missing)]
    for path in sorted(p for p in reads if p in signed.files):
        lines += [
            f"not as signed: ./{path} {difference}"
            for difference in _differences(signed.files[path], reads[path], signed)
        ]
    return lines


def derive_manifest(
    snapshot_dir: Path,
    signed: SignedModel,
    *,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    on_total: ProgressCallback | None = None,
) -> SnapshotManifest:
    """The manifest of a snapshot that is exactly the signed model; raise on any difference."""
    scan = pinnable_scan(snapshot_dir)
    entry = signature_entry(snapshot_dir, signed.signature)
    to_read = [p for p in scan.files if p in signed.files or p == entry]
    if on_total is not None:
        on_total(sum(scan.files[p] for p in to_read))
    try:
        reads = _read_all(snapshot_dir, to_read, signed, scan.files, workers, progress)
    except OSError as exc:
        raise InputError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    _check_entry(snapshot_dir, signed, entry, reads)
    lines = signature_lines(signed, scan, reads, entry)
    if lines:
        raise SignatureMismatch(
            f"snapshot {snapshot_dir} is not the model signed by {signed.signer}",
            details=lines,
            hint=_HINT,
        )
    return SnapshotManifest(
        {path: signed.stated_sha256(path) or reads[path].sha256 for path in to_read}
    )


@dataclass(frozen=True)
class SignedVerifyReport(VerifyReport):
    """A snapshot that matched both its manifest and a verified model signature."""

    signature: SignedModel | None = None

    def as_json(self) -> dict[str, object]:
        out = super().as_json()
        out["signature"] = None if self.signature is None else self.signature.as_json()
        return out


def _agreement_lines(
    manifest: SnapshotManifest, signed: SignedModel, entry: str | None
) -> list[str]:
    """Where the manifest and the signature disagree, whatever is on disk."""
    pinned = set(manifest.digests) - {entry}
    lines = [f"pinned but not signed: ./{p}" for p in sorted(pinned - set(signed.files))]
    lines += [f"signed but not pinned: ./{p}" for p in sorted(set(signed.files) - pinned)]
    for path in sorted(pinned & set(signed.files)):
        stated = signed.stated_sha256(path)
        if stated is not None and stated != manifest.digests[path]:
            lines.append(
                f"pinned and signed differ: ./{path} manifest {manifest.digests[path]} "
                f"signature {stated}"
            )
    return lines


def verify_signed_snapshot(
    snapshot_dir: Path,
    manifest_path: Path,
    signed: SignedModel,
    *,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    on_total: ProgressCallback | None = None,
) -> SignedVerifyReport:
    """Check a snapshot against its manifest and a verified signature, and the two against each
    other, reading every file once; raise naming every difference."""
    started = time.perf_counter()
    parsed = parse_manifest(read_manifest_bytes(manifest_path))
    scan = scan_snapshot(snapshot_dir)
    expected = parsed.manifest.digests
    entry = signature_entry(snapshot_dir, signed.signature)
    to_read = [p for p in scan.files if p in expected or p in signed.files or p == entry]
    if on_total is not None:
        on_total(sum(scan.files[p] for p in to_read))
    try:
        reads = _read_all(snapshot_dir, to_read, signed, scan.files, workers, progress)
    except OSError as exc:
        raise SnapshotMismatch(
            f"snapshot {snapshot_dir}: cannot read {exc.filename}: {exc.strerror}"
        ) from exc
    _check_entry(snapshot_dir, signed, entry, reads)
    diff = SnapshotDiff.against(parsed, scan, {p: read.sha256 for p, read in reads.items()})
    lines = diff.lines() + signature_lines(signed, scan, reads, entry)
    lines += _agreement_lines(parsed.manifest, signed, entry)
    if lines:
        raise SignatureMismatch(
            f"snapshot {snapshot_dir}, manifest {manifest_path} and the model signed by "
            f"{signed.signer} do not agree",
            details=lines,
            hint=_HINT,
        )
    checked = [p for p in reads if p in expected]
    return SignedVerifyReport(
        snapshot_dir=snapshot_dir,
        manifest_sha256=parsed.sha256,
        files=len(checked),
        bytes=sum(reads[p].size for p in checked),
        seconds=time.perf_counter() - started,
        manifest=manifest_path,
        signature=signed,
    )
