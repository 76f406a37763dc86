"""Cheap re-verification of an unchanged snapshot: the record of the last full pass.

A full pass hashes every byte (:func:`detserve.snapshot.verify_against`). What it proved holds
until a byte changes, and every change a process can make through the file system sets an
inode's change time (ctime) to the current time, which no unprivileged process can set back:
content written (through a shared mapping too, see below), truncated, replaced (a rename over the
name), renamed, re-linked, chmod or chown, an mtime set back with ``utimensat``; and a new inode
(a replacement, even one that reuses the inode number) has its own. So after a full pass in a
container lifetime detserve records the identity (device, inode, mode, links, owner, size, mtime
and ctime in ns) of every directory of the snapshot, of every file's entry (and a link's text)
and of every file that was hashed; a later check in the same lifetime compares them: O(files)
``lstat``/``stat`` calls, no byte read.

Invariants:

- The record only ever saves work. Absent, unreadable, not detserve's (owner, mode), of another
  snapshot, manifest or container lifetime, or any identity that differs: a full pass, never a
  pass. A record that does not hold is removed before the full pass; one that holds stays
  while an asked-for full pass runs (what it vouches for is still so; a gateway relies on it
  meanwhile). A pass that fails, or passes without writing a record, leaves none behind.
- A record is of the tree the full pass judged, nothing else: the snapshot directory is resolved
  once and both scan and record are of that directory (a link to it names the directory, never
  the link), and every identity the record keeps equals what the pass saw
  (:func:`~detserve.snapshot_identity.seen_by_pass`): each directory's as it was listed (through
  the descriptor it was listed by), each entry's as it was classified, where each link resolved
  and the roots it had to stay inside, each file's as the descriptor that was hashed. A tree
  swapped under the pass (a parent directory renamed, a linked component re-pointed) leaves no
  record.
- A record is written only when nothing it names changed during the pass: every recorded ctime is
  older than the pass's start by :data:`RACY_MARGIN_NS` (a later change gets at least the coarse
  clock's current tick, so it cannot equal a recorded ctime; "racy git").
- Each file's dirty pages are written back before it is read (``fsync``, ``sync_first``):
  writeback write-protects the pages of a shared writable mapping, so a write through a mapping
  made before the pass faults and updates ctime like any other (measured on ext4: without the
  sync such a write leaves ctime as it was).
- A record is kept only on :data:`~detserve.snapshot_identity.TRUSTED_FILE_SYSTEMS`: on tmpfs
  a write through a shared mapping never changes ctime (measured), so there every check stays a
  full pass.
- fs-verity is detected per file (``FS_IOC_MEASURE_VERITY``), never assumed: where a file has
  it, its measurement is recorded and must still be the same.

What this cannot see (root: the clock set back, the block device, the record itself; changes
below the file system) is in docs/threat-model.md ("Weights changed after a full pass",
"A forged record", "Changes no identity shows"); the gateway's paced full pass
(:mod:`detserve.snapshot_watch`) bounds it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import stat
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

from pydantic import ValidationError

from detserve.errors import DetserveError
from detserve.fileio import atomic_writer
from detserve.hashing import FileDigest, ProgressCallback
from detserve.manifest import checked_manifest, parse_manifest, read_manifest_bytes
from detserve.snapshot import SnapshotScan, VerifyReport, verify_against
from detserve.snapshot_identity import (
    CTIME,
    TRUSTED_FILE_SYSTEMS,
    differences,
    file_system_types,
    fingerprint,
    resolved,
    seen_by_pass,
    shown,
    unlike_pass,
)
from detserve.strict_model import StrictModel

#: 2: ``real:`` and ``roots:`` entries, and the root's identity that of the directory resolved
RECORD_FORMAT: Literal[2] = 2
#: a ctime this close to a pass's start may be shared by a change that follows it
RACY_MARGIN_NS = 2_000_000_000
#: a record is a few hundred bytes a file
MAX_RECORD_BYTES = 64 * 1024 * 1024
STATE_DIR_ENV = "DETSERVE_STATE_DIR"
RECORD_WRITTEN = "record written"


class Lifetime(StrictModel):
    """One container lifetime: a restart or a new container is another one."""

    container_id: str
    """The container's full id."""
    started_at: str
    """Its ``State.StartedAt``."""
    restart_count: int
    """Its ``RestartCount``."""


class _ContainerLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def started_at(self) -> str: ...
    @property
    def restart_count(self) -> int: ...


def lifetime_of(container: _ContainerLike) -> Lifetime:
    return Lifetime(
        container_id=container.id,
        started_at=container.started_at,
        restart_count=container.restart_count,
    )


