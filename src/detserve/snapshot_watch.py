"""A served snapshot, watched: the record checked often, every byte read again at a paced rate.

The gateway calls :meth:`SnapshotWatch.check` every ``reverify_interval_s``. Each call:

1. when due (below), reads the manifest (it must still be the one served under) and checks the
   record of the container lifetime's full pass (:func:`detserve.snapshot_state.check_record`):
   O(files), so a change made through the file system is caught within one interval (or the
   spacing a snapshot of many files needs), whatever the snapshot's size. While serving, a
   record that no longer holds (or is gone) fails the check at once: something changed the
   snapshot under a running server, and a full pass first would serve on for as long as it
   takes. Restarting ``serve`` verifies every byte again. Only the first check
   makes a full pass, when ``serve`` started without a record (a snapshot changed just before);
   when that pass cannot write one either (a change within the racy margin of its start), the
   first check past the margin makes another, which must: a change it finds within its own
   margin was made while serving, and fails the check as a record that no longer holds does.
   Without that, one change just before ``serve`` started left only the paced pass to see any
   later one;
2. advances :class:`PacedPass` by ``bytes_per_s`` times the time since the last call: every file
   is read again from the start and hashed, so what the record cannot see (a change below the
   file system) is caught within one paced pass, the snapshot's size over ``bytes_per_s`` (or
   longer where its CPU time holds it back: :attr:`SnapshotWatch.pass_seconds`). It
   reads with ``O_DIRECT`` where the file system allows it, so that it reads the device and not
   the page cache, and leaves no page behind; elsewhere it reads through the cache and drops
   what it read (``POSIX_FADV_DONTNEED``).

Both are held to a share of one core (:mod:`detserve.watch_share`, 4 % by default) by their own
measured CPU time, whatever the snapshot's shape: a check of the record begins only once its
last one's cost over half the share has passed (a few files: every call; many: spaced out, and
:attr:`SnapshotWatch.record_bound_s` says by how much), and the paced pass stops when its credit
of CPU time is spent, whatever its byte budget (many tiny files cost more than their bytes).
For a few large files the rate is what bounds the cost: hashing runs at about 1.5-1.8 GB/s a
core on the development machine (docs/performance.md), so :data:`DEFAULT_BYTES_PER_S`
(32 MiB/s) is about 2 % of one core and a few per cent of its disk (1.2-1.5 GB/s cold):
``benchmarks/bench_soak.py`` measures it. Where
no record can be kept (a file system outside
:data:`~detserve.snapshot_identity.TRUSTED_FILE_SYSTEMS`), step 1 is skipped and the paced pass
is the only periodic check. Every failure is a :class:`~detserve.errors.DetserveError`: a file
that cannot be read is a :class:`~detserve.errors.SnapshotMismatch` naming it.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from detserve import snapshot_state
from detserve.errors import PinMismatch, SnapshotMismatch
from detserve.fileio import NotRegularFile
from detserve.manifest import parse_manifest
from detserve.snapshot import VerifyReport
from detserve.snapshot_identity import untrusted_file_system
from detserve.snapshot_state import (
    Lifetime,
    PinnedManifest,
    RecordStore,
    check_record,
    verify_in_lifetime,
)
from detserve.watch_share import DEFAULT_CPU_SHARE, WatchShare

#: the gateway's default pace of its periodic full pass
DEFAULT_BYTES_PER_S = 32 * 1024 * 1024
#: one read; a multiple of any logical block size, as ``O_DIRECT`` needs
CHUNK_BYTES = 1024 * 1024
#: the most a late call may catch up on at once, in seconds of pace
MAX_CATCH_UP_S = 10.0
#: how often the gateway calls :meth:`SnapshotWatch.check` unless told (``--reverify-interval``)
DEFAULT_INTERVAL_S = 2.0


class PacedPass:
    """A full pass over the snapshot's files, advanced a budget of bytes at a time, forever."""

    def __init__(self, snapshot_dir: Path, digests: Mapping[str, str]) -> None:
        self.snapshot_dir = Path(snapshot_dir)
        self._digests = dict(digests)
        self._order = sorted(self._digests)
        self._index = 0
        self._fd: int | None = None
        #: whether the file being read is read with O_DIRECT (the device, not the page cache)
        self.direct = False
        self._hasher = hashlib.sha256()
        self._offset = 0
        self._buffer = mmap.mmap(-1, CHUNK_BYTES)  # page-aligned, as O_DIRECT needs
        self.total_bytes = sum((self.snapshot_dir / path).stat().st_size for path in self._order)
        self.passes = 0
        self.completed_at: float | None = None
        #: when the last pass that completed began (wall clock): each file it read was as pinned
        #: at some moment after this, so the whole snapshot is vouched for as of then, not later
        self.covered_since: float | None = None
        self._started_at = time.time()
        self.bytes_read = 0

    def restart(self) -> None:
        """Start again from the first file (after a full pass made at once)."""
        self._close()
        self._index = 0
        self._started_at = time.time()

    def close(self) -> None:
        self._close()
        self._buffer.close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self, path: Path) -> None:
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
        direct = getattr(os, "O_DIRECT", 0)
        try:
            fd = os.open(path, flags | direct)
            self.direct = bool(direct)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            fd = os.open(path, flags)
            self.direct = False
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise NotRegularFile(path, info.st_mode)
        os.set_blocking(fd, True)
        self._fd = fd
        self._hasher = hashlib.sha256()
        self._offset = 0

    def _read(self) -> int:
        assert self._fd is not None
        view = memoryview(self._buffer)
        try:
            return os.readv(self._fd, [view])
        except OSError as exc:
            if not (self.direct and exc.errno == errno.EINVAL):
                raise
        # This file system takes O_DIRECT at open but not at read: read through the cache.
        path = self._path()
        self._close()
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(fd, True)
        os.lseek(fd, self._offset, os.SEEK_SET)
        self._fd, self.direct = fd, False
        return os.readv(fd, [view])

    def _path(self) -> Path:
        return self.snapshot_dir / self._order[self._index]

    def advance(self, budget: int, within: Callable[[], bool] = lambda: True) -> None:
        """Read and hash about ``budget`` bytes, while ``within()`` (asked before each read: the
        CPU credit of :class:`~detserve.watch_share.WatchShare`); raise
        :class:`SnapshotMismatch` when a file read to its end differs from the manifest."""
        while budget > 0 and within():
            if self._fd is None:
                self._open(self._path())
            count = self._read()
            if count:
                self._hasher.update(memoryview(self._buffer)[:count])
                if not self.direct and hasattr(os, "posix_fadvise"):
                    assert self._fd is not None
                    os.posix_fadvise(self._fd, self._offset, count, os.POSIX_FADV_DONTNEED)
                self._offset += count
                self.bytes_read += count
                budget -= count
                continue
            self._finish_file()

    def _finish_file(self) -> None:
        path = self._order[self._index]
        self._close()
        actual, expected = self._hasher.hexdigest(), self._digests[path]
        if actual != expected:
            raise SnapshotMismatch(
                f"snapshot {self.snapshot_dir} changed while serving (the paced full pass)",
                details=[f"changed: ./{path} expected {expected} actual {actual}"],
                hint="do not serve this snapshot; re-download the pinned revision and verify again",
            )
        self._index += 1
        if self._index == len(self._order):
            self._index = 0
            self.passes += 1
            self.completed_at = time.time()
            self.covered_since, self._started_at = self._started_at, self.completed_at


