"""Verify a model snapshot against its manifest, and make manifests from snapshots.

What is on disk is scanned without following links out of the snapshot: a regular file is
hashed; a symbolic link is hashed only when it resolves to a regular file inside the snapshot or
inside the Hugging Face cache's ``blobs/`` of the same model (the layout huggingface_hub writes);
anything else (a link that escapes, dangles, or points at a directory, a FIFO, a device) is a
problem and is never read. Every difference is reported, sorted and by name: missing, extra,
changed, unsafe entries and manifest problems.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from detserve.errors import InputError, SnapshotChanged, SnapshotMismatch
from detserve.fileio import NotRegularFile, atomic_write_bytes, check_outputs
from detserve.hashing import FileDigest, ProgressCallback, hash_files
from detserve.manifest import (
    ParsedManifest,
    SnapshotManifest,
    check_relative_path,
    parse_manifest,
    read_manifest_bytes,
)


@dataclass(frozen=True)
class SnapshotScan:
    """Files that may be hashed, and entries that must not be; and what the scan saw of them,
    so that a record of the pass (:mod:`detserve.snapshot_state`) is of exactly this tree."""

    files: dict[str, int]  # relative path -> size
    unsafe: dict[str, str]  # relative path -> why it is refused
    #: each directory's ``fstat`` taken on the descriptor it was listed through ("" the root)
    directories: dict[str, os.stat_result] = field(default_factory=dict)
    #: each file's ``lstat`` when it was classified (a link's own)
    entries: dict[str, os.stat_result] = field(default_factory=dict)
    #: where each link resolved when it was classified
    targets: dict[str, str] = field(default_factory=dict)
    #: where a link may resolve (:func:`allowed_roots_for`)
    roots: tuple[Path, ...] = ()

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


_LIST_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def allowed_roots_for(snapshot_dir: Path) -> tuple[Path, ...]:
    """The snapshot itself and, in a Hugging Face cache layout, the same model's ``blobs/``."""
    snapshot = snapshot_dir.resolve()
    roots = [snapshot]
    if snapshot.parent.name == "snapshots":
        blobs = snapshot.parent.parent / "blobs"
        if blobs.is_dir():
            roots.append(blobs.resolve())
    return tuple(roots)


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _printable(path: str) -> str:
    return repr(path)[1:-1]


def _changed(snapshot_dir: Path, exc: OSError) -> SnapshotChanged:
    """A file that vanished or changed type between the scan and the read: a race, not a bug."""
    what = "is no longer a regular file" if isinstance(exc, NotRegularFile) else "vanished"
    return SnapshotChanged(
        f"snapshot {snapshot_dir} changed while it was read: {exc.filename} {what}",
        hint="something is writing the snapshot; stop it, then run again",
    )


def _link_text(link: Path, snapshot_dir: Path) -> str:
    try:
        return str(link.readlink())
    except FileNotFoundError as exc:
        raise _changed(snapshot_dir, exc) from exc


def _hash_stable(
    snapshot_dir: Path,
    paths: Sequence[str],
    workers: int | None,
    progress: ProgressCallback | None,
    sizes: Mapping[str, int],
    sync_first: bool = False,
) -> dict[str, FileDigest]:
    """``hash_files``, with a file that vanished or changed type since the scan reported as such."""
    try:
        return hash_files(
            snapshot_dir,
            paths,
            workers=workers,
            progress=progress,
            sizes=sizes,
            sync_first=sync_first,
        )
    except (FileNotFoundError, NotRegularFile) as exc:
        raise _changed(snapshot_dir, exc) from exc