class SnapshotRecord(StrictModel):
    """What a full pass found, and the identities that must still hold to vouch for it."""

    format: Literal[2]
    """The record's format."""
    snapshot: str
    """The snapshot directory, resolved."""
    manifest_sha256: str
    """The sha256 of the manifest bytes the pass verified against."""
    lifetime: Lifetime
    """The container lifetime the pass was made in."""
    verified_at: str
    """When the pass started (UTC, ISO 8601)."""
    files: int
    """Files verified."""
    bytes: int
    """Bytes hashed."""
    entries: dict[str, list[int] | str]
    """``dir:REL``, ``entry:PATH``, ``file:PATH`` identities, ``link:PATH`` texts,
    ``real:PATH`` resolutions, the ``roots:`` and ``verity:PATH`` measurements."""


class PinnedManifest:
    """A manifest's bytes, read once: what the container is compared with is what is verified."""

    def __init__(self, path: Path, data: bytes) -> None:
        self.path = Path(path)
        self.data = data
        self.sha256 = hashlib.sha256(data).hexdigest()

    @classmethod
    def read(cls, path: Path) -> PinnedManifest:
        return cls(path, read_manifest_bytes(path))

    def digests(self) -> Mapping[str, str]:
        """Each file's sha256 as these bytes pin it; any problem in them fails (exit 1). A
        snapshot verified against these bytes passes only with exactly these digests."""
        return checked_manifest(self.data, self.path).manifest.digests


def state_dir() -> Path:
    """``$DETSERVE_STATE_DIR``, else ``$XDG_STATE_HOME/detserve``, else
    ``~/.local/state/detserve`` (the XDG base directory rules)."""
    explicit = os.environ.get(STATE_DIR_ENV)
    if explicit:
        return Path(explicit)
    xdg = Path(os.environ.get("XDG_STATE_HOME") or "relative")
    base = xdg if xdg.is_absolute() else Path.home() / ".local" / "state"
    return base / "detserve"


class RecordStore:
    """Records under a directory only this user writes (0700; records 0600, owned by this user).

    Anything else found there (another owner, a group- or world-writable mode, a link, a record
    that does not parse) is ignored, never trusted: a full pass follows.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else state_dir() / "snapshots"

    def path_for(self, snapshot_dir: Path) -> Path:
        key = hashlib.sha256(os.fsencode(Path(snapshot_dir).resolve())).hexdigest()
        return self.directory / f"{key}.json"

    def _unsafe(self, path: Path, *, directory: bool) -> str | None:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return "absent"
        kind_ok = stat.S_ISDIR(info.st_mode) if directory else stat.S_ISREG(info.st_mode)
        if not kind_ok:
            return f"{path} is not a {'directory' if directory else 'regular file'}"
        if info.st_uid != os.geteuid():
            return f"{path} belongs to uid {info.st_uid}, not to this user"
        if info.st_mode & (0o022 if directory else 0o077):
            return f"{path} has mode {stat.S_IMODE(info.st_mode):o}"
        return None

    def load(self, snapshot_dir: Path) -> tuple[SnapshotRecord | None, str]:
        """The record of ``snapshot_dir`` and "", or None and why there is none to use."""
        path = self.path_for(snapshot_dir)
        for candidate, directory in ((self.directory, True), (path, False)):
            unsafe = self._unsafe(candidate, directory=directory)
            if unsafe == "absent":
                return None, "no record of a full pass in this container lifetime"
            if unsafe is not None:
                return None, f"record ignored: {unsafe}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                chunks: list[bytes] = []
                left = MAX_RECORD_BYTES + 1
                while left > 0 and (chunk := os.read(fd, min(left, 1024 * 1024))):
                    chunks.append(chunk)
                    left -= len(chunk)
                data = b"".join(chunks)
            finally:
                os.close(fd)
        except OSError as exc:
            return None, f"record unreadable: {exc.strerror}"
        if len(data) > MAX_RECORD_BYTES:
            return None, "record ignored: over its size limit"
        try:
            return SnapshotRecord.model_validate_json(data), ""
        except ValidationError:
            return None, "record ignored: it does not parse"

    def remove(self, snapshot_dir: Path) -> None:
        # Not ours to remove (another owner's directory) is not ours to trust either.
        with contextlib.suppress(OSError):
            self.path_for(snapshot_dir).unlink()

    def unusable(self) -> str | None:
        """Why no record can be written here (made if absent), or None."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            return f"record not written: {exc.strerror}"
        unsafe = self._unsafe(self.directory, directory=True)
        if unsafe is not None:
            return f"record not written: {unsafe}"
        if not os.access(self.directory, os.W_OK | os.X_OK):
            return f"record not written: {self.directory} is not writable"
        return None

    def save(self, record: SnapshotRecord) -> str:
        """Write the record; return what happened (a record is a cache: a failure is a note)."""
        unusable = self.unusable()
        if unusable is not None:
            return unusable
        path = self.path_for(Path(record.snapshot))
        try:
            with atomic_writer(path, force=True, mode=0o600) as handle:
                handle.write(record.model_dump_json().encode("utf-8"))
        except DetserveError as exc:
            return f"record not written: {exc.message}"
        return RECORD_WRITTEN


