"""SHA-256 of many files at once, at the speed of the disk or the cores, whichever is lower.

Each file is one SHA-256 stream (a stream cannot be split), so files are hashed in parallel by a
thread pool: ``hashlib`` releases the GIL while it hashes a large buffer, so threads use every
core. Each worker reads into one reused buffer with ``readinto``; memory is ``workers x
chunk_size`` whatever the file sizes. The largest files are started first so that one huge file
does not start last and leave the other cores idle.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from detserve.fileio import open_regular

DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024

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


class _Workspace(threading.local):
    """One reusable read buffer per worker thread."""

    def __init__(self, chunk_size: int) -> None:
        self.buffer = bytearray(chunk_size)
        self.view = memoryview(self.buffer)


def sha256_file(
    path: Path,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: ProgressCallback | None = None,
    buffer: memoryview | None = None,
) -> tuple[str, int]:
    """Return ``(hex digest, size)`` of one file, reading it once in ``chunk_size`` pieces.

    Raises ``OSError``, :class:`~detserve.fileio.NotRegularFile` when ``path`` is (or has
    become) anything but a regular file: a FIFO swapped in after a scan never blocks the read.
    """
    view = buffer if buffer is not None else memoryview(bytearray(chunk_size))
    digest = hashlib.sha256()
    size = 0
    fd, _ = open_regular(path)
    try:
        if hasattr(os, "posix_fadvise"):
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
    return digest.hexdigest(), size


def hash_files(
    root: Path,
    relative_paths: Iterable[str],
    *,
    workers: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: ProgressCallback | None = None,
) -> dict[str, FileDigest]:
    """Hash ``root / path`` for every path, in parallel. Raises ``OSError`` on a read failure."""
    root = Path(root)
    paths = list(relative_paths)
    sizes = {path: (root / path).stat().st_size for path in paths}
    ordered = sorted(paths, key=lambda p: (-sizes[p], p))
    workspace = _Workspace(chunk_size)

    def one(path: str) -> FileDigest:
        digest, size = sha256_file(
            root / path, chunk_size=chunk_size, progress=progress, buffer=workspace.view
        )
        return FileDigest(path=path, sha256=digest, size=size)

    count = workers or default_workers()
    results: dict[str, FileDigest] = {}
    if count == 1 or len(ordered) <= 1:
        for path in ordered:
            results[path] = one(path)
        return results
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="sha256") as pool:
        futures = [pool.submit(one, path) for path in ordered]
        try:
            for future in as_completed(futures):
                item = future.result()
                results[item.path] = item
        except BaseException:
            # A failed read or Ctrl-C: drop the files not yet started instead of hashing them.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results
