"""The only way detserve opens a file it was given, and the only way it writes one.

Reading. :func:`read_input` and :func:`open_input` open with ``O_NONBLOCK`` (so that a FIFO
cannot block the open), ``fstat`` the descriptor they opened (so that what is checked is what is
read) and refuse anything but a regular file: a FIFO, a socket, a device such as ``/dev/zero``,
a directory. A symbolic link is followed and its target is what is checked; a dangling one is
"not found". The size is checked against the kind's cap (the ``MAX_*_BYTES`` constants below,
tabled in docs/failure-cases.md) before anything is read, and no more than the cap plus one byte
is ever read, so a file that grows while it is read is refused too. Every refusal is an
:class:`~detserve.errors.InputError` subclass (exit 2) naming the path.

Writing. :func:`check_outputs` runs before any work: it ``lstat``s every output and never
follows a link; it refuses, with or without ``--force``, anything there that is not a regular file
(a device, a FIFO, a directory, a symbolic link, dangling or not), an output that is one of the
command's inputs or lies inside an input directory (compared by resolved path and by
``(st_dev, st_ino)``, so that ``..`` spellings, links and hard links are caught), and two
outputs that are one file; without ``--force`` it refuses an existing file.
:func:`atomic_writer` writes a temporary file created exclusively in the destination's
directory, fsyncs it, and commits it: without ``--force`` with ``link(2)``, which fails when
anything appeared at the destination meanwhile (a planted file or link is never replaced);
with ``--force`` after checking again that the destination is absent or a regular file, with
``rename(2)``, which replaces a name and never writes through a link. The directory is fsynced
after the commit.

What remains (documented in docs/threat-model.md): between the last ``lstat`` and the
``rename`` of a ``--force`` write, a regular file may be swapped for a link or a FIFO, which the
rename then replaces (it never writes through it); a directory component of a path may be
swapped for a link by someone who can write to its parent.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Final

from detserve.errors import (
    EnvironmentFault,
    InputError,
    OutputExistsError,
    UnsafeOutputError,
    bounded,
)

_KiB: Final = 1024
_MiB: Final = 1024 * _KiB
_GiB: Final = 1024 * _MiB

#: A profile (``--config``): a few kilobytes of JSON in practice.
MAX_PROFILE_BYTES: Final = 1 * _MiB
#: A snapshot manifest (``--manifest``, a profile's manifest, ``--bundle-pin``): about 100 bytes
#: a file, so about 600,000 files.
MAX_MANIFEST_BYTES: Final = 64 * _MiB
#: A prompt bundle's ``bundle.json``: its source and tokenizer pins.
MAX_BUNDLE_INFO_BYTES: Final = 1 * _MiB
#: A prompt bundle's ``prompts.jsonl``: 256 prompts of the largest size a prompt may have.
MAX_PROMPTS_BYTES: Final = 256 * _MiB
#: A tokenizer file of the snapshot, read whole to measure prompts (large vocabularies are ~30 MB).
MAX_TOKENIZER_BYTES: Final = 256 * _MiB
#: A dataset file ``prompts bootstrap`` reads whole (``--dataset-file``, or the hub's file).
MAX_DATASET_BYTES: Final = 1 * _GiB
#: A run log (``--run-a``, ``--run-b``, ``--run``, ``--claim``), streamed a line at a time (each
#: line at most ``runlog.MAX_LINE_BYTES``): 64 GiB holds 30 million typical samples.
MAX_RUN_LOG_BYTES: Final = 64 * _GiB
#: A secrets file (``--secrets-file``): a handful of ``KEY=VALUE`` lines.
MAX_SECRETS_BYTES: Final = 64 * _KiB

_READ_FLAGS: Final = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class NotRegularFile(OSError):
    """An opened path that is not a regular file (raised by :func:`open_regular`)."""

    def __init__(self, path: Path, mode: int) -> None:
        super().__init__(errno.EINVAL, f"not a regular file ({describe_mode(mode)})", str(path))
        self.mode = mode


def describe_mode(mode: int) -> str:
    """What a ``st_mode`` is, in words: ``a FIFO``, ``a character device``..."""
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISREG, "a regular file"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def open_regular(path: Path) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading without blocking; return the descriptor and its ``fstat``.

    Raises ``OSError`` (``FileNotFoundError`` for a dangling link) or :class:`NotRegularFile`;
    the descriptor is closed on any failure.
    """
    fd = os.open(path, _READ_FLAGS)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(Path(path), info.st_mode)
        # A regular file never blocks; clearing the flag keeps reads ordinary.
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def _checked_fd(path: Path, what: str, cap: int, error: type[InputError]) -> int:
    shown = bounded(str(path))
    try:
        fd, info = open_regular(path)
    except NotRegularFile as exc:
        raise error(
            f"cannot read {what} {shown}: it is {describe_mode(exc.mode)}, not a regular file "
            "(refused unread)"
        ) from exc
    except OSError as exc:
        raise error(f"cannot read {what} {shown}: {exc.strerror}") from exc
    if info.st_size > cap:
        os.close(fd)
        raise error(
            f"cannot read {what} {shown}: {info.st_size} bytes, over the limit of {cap} "
            "(refused unread)",
            hint="see the size limits in docs/failure-cases.md",
        )
    return fd