def _is_directory(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def scan_snapshot(snapshot_dir: Path, allowed_roots: Sequence[Path] | None = None) -> SnapshotScan:
    snapshot_dir = Path(snapshot_dir)
    if not snapshot_dir.is_dir():
        raise InputError(
            f"snapshot directory not found: {snapshot_dir}",
            hint="check the profile's snapshot.hf_home and model.revision, or --snapshot",
        )
    roots = tuple(allowed_roots) if allowed_roots is not None else allowed_roots_for(snapshot_dir)
    files: dict[str, int] = {}
    unsafe: dict[str, str] = {}
    directories: dict[str, os.stat_result] = {}
    entries: dict[str, os.stat_result] = {}
    targets: dict[str, str] = {}

    def unreadable(exc: OSError) -> None:
        unsafe[os.path.relpath(exc.filename or ".", snapshot_dir)] = f"unreadable: {exc.strerror}"

    def classify(full: str, relative: str) -> None:
        try:
            info = os.lstat(full)
        except FileNotFoundError as exc:
            raise _changed(snapshot_dir, exc) from exc
        unpinnable = check_relative_path(relative)
        if unpinnable:
            # Shown escaped: the raw name may hold a line break or bytes that are not UTF-8.
            unsafe[_printable(relative)] = f"name cannot be written in a manifest: {unpinnable}"
        elif stat.S_ISREG(info.st_mode):
            files[relative] = info.st_size
            entries[relative] = info
        elif stat.S_ISLNK(info.st_mode):
            link = Path(full)
            target = Path(os.path.realpath(full))
            if not _inside(target, roots):
                unsafe[relative] = f"symlink resolves outside the snapshot: -> {target}"
            elif not target.exists():
                unsafe[relative] = f"dangling symlink: -> {_link_text(link, snapshot_dir)}"
            elif not target.is_file():
                unsafe[relative] = f"symlink to a non-regular file: -> {target}"
            else:
                files[relative] = target.stat().st_size
                entries[relative], targets[relative] = info, str(target)
        else:
            unsafe[relative] = "not a regular file (device, FIFO or socket)"

    # os.walk, unrolled on strings: Path objects cost more than the system calls for a folder of
    # thousands of small files. Links are never followed: a link to a directory is classified
    # like any other link (and refused), and a directory that became a link after it was listed
    # is not opened (O_NOFOLLOW: unreadable). Each directory is listed through the descriptor
    # whose fstat is kept, so what was listed is the directory those identities name.
    pending = [(os.fspath(snapshot_dir), "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            fd = os.open(directory, _LIST_FLAGS | (os.O_NOFOLLOW if prefix else 0))
            try:
                directories[prefix[:-1]] = os.fstat(fd)
                with os.scandir(fd) as listing:
                    # while the descriptor is open: an entry without d_type is stat-ed through it
                    listed = [(entry.name, _is_directory(entry)) for entry in listing]
            finally:
                os.close(fd)
        except OSError as exc:
            unreadable(exc)
            continue
        for name, descend in listed:
            relative = prefix + name
            full = f"{directory.rstrip('/')}/{name}"
            if descend:
                pending.append((full, relative + "/"))
            else:
                classify(full, relative)
    return SnapshotScan(
        files=files,
        unsafe=unsafe,
        directories=directories,
        entries=entries,
        targets=targets,
        roots=roots,
    )


@dataclass(frozen=True)
class VerifyReport:
    """A snapshot that verified: what was checked, and how fast."""

    snapshot_dir: Path
    manifest_sha256: str
    files: int
    bytes: int
    seconds: float
    #: the manifest it verified against
    manifest: Path | None = None
    #: the sha256 of every file verified, by relative path: what was read, equal to the manifest
    digests: Mapping[str, str] = field(default_factory=dict)
    #: "full pass" (every byte hashed) or "record" (the record of a full pass earlier in the
    #: same container lifetime still holds: detserve.snapshot_state)
    verified_by: Literal["full pass", "record"] = "full pass"
    #: what became of the record (why it was not used, whether one was written); None where no
    #: container lifetime was given (``detserve verify``)
    record: str | None = None

    @property
    def hashed_bytes(self) -> int:
        return self.bytes if self.verified_by == "full pass" else 0

    @property
    def throughput_bytes_per_s(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else float("inf")

    def as_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "snapshot": str(self.snapshot_dir),
            "manifest": None if self.manifest is None else str(self.manifest),
            "manifest_sha256": self.manifest_sha256,
            "files": self.files,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "throughput_bytes_per_s": (
                round(self.throughput_bytes_per_s) if self.verified_by == "full pass" else None
            ),
            "verified_by": self.verified_by,
            "hashed_bytes": self.hashed_bytes,
            "record": self.record,
        }


@dataclass
class SnapshotDiff:
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    changed: list[tuple[str, str, str]] = field(default_factory=list)
    unsafe: list[tuple[str, str]] = field(default_factory=list)
    manifest_problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        # "line 3: …" reads "manifest line 3: …"; a problem of the whole file already reads
        # "manifest: …" and is shown once.
        out = [
            problem if problem.startswith("manifest:") else f"manifest {problem}"
            for problem in self.manifest_problems
        ]
        out += [f"missing: ./{path}" for path in sorted(self.missing)]
        out += [f"extra: ./{path}" for path in sorted(self.extra)]
        out += [
            f"changed: ./{path} expected {expected} actual {actual}"
            for path, expected, actual in sorted(self.changed)
        ]
        out += [f"unsafe: ./{path} {why}" for path, why in sorted(self.unsafe)]
        return out

    def __bool__(self) -> bool:
        return bool(
            self.missing or self.extra or self.changed or self.unsafe or self.manifest_problems
        )

    @classmethod
    def against(
        cls, parsed: ParsedManifest, scan: SnapshotScan, sha256: Mapping[str, str]
    ) -> SnapshotDiff:
        """How a scanned snapshot, whose files read to ``sha256``, differs from a manifest."""
        expected = parsed.manifest.digests
        return cls(
            manifest_problems=[str(p) for p in sorted(parsed.problems)],
            unsafe=sorted(scan.unsafe.items()),
            missing=[p for p in expected if p not in scan.files and p not in scan.unsafe],
            extra=[p for p in scan.files if p not in expected],
            changed=[
                (p, expected[p], sha256[p])
                for p in expected
                if p in sha256 and sha256[p] != expected[p]
            ],
        )


def pinnable_scan(snapshot_dir: Path) -> SnapshotScan:
    """:func:`scan_snapshot`, refusing a snapshot with entries that cannot be pinned."""
    scan = scan_snapshot(snapshot_dir)
    if scan.unsafe:
        # Bad input, not a failed verification (exit 1): there is no manifest to fail against.
        raise InputError(
            f"refusing to hash {snapshot_dir}: it has entries that cannot be pinned",
            details=[f"unsafe: ./{p} {why}" for p, why in sorted(scan.unsafe.items())],
        )
    return scan


def verify_snapshot(
    snapshot_dir: Path,
    manifest_path: Path,
    *,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    on_total: ProgressCallback | None = None,
) -> VerifyReport:
    """Check every file of ``snapshot_dir`` against ``manifest_path``; raise on any difference."""
    started = time.perf_counter()
    parsed = parse_manifest(read_manifest_bytes(manifest_path))
    report, _, _ = verify_against(
        snapshot_dir,
        parsed,
        manifest_path,
        workers=workers,
        progress=progress,
        on_total=on_total,
        started=started,
    )
    return report


def verify_against(
    snapshot_dir: Path,
    parsed: ParsedManifest,
    manifest_path: Path,
    *,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    on_total: ProgressCallback | None = None,
    sync_first: bool = False,
    started: float | None = None,
) -> tuple[VerifyReport, Mapping[str, FileDigest], SnapshotScan]:
    """:func:`verify_snapshot` of manifest bytes already read; also return each file's digest
    and the ``fstat`` of what was read (``sync_first``: :func:`~detserve.hashing.sha256_opened`),
    and the scan (what it saw of each directory and entry)."""
    started = time.perf_counter() if started is None else started
    scan = scan_snapshot(snapshot_dir)
    to_hash = [p for p in parsed.manifest.digests if p in scan.files]
    if on_total is not None:
        on_total(sum(scan.files[p] for p in to_hash))
    try:
        actual = _hash_stable(snapshot_dir, to_hash, workers, progress, scan.files, sync_first)
    except OSError as exc:
        raise SnapshotMismatch(
            f"snapshot {snapshot_dir}: cannot read {exc.filename}: {exc.strerror}"
        ) from exc
    diff = SnapshotDiff.against(parsed, scan, {path: d.sha256 for path, d in actual.items()})
    if diff:
        raise SnapshotMismatch(
            f"snapshot {snapshot_dir} does not match manifest {manifest_path}",
            details=diff.lines(),
            hint="do not serve this snapshot; re-download the pinned revision and verify again",
        )
    report = VerifyReport(
        snapshot_dir=snapshot_dir,
        manifest_sha256=parsed.sha256,
        files=len(to_hash),
        bytes=sum(d.size for d in actual.values()),
        seconds=time.perf_counter() - started,
        manifest=manifest_path,
        digests={path: actual[path].sha256 for path in to_hash},
    )
    return report, actual, scan


def build_manifest(
    snapshot_dir: Path,
    *,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    on_total: ProgressCallback | None = None,
) -> SnapshotManifest:
    """Hash every file of a snapshot into a manifest; refuse a snapshot with unsafe entries."""
    scan = pinnable_scan(snapshot_dir)
    if not scan.files:
        raise InputError(f"refusing to hash {snapshot_dir}: it has no files")
    if on_total is not None:
        on_total(scan.total_bytes)
    try:
        digests = _hash_stable(snapshot_dir, list(scan.files), workers, progress, scan.files)
    except OSError as exc:
        raise InputError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    return SnapshotManifest({path: item.sha256 for path, item in digests.items()})


def write_manifest(
    manifest: SnapshotManifest, output: Path, *, force: bool, inputs: Sequence[Path] = ()
) -> None:
    check_outputs([output], force=force, inputs=inputs)
    atomic_write_bytes(output, manifest.to_bytes(), force=force)
