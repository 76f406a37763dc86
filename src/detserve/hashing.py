"""SHA-256 of many files at once, at the speed of the disk or the cores, whichever is lower.

Each file is one SHA-256 stream (a stream cannot be split), so files are hashed in parallel by a
thread pool: ``hashlib`` releases the GIL while it hashes a large buffer, so threads use every
core. The largest files are started first so that one huge file does not start last and leave
the other cores idle.

The loop is the one ``hashlib.file_digest`` runs, on a descriptor that
:func:`~detserve.fileio.open_regular` has opened and checked: each worker reads into one reused
256 KiB buffer (``file_digest``'s size) with ``readv``. A buffer that small stays in the core's
cache between the copy out of the page cache and the hash; an 8 MiB one does not (measured in
docs/performance.md). Memory is ``workers x chunk_size`` whatever the file sizes.

Each worker takes the next file from one shared list instead of a future per file (a future
costs tens of microseconds, which is most of the price of a 4 KiB file), and reports progress
every few MiB rather than every chunk.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from detserve.fileio import open_regular

DEFAULT_CHUNK_SIZE = 256 * 1024
#: how many bytes a worker hashes between two progress reports
PROGRESS_EVERY = 8 * 1024 * 1024

#: called with a number of bytes just hashed; must be thread-safe
ProgressCallback = Callable[[int], None]


def default_workers() -> int:
    return max(
        1,
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
    )


@dataclass(frozen=True)
class FileDigest:
    path: str
    sha256: str
    size: int
    #: the ``fstat`` of the descriptor that was read, taken before the first read (after the
    #: sync when ``sync_first`` was asked); what :mod:`detserve.snapshot_state` records
    opened: os.stat_result | None = None


class _BatchedProgress:
    """Adds up one worker's counts and reports them every ``PROGRESS_EVERY`` bytes."""

    def __init__(self, progress: ProgressCallback) -> None:
        self._progress = progress
        self._pending = 0

    def __call__(self, count: int) -> None:
        self._pending += count
        if self._pending >= PROGRESS_EVERY:
            self._progress(self._pending)
            self._pending = 0

    def flush(self) -> None:
        if self._pending:
            self._progress(self._pending)
            self._pending = 0


def sha256_opened(
    path: Path,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: ProgressCallback | None = None,
    buffer: memoryview | None = None,
    sync_first: bool = False,
) -> tuple[str, int, os.stat_result]:
    """Return ``(hex digest, size, fstat)`` of one file, reading it once in ``chunk_size`` pieces.

    ``sync_first`` writes the file's dirty pages back before the ``fstat`` and the first read:
    writeback write-protects the pages of a shared writable mapping, so that a later write
    through it faults and updates the file's change time (docs/threat-model.md, "Weights
    changed after a full pass"). Raises ``OSError``, :class:`~detserve.fileio.NotRegularFile` when
    ``path`` is (or has become) anything but a regular file: a FIFO swapped in after a scan
    never blocks the read.
    """
    view = buffer if buffer is not None else memoryview(bytearray(chunk_size))
    digest = hashlib.sha256()
    size = 0
    fd, info = open_regular(path)
    try:
        if sync_first:
            try:
                os.fsync(fd)
            except OSError as exc:
                # A read-only mount has no writer to fear; a file system that cannot sync is
                # not one a record is kept on (snapshot_state.TRUSTED_FILE_SYSTEMS).
                if exc.errno not in (errno.EROFS, errno.EINVAL, errno.ENOTSUP):
                    raise
            info = os.fstat(fd)
        if info.st_size > len(view) and hasattr(os, "posix_fadvise"):
            # Read-ahead for a file of several chunks; a one-chunk file gains nothing from it.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while True:
            count = os.readv(fd, [view])
            if not count:
                break
            digest.update(view[:count])
            size += count
            if progress is not None:
                progress(count)
    finally:
        os.close(fd)
    return digest.hexdigest(), size, info


def sha256_file(
    path: Path,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: ProgressCallback | None = None,
    buffer: memoryview | None = None,
) -> tuple[str, int]:
    """Return ``(hex digest, size)`` of one file (:func:`sha256_opened` without the ``fstat``)."""
    digest, size, _ = sha256_opened(path, chunk_size=chunk_size, progress=progress, buffer=buffer)
    return digest, size


def hash_files(
    root: Path,
    relative_paths: Iterable[str],
    *,
    workers: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: ProgressCallback | None = None,
    sizes: Mapping[str, int] | None = None,
    sync_first: bool = False,
) -> dict[str, FileDigest]:
    """Hash ``root / path`` for every path, in parallel. Raises ``OSError`` on a read failure.

    ``sizes`` (a scan's, when the caller has one) orders the files, largest first; without it
    each file is ``stat``-ed. It decides the order only: every file is read to its end.
    ``sync_first``: see :func:`sha256_file`.
    """
    root = Path(root)
    paths = list(relative_paths)
    known = sizes if sizes is not None else {path: (root / path).stat().st_size for path in paths}
    ordered = sorted(paths, key=lambda p: (-known[p], p))
    results: dict[str, FileDigest] = {}
    count = min(workers or default_workers(), len(ordered))
    if count <= 1:
        view = memoryview(bytearray(chunk_size))
        for path in ordered:
            digest, size, info = sha256_opened(
                root / path, progress=progress, buffer=view, sync_first=sync_first
            )
            results[path] = FileDigest(path=path, sha256=digest, size=size, opened=info)
        return results

    queue = iter(ordered)
    taking = threading.Lock()
    stop = threading.Event()

    def work() -> None:
        view = memoryview(bytearray(chunk_size))
        batched = _BatchedProgress(progress) if progress is not None else None
        try:
            while not stop.is_set():
                with taking:
                    path = next(queue, None)
                if path is None:
                    return
                digest, size, info = sha256_opened(
                    root / path, progress=batched, buffer=view, sync_first=sync_first
                )
                results[path] = FileDigest(path=path, sha256=digest, size=size, opened=info)
        except BaseException:
            # A failed read: the other workers finish the file they are on and take no other.
            stop.set()
            raise
        finally:
            if batched is not None:
                batched.flush()

    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="sha256") as pool:
        running = [pool.submit(work) for _ in range(count)]
        try:
            for worker in running:
                worker.result()
        except BaseException:
            stop.set()  # Ctrl-C, or the first worker's failure: start no other file
            raise
    return results
