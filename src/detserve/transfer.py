"""Files of one commit fetched with huggingface_hub, several at once, stoppable at any moment.

huggingface_hub writes each file to ``blobs/<etag>.<id>.incomplete``, renames it to
``blobs/<etag>`` once its size is checked, and only then links ``snapshots/<rev>/<path>`` to it.
So whatever stops a transfer, no unfinished file ever has a snapshot entry. Invariants here:

* Every file is asked for at the pinned commit, and must be stored under it: a hub that answers
  a file for another commit (``X-Repo-Commit``) is a :class:`~detserve.errors.PinMismatch`.
* A transfer that fails, or Ctrl-C, stops the others at their next chunk (huggingface_hub
  removes their partial files itself). A transfer that receives nothing cannot be reached by a
  chunk: its partial file is removed here, and its thread (a daemon) is left to the exit,
  so that Ctrl-C never waits for a stalled network.
* A killed process leaves its partial files; :func:`remove_partials` removes them on the next
  download, each under huggingface_hub's lock of its blob, so that a download running in another
  process keeps its own.
* The token is passed explicitly, or ``False``: huggingface_hub never adds one of its own.
* Memory is bounded by the files fetched at once, not their sizes: huggingface_hub reads each
  response in :data:`TRANSFER_CHUNK_BYTES` pieces while a download runs.
"""

from __future__ import annotations

import contextlib
import errno
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from detserve.errors import EnvironmentFault, Interrupted, PinMismatch, bounded

#: how long Ctrl-C waits for the transfers to stop at their next chunk before it removes the
#: partial files of those still waiting for the network
STOP_GRACE_S: Final = 2.0
#: the piece huggingface_hub reads a response in, while detserve downloads. Its own is 10 MiB,
#: held (and copied) per transfer: 8 files at once took 222 MB, 1 MiB pieces 88 MB
#: (docs/performance.md). Each piece is also when a transfer can be told to stop.
TRANSFER_CHUNK_BYTES: Final = 1024 * 1024

_chunk_lock = threading.Lock()
_chunk_users = 0
_chunk_saved: int | None = None


@contextlib.contextmanager
def _small_chunks() -> Iterator[None]:
    """huggingface_hub's read size set to :data:`TRANSFER_CHUNK_BYTES` while any download of
    this process runs, and given back after the last one (it is a module constant of
    huggingface_hub, read at each transfer)."""
    from huggingface_hub import constants

    global _chunk_users, _chunk_saved
    with _chunk_lock:
        if _chunk_users == 0:
            _chunk_saved = constants.DOWNLOAD_CHUNK_SIZE
            constants.DOWNLOAD_CHUNK_SIZE = min(_chunk_saved, TRANSFER_CHUNK_BYTES)
        _chunk_users += 1
    try:
        yield
    finally:
        with _chunk_lock:
            _chunk_users -= 1
            if _chunk_users == 0 and _chunk_saved is not None:
                constants.DOWNLOAD_CHUNK_SIZE = _chunk_saved


class _Cancelled(Exception):
    """Raised inside a transfer to stop it (Ctrl-C, or another file failed)."""


def _byte_counter(on_bytes: Callable[[int], None], cancelled: threading.Event) -> type[Any]:
    """A stand-in for the tqdm class huggingface_hub reports a file's bytes to.

    It draws nothing (the caller draws one bar for all files) and is where a transfer learns that
    it must stop: huggingface_hub calls ``update`` for every chunk it writes, and an exception
    raised there ends the transfer through huggingface_hub's own clean-up (the partial file is
    removed). ``update_transfer`` exists so that a Xet download reports written bytes only here.
    """

    class ByteCounter:
        total: int | None = None
        n: int = 0

        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def __enter__(self) -> ByteCounter:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def update(self, n: float | None = 1) -> None:
            if cancelled.is_set():
                raise _Cancelled
            if n:
                on_bytes(int(n))

        def update_transfer(self, n: float | None = 1) -> None:
            if cancelled.is_set():
                raise _Cancelled

        def _ignore(self, *args: object, **kwargs: object) -> None:
            return None

        close = refresh = set_description = set_description_str = _ignore
        set_postfix_str = set_transfer_postfix_str = _ignore

    return ByteCounter


def remove_partials(model_cache_dir: Path) -> int:
    """Remove the ``.incomplete`` files of downloads that were killed; return how many.

    Each is removed only under huggingface_hub's lock of its blob, the lock a running download
    of that blob holds: a download in progress elsewhere keeps its file.
    """
    from filelock import FileLock, Timeout

    blobs = model_cache_dir / "blobs"
    if not blobs.is_dir():
        return 0
    locks = model_cache_dir.parent / ".locks" / model_cache_dir.name
    removed = 0
    for partial in sorted(blobs.glob("*.incomplete")):
        etag = partial.name.split(".", 1)[0]
        locks.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(locks / f"{etag}.lock", timeout=0):
                partial.unlink(missing_ok=True)
                removed += 1
        except Timeout:
            continue  # being written by a download that is running now
    return removed