def _why_not_recordable(
    entries: Mapping[str, list[int] | str],
    seen: Mapping[str, list[int] | str],
    started_ns: int,
    margin_ns: int,
) -> str | None:
    unlike = unlike_pass(entries, seen)
    if unlike is not None:
        return f"{unlike} is not what the pass saw"
    types = file_system_types()
    for key, value in sorted(entries.items()):
        if not isinstance(value, list):
            continue
        fs_type = types.get(value[0], "unknown")
        if fs_type not in TRUSTED_FILE_SYSTEMS:
            return f"{shown(key)} is on {fs_type}, where ctime may not see every write"
        if value[CTIME] >= started_ns - margin_ns:
            return f"{shown(key)} changed within {margin_ns / 1e9:g} s of the pass"
    return None


def record_after_pass(
    store: RecordStore,
    report: VerifyReport,
    digests: Mapping[str, FileDigest],
    scan: SnapshotScan,
    lifetime: Lifetime,
    started_ns: int,
) -> str:
    """Write the record of a full pass that passed (synced first), or say why not."""
    snapshot_dir = report.snapshot_dir
    margin_ns = RACY_MARGIN_NS
    try:
        entries = fingerprint(snapshot_dir, sorted(digests))
    except OSError as exc:
        return f"record not written: {exc.filename} changed after the pass ({exc.strerror})"
    why = _why_not_recordable(entries, seen_by_pass(scan, digests), started_ns, margin_ns)
    if why is not None:
        return f"record not written: {why}"
    return store.save(
        SnapshotRecord(
            format=RECORD_FORMAT,
            snapshot=str(resolved(snapshot_dir)),
            manifest_sha256=report.manifest_sha256,
            lifetime=lifetime,
            verified_at=datetime.fromtimestamp(started_ns / 1e9, UTC).isoformat(),
            files=report.files,
            bytes=report.bytes,
            entries=entries,
        )
    )


def check_record(
    record: SnapshotRecord, snapshot_dir: Path, manifest_sha256: str, lifetime: Lifetime
) -> list[str]:
    """Why ``record`` no longer vouches for the snapshot, one line each; empty when it does."""
    directory = resolved(snapshot_dir)
    if record.snapshot != str(directory):
        return ["the record is of another snapshot directory"]
    if record.manifest_sha256 != manifest_sha256:
        return ["the record is of another manifest"]
    if record.lifetime != lifetime:
        return ["the record is of another container lifetime"]
    return differences(directory, record.entries)


def _summary(lines: list[str]) -> str:
    more = f" and {len(lines) - 3} more" if len(lines) > 3 else ""
    return "; ".join(lines[:3]) + more


def verify_in_lifetime(
    snapshot_dir: Path,
    manifest: PinnedManifest,
    lifetime: Lifetime,
    *,
    full: bool = False,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    on_total: ProgressCallback | None = None,
    store: RecordStore | None = None,
) -> VerifyReport:
    """Verify the snapshot against ``manifest`` for a container ``lifetime``; raise on any
    difference (:class:`~detserve.errors.SnapshotMismatch`).

    Without ``full``, a record of a full pass in this lifetime whose identities all still hold
    vouches for the bytes (O(files)); otherwise every byte is hashed, and a record is written
    when the pass passed and nothing changed meanwhile.
    """
    began = time.perf_counter()
    # Resolved once: the record is checked, the pass scans and the record is written of the one
    # directory; reports name it.
    snapshot_dir = resolved(snapshot_dir)
    store = store if store is not None else RecordStore()
    why = "a full pass was asked for"
    if not full:
        record, why = store.load(snapshot_dir)
        if record is not None:
            held = check_record(record, snapshot_dir, manifest.sha256, lifetime)
            if not held:
                return VerifyReport(
                    snapshot_dir=snapshot_dir,
                    manifest_sha256=manifest.sha256,
                    files=record.files,
                    bytes=record.bytes,
                    seconds=time.perf_counter() - began,
                    manifest=manifest.path,
                    # the record is bound to this manifest: the files it vouches for are its
                    digests=dict(manifest.digests()),
                    verified_by="record",
                    record=f"the record of the full pass of {record.verified_at} holds",
                )
            why = "since the last full pass, " + _summary(held)
        store.remove(snapshot_dir)  # one that does not hold vouches for nothing
    # A record that holds stays while an asked-for full pass runs: a gateway serving this
    # container checks it meanwhile, and its identities still say what they said. The pass's
    # verdict replaces it: a new record when it passed, none when it failed or wrote none.
    started_ns = time.time_ns()
    try:
        report, digests, scan = verify_against(
            snapshot_dir,
            parse_manifest(manifest.data),
            manifest.path,
            workers=workers,
            progress=progress,
            on_total=on_total,
            sync_first=True,
            started=began,
        )
    except DetserveError:
        store.remove(snapshot_dir)  # a failed pass leaves no record behind
        raise
    note = record_after_pass(store, report, digests, scan, lifetime, started_ns)
    if note != RECORD_WRITTEN:
        store.remove(snapshot_dir)
    return dataclasses.replace(report, record=f"full pass: {why}; {note}")