def read_input(
    path: Path,
    *,
    what: str,
    cap: int,
    error: type[InputError] = InputError,
) -> bytes:
    """The bytes of a regular file of at most ``cap`` bytes; ``what`` names it in errors."""
    fd = _checked_fd(path, what, cap, error)
    try:
        with os.fdopen(fd, "rb", buffering=0) as handle:
            data = handle.read(cap + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {bounded(str(path))}: {exc.strerror}") from exc
    if len(data) > cap:
        raise error(f"{what} {bounded(str(path))} grew past the limit of {cap} bytes while read")
    return data


class _CappedReader(io.RawIOBase):
    """A descriptor that refuses to yield more than ``cap`` bytes."""

    def __init__(self, fd: int, cap: int, overflow: InputError) -> None:
        self._file = io.FileIO(fd, "rb")
        self._left = cap
        self._overflow = overflow

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = self._file.readinto(buffer) or 0
        self._left -= count
        if self._left < 0:
            raise self._overflow
        return count

    def close(self) -> None:
        self._file.close()
        super().close()


def open_input(
    path: Path,
    *,
    what: str,
    cap: int,
    error: type[InputError] = InputError,
    buffering: int = 1 << 20,
) -> io.BufferedReader:
    """A checked, buffered handle on a regular file of at most ``cap`` bytes, for streaming.

    Reading past ``cap`` (a file growing meanwhile) raises ``error``.
    """
    fd = _checked_fd(path, what, cap, error)
    overflow = error(f"{what} {bounded(str(path))} grew past the limit of {cap} bytes while read")
    return io.BufferedReader(_CappedReader(fd, cap, overflow), buffer_size=buffering)


# --- writing ------------------------------------------------------------------------------------


#: The longest path the kernel opens (Linux PATH_MAX); a longer one names nothing, and resolving
#: it component by component would take minutes for a 20 MiB path.
_PATH_MAX: Final = 4096


def _too_long(path: Path) -> bool:
    return len(os.fsencode(path)) >= _PATH_MAX


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = Path(path).stat()
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def _resolved(path: Path) -> Path:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):
        return Path.cwd() / path