def _local_failure(exc: OSError, hf_home: Path) -> EnvironmentFault | None:
    """A file system error of the Hugging Face home (full, read-only, not permitted), if it is
    one; huggingface_hub's network failures are OSErrors too, without an errno."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
        return EnvironmentFault(
            f"cannot write the Hugging Face home {hf_home}: {exc.strerror} ({exc.filename})",
            hint="check the free space and the permissions of snapshot.hf_home",
        )
    return None


@dataclass(frozen=True)
class Commit:
    """Where one commit's files come from and go to."""

    repo_id: str
    revision: str
    endpoint: str
    hf_home: Path
    token: str | None

    @property
    def cache_dir(self) -> Path:
        return self.hf_home / "hub"

    @property
    def model_cache_dir(self) -> Path:
        return self.cache_dir / ("models--" + self.repo_id.replace("/", "--"))

    @property
    def snapshot_dir(self) -> Path:
        return self.model_cache_dir / "snapshots" / self.revision

    def __repr__(self) -> str:
        return f"Commit({self.repo_id}@{self.revision} from {self.endpoint})"  # never the token


class _Pool:
    """Daemon threads taking files off a list; the first failure stops the rest."""

    def __init__(
        self,
        commit: Commit,
        files: Sequence[tuple[str, str]],
        workers: int,
        transfer: Callable[[str], None],
    ) -> None:
        self.commit = commit
        self.transfer = transfer
        self.pending = list(files)
        self.lock = threading.Lock()
        self.cancelled = threading.Event()
        self.in_flight: dict[int, tuple[str, str]] = {}
        self.finished: list[str] = []
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._work, name=f"download-{n}", daemon=True)
            for n in range(min(max(1, workers), len(self.pending)))
        ]

    def _take(self) -> tuple[str, str] | None:
        with self.lock:
            if self.cancelled.is_set() or not self.pending:
                return None
            item = self.pending.pop(0)
            self.in_flight[threading.get_ident()] = item
            return item

    def _work(self) -> None:
        while (item := self._take()) is not None:
            try:
                self.transfer(item[0])
            except _Cancelled:
                return
            except BaseException as exc:  # noqa: BLE001 (raised again by the caller's thread)
                with self.lock:
                    self.errors.append(exc)
                self.cancelled.set()
                return
            finally:
                with self.lock:
                    self.in_flight.pop(threading.get_ident(), None)
            with self.lock:
                self.finished.append(item[0])

    def run(self) -> None:
        """Run every transfer, until all are done or the first one fails."""
        for thread in self.threads:
            thread.start()
        # Short waits: Ctrl-C reaches this thread between them, and a failure is seen at once.
        while not self.cancelled.is_set() and any(t.is_alive() for t in self.threads):
            self.cancelled.wait(0.05)
        if self.cancelled.is_set():
            self.stop()

    def stop(self) -> None:
        """Stop every transfer; remove the partial files of those that do not stop in time."""
        self.cancelled.set()
        deadline = time.monotonic() + STOP_GRACE_S
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        blobs = self.commit.model_cache_dir / "blobs"
        with self.lock:
            stalled = list(self.in_flight.values())
        for _, etag in stalled:
            # Our own thread holds huggingface_hub's lock of this blob: no other process can be
            # writing it. (A hub whose ETag differs from its listing leaves a partial file
            # named otherwise; the next download removes it.)
            for partial in blobs.glob(f"{etag}.*.incomplete"):
                partial.unlink(missing_ok=True)


def fetch_files(
    commit: Commit,
    files: Sequence[tuple[str, str]],
    *,
    workers: int,
    on_bytes: Callable[[int], None] | None = None,
) -> int:
    """Fetch ``files`` (path in the repository, expected blob name), largest first as given;
    return the bytes written. Raises what the hub's failure converts to (exit 3), PinMismatch,
    or Interrupted on Ctrl-C."""
    from huggingface_hub import hf_hub_download

    from detserve.hub import hub_call

    lock = threading.Lock()
    written = 0

    def count(n: int) -> None:
        nonlocal written
        with lock:
            written += n
        if on_bytes is not None:
            on_bytes(n)

    def transfer(path: str) -> None:
        stored = hf_hub_download(
            commit.repo_id,
            path,
            revision=commit.revision,
            cache_dir=commit.cache_dir,
            endpoint=commit.endpoint,
            token=commit.token if commit.token is not None else False,
            tqdm_class=progress,
        )
        expected = commit.snapshot_dir / path
        if Path(stored) != expected:
            raise PinMismatch(
                f"{commit.endpoint} answered {path} for another commit than the pinned "
                f"{commit.revision}",
                details=[f"expected at: {expected}", f"stored at:   {bounded(stored)}"],
                hint="this hub does not serve the pinned commit faithfully; do not use it",
            )

    pool = _Pool(commit, files, workers, transfer)
    progress = _byte_counter(count, pool.cancelled)
    try:
        with _small_chunks():
            pool.run()
    except KeyboardInterrupt:
        pool.stop()
        raise Interrupted(
            f"download of {commit.repo_id}@{commit.revision} interrupted: {len(pool.finished)} "
            f"of {len(files)} files finished and kept; the unfinished ones were removed and are "
            "not in the snapshot",
            hint="run the same command again: finished files are not fetched again",
        ) from None
    if pool.errors:
        error = pool.errors[0]
        with hub_call(commit.endpoint, f"{commit.repo_id}@{commit.revision}"):
            if isinstance(error, OSError):
                local = _local_failure(error, commit.hf_home)
                if local is not None:
                    raise local from error
            raise error
    return written