class SnapshotWatch:
    """What the gateway's periodic re-verification calls; raises on any failure."""

    def __init__(
        self,
        snapshot_dir: Path,
        manifest_path: Path,
        manifest_sha256: str,
        lifetime: Lifetime,
        *,
        bytes_per_s: int = DEFAULT_BYTES_PER_S,
        store: RecordStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        cpu_share: float = DEFAULT_CPU_SHARE,
        cpu_clock: Callable[[], float] = time.thread_time,
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        if bytes_per_s <= 0:
            raise ValueError("the paced pass needs a positive rate")
        if interval_s <= 0:
            raise ValueError("the watch is called at a positive interval")
        self.snapshot_dir = Path(snapshot_dir)
        self.manifest_path = Path(manifest_path)
        self.manifest_sha256 = manifest_sha256
        self.lifetime = lifetime
        self.bytes_per_s = bytes_per_s
        self._store = store if store is not None else RecordStore()
        self._clock = clock
        self._last = clock()
        #: what the watch spends, measured, held to its share of one core
        self.share = WatchShare(cpu_share, cpu_clock=cpu_clock)
        #: how often the caller calls :meth:`check` (what the stated bounds are counted in)
        self.interval_s = interval_s
        #: how long (the watch's clock) the last paced pass that completed took
        self.last_pass_s: float | None = None
        self._passes_seen = 0
        self._pass_began = self._last
        self._paced: PacedPass | None = None
        #: why no record can be kept here (then the paced pass is the only periodic check)
        self.unrecorded: str | None = None
        #: the full pass of the first check, when there was no record to start from
        self.first_pass: VerifyReport | None = None
        #: checks of the record that held
        self.record_checks = 0
        #: when (``time_ns``) the full pass that could not write a record began: the first check
        #: past the racy margin makes another
        self._unrecorded_pass_at: int | None = None
        #: as of when (wall clock) the whole snapshot last verified: a check whose record held
        #: (or whose full pass passed), else the start of the last paced pass that completed;
        #: what the gateway reports as the snapshot's verification age
        self.verified_whole_at: float | None = None

    def _manifest(self) -> PinnedManifest:
        manifest = PinnedManifest.read(self.manifest_path)
        if manifest.sha256 != self.manifest_sha256:
            raise PinMismatch(
                f"the manifest {self.manifest_path} changed while serving: sha256 "
                f"{manifest.sha256}, served under {self.manifest_sha256}"
            )
        return manifest

    def check(self) -> None:
        """The record when due, then the paced pass's share of bytes and of CPU time; raise on
        any failure."""
        now = self._clock()
        elapsed = min(now - self._last, MAX_CATCH_UP_S)
        self._last = now
        self.share.accrue(elapsed)
        checked_at = time.time()
        if self._paced is None:
            self._pass_began = now
            with self.share.charged():
                self._paced = self._start(self._manifest())
            whole = self.unrecorded is None or self.first_pass is not None
        elif self._unrecorded_pass_at is not None:
            with self.share.charged():
                whole = self._pass_again(self._manifest())
        elif self.share.record_due(now, self.interval_s):
            # the manifest is read (and hashed) with the record: O(files) too
            with self.share.record_check(now):
                manifest = self._manifest()
                if self.unrecorded is None:
                    self._check_record(manifest)
            whole = self.unrecorded is None
        else:
            whole = False  # not due: the last check's cost over the share has not passed
        try:
            with self.share.paced_step() as within:
                self._paced.advance(int(self.bytes_per_s * max(elapsed, 0.0)), within)
        except OSError as exc:  # vanished, no longer a regular file, unreadable
            self._paced.restart()
            raise SnapshotMismatch(
                f"snapshot {self.snapshot_dir} changed while serving: cannot read "
                f"{exc.filename}: {exc.strerror or exc}",
                hint="stop serving it; `detserve serve` verifies every byte again when restarted",
            ) from exc
        if self._paced.passes != self._passes_seen:  # a pass completed: how long it took
            self.last_pass_s = now - self._pass_began
            self._passes_seen, self._pass_began = self._paced.passes, now
        # Only a check that vouched for every file moves the time: where no record is kept, a
        # check reads a slice, and the snapshot is whole as of the last complete pass's start.
        times = (checked_at if whole else None, self._paced.covered_since, self.verified_whole_at)
        self.verified_whole_at = max((at for at in times if at is not None), default=None)

    def _why_not_held(self, manifest: PinnedManifest) -> list[str]:
        record, why = self._store.load(self.snapshot_dir)
        if record is None:
            return [why]
        return check_record(record, self.snapshot_dir, manifest.sha256, self.lifetime)

    def _start(self, manifest: PinnedManifest) -> PacedPass:
        digests = parse_manifest(manifest.data).manifest.digests
        self.unrecorded = untrusted_file_system(self.snapshot_dir, digests)
        if self.unrecorded is None and self._why_not_held(manifest):
            began = time.time_ns()
            with self.share.exempt():
                self.first_pass = verify_in_lifetime(
                    self.snapshot_dir, manifest, self.lifetime, store=self._store
                )
            if self._why_not_held(manifest):
                # A record that cannot be written (an unwritable state directory, say) must not
                # make every later check fail: the paced pass is then the only periodic check.
                self.unrecorded = self._store.unusable()
                self._unrecorded_pass_at = began if self.unrecorded is None else None
        return PacedPass(self.snapshot_dir, digests)

    def _pass_again(self, manifest: PinnedManifest) -> bool:
        """The full pass after one that left no record, once past its margin: it must leave one
        (else the snapshot changed while serving). Whether the whole snapshot was verified."""
        assert self._unrecorded_pass_at is not None
        began = time.time_ns()
        if began < self._unrecorded_pass_at + snapshot_state.RACY_MARGIN_NS:
            return False
        with self.share.exempt():
            report = verify_in_lifetime(
                self.snapshot_dir, manifest, self.lifetime, store=self._store
            )
        self._unrecorded_pass_at = None
        if self._why_not_held(manifest):
            self.unrecorded = self._store.unusable()
            if self.unrecorded is None:
                raise SnapshotMismatch(
                    f"snapshot {self.snapshot_dir} changed through the file system while serving",
                    details=[report.record or "no record written"],
                    hint="stop serving it; `detserve serve` verifies every byte again when "
                    "restarted",
                )
        return True

    def _check_record(self, manifest: PinnedManifest) -> None:
        why = self._why_not_held(manifest)
        if why:
            raise SnapshotMismatch(
                f"snapshot {self.snapshot_dir} changed through the file system while serving",
                details=why,
                hint="stop serving it; `detserve serve` verifies every byte again when restarted",
            )
        self.record_checks += 1

    @property
    def paced(self) -> PacedPass | None:
        return self._paced

    @property
    def record_bound_s(self) -> float | None:
        """How long after a change through the file system the check that catches it begins,
        at most: one interval, or the record's last cost over its share rounded up to a call
        (:meth:`~detserve.watch_share.WatchShare.record_bound_s`); None where no record is kept.
        """
        if self.unrecorded is not None or self._paced is None:
            return None
        return self.share.record_bound_s(self.interval_s)

    @property
    def pass_seconds(self) -> float | None:
        """How long one paced pass over the snapshot takes, once its size is known: its size
        over the rate, or longer where the CPU share holds it back: as long as the last pass
        took, else the CPU a pass needs (extrapolated from what was read so far) over the share
        the record's checks leave it."""
        paced = self._paced
        if paced is None:
            return None
        nominal = paced.total_bytes / self.bytes_per_s
        if self.last_pass_s is not None:
            return max(nominal, self.last_pass_s)
        if not paced.bytes_read or not paced.total_bytes:
            return nominal
        share = self.share
        cpu_per_pass = share.paced_cpu_total_s * paced.total_bytes / paced.bytes_read
        # what the record's checks leave it: at least half the share
        records = share.record_cpu_s / share.record_bound_s(self.interval_s)
        return max(nominal, cpu_per_pass / (share.share - min(records, share.record_share)))

    def close(self) -> None:
        if self._paced is not None:
            self._paced.close()