def _refuse_input(output: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output that is an input, or lies inside an input directory."""
    shown = bounded(str(output))
    if _too_long(output):
        raise UnsafeOutputError(f"cannot write {shown}: the path is too long")
    inputs = [source for source in inputs if not _too_long(source)]  # they cannot be read
    target = _resolved(output)
    output_id = _identity(output)
    ancestors = {_identity(parent) for parent in target.parents} - {None}
    for source in inputs:
        resolved = _resolved(source)
        source_id = _identity(source)
        if target == resolved or (output_id is not None and output_id == source_id):
            raise UnsafeOutputError(
                f"refusing to write {shown}: it is the input {bounded(str(source))}",
                hint="write the output to another file; an input is never overwritten",
            )
        if target.is_relative_to(resolved) or (source_id is not None and source_id in ancestors):
            raise UnsafeOutputError(
                f"refusing to write {shown}: it is inside the input {bounded(str(source))}",
                hint="write the output outside the directories the command reads",
            )


def _refuse_unsafe(path: Path, *, force: bool) -> None:
    """Refuse a destination that is not absent or a regular file; refuse a file without force."""
    shown = bounded(str(path))
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UnsafeOutputError(f"cannot check output {shown}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeOutputError(
            f"refusing to replace {shown}: it is {describe_mode(info.st_mode)}",
            hint="detserve replaces regular files only, even with --force; choose another path",
        )
    if not force:
        raise OutputExistsError(f"refusing to overwrite {shown}", hint="pass --force to replace it")


def check_outputs(outputs: Sequence[Path], *, force: bool, inputs: Sequence[Path] = ()) -> None:
    """Refuse, before any work, outputs that must not be written (see the module docstring).

    ``inputs`` are the files and directories the command reads: an output may be none of them
    and lie inside none of them.
    """
    seen: dict[object, Path] = {}
    for output in outputs:
        output = Path(output)
        for key in (_resolved(output), _identity(output)):
            if key is not None and key in seen:
                raise UnsafeOutputError(
                    f"{bounded(str(output))} and {bounded(str(seen[key]))} are the same file: "
                    "each output needs its own path"
                )
            if key is not None:
                seen[key] = output
        _refuse_input(output, inputs)
        _refuse_unsafe(output, force=force)


def check_output_dir(path: Path, *, force: bool, inputs: Sequence[Path] = ()) -> None:
    """Refuse an output directory that is not absent or a real directory, or that is not empty
    without ``force``, or that is or lies inside an input."""
    path = Path(path)
    shown = bounded(str(path))
    _refuse_input(path, inputs)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UnsafeOutputError(f"cannot check output directory {shown}: {exc.strerror}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeOutputError(
            f"refusing to write into {shown}: it is {describe_mode(info.st_mode)}",
            hint="give a directory that does not exist yet, or a real directory",
        )
    if not force and any(path.iterdir()):
        raise OutputExistsError(
            f"refusing to write into {shown}: the directory is not empty",
            hint="a stray file would be pinned with the output; pass --force to write anyway",
        )


def _write_failed(path: Path, exc: OSError) -> EnvironmentFault | InputError:
    message = f"cannot write {bounded(str(path))}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
        return EnvironmentFault(message)
    return InputError(message)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # not every file system syncs one
            raise
    finally:
        os.close(fd)


def _commit(tmp: Path, path: Path, *, force: bool) -> None:
    """Put the finished temporary file at ``path``, never through a link."""
    if not force:
        try:
            # link(2) fails with EEXIST whatever appeared at `path` since the check.
            os.link(tmp, path, follow_symlinks=False)
        except FileExistsError:
            raise OutputExistsError(
                f"refusing to overwrite {bounded(str(path))}: it appeared while writing"
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            # A file system without hard links: check again, then rename (a window remains).
            _refuse_unsafe(path, force=False)
            tmp.replace(path)
            return
        tmp.unlink()
        return
    _refuse_unsafe(path, force=True)
    tmp.replace(path)


@contextlib.contextmanager
def atomic_writer(path: Path, *, force: bool, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """Write ``path`` all at once or not at all.

    The content goes to a temporary file created exclusively in the same directory, which is
    fsynced and committed (see the module docstring) only when the ``with`` block finishes
    without an exception. On any exception, Ctrl-C included, the temporary file is removed and
    ``path`` is left as it was. Without ``force`` an existing ``path`` is never replaced.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{path.name[:64]}.", suffix=".partial", dir=path.parent
        )
    except OSError as exc:
        raise _write_failed(path, exc) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        tmp.chmod(mode)
        _commit(tmp, path, force=force)
        _fsync_directory(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_failed(path, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes, *, force: bool) -> None:
    with atomic_writer(path, force=force) as handle:
        handle.write(data)


def write_json_report(path: Path, document: dict[str, object], *, force: bool) -> None:
    """A JSON report for people and machines (indented, sorted keys), written atomically."""
    import json

    text = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"), force=force)
