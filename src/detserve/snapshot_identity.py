"""What detects a change to a snapshot through the file system: the identities of its files.

An identity is what ``lstat``/``stat`` says of an inode: device, inode, mode, links, owner,
group, size, mtime and ctime in ns. Every change a process can make through the file system
changes one of them: content written (through a shared mapping too, once its pages were written
back), truncated, replaced (a rename over the name: another inode), renamed (the directory's
mtime and ctime), re-linked (the link count, another inode), chmod or chown, an mtime set back
with ``utimensat`` (ctime, which no unprivileged process can set). A snapshot's identities are
those of every directory (``dir:REL``), every file's entry (``entry:PATH``; a link's text,
``link:PATH``, and where it resolves, ``real:PATH``), every file read through it
(``file:PATH``), where links may resolve (``roots:``) and, where the kernel has fs-verity, each
file's measurement (``verity:PATH``): detected, never assumed.

They are taken of the snapshot directory resolved (a link to it, or through a linked
component, names the directory it resolves to, never the link), and they are all the full pass
decides by: which names each directory holds (its identity), what each entry is (its own
identity, and a link's resolution and the roots it must stay inside), and the bytes of what it
reaches. So what holds them is a tree a full pass would judge exactly as it judged the one
recorded.

:mod:`detserve.snapshot_state` records them after a full pass and compares them later.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from detserve.hashing import FileDigest
from detserve.snapshot import SnapshotScan, allowed_roots_for

#: where a write through a shared mapping updates ctime (each has a ``page_mkwrite`` that calls
#: ``file_update_time``); measured here on ext4 only (on tmpfs it does not: measured)
TRUSTED_FILE_SYSTEMS = frozenset({"ext4", "xfs", "btrfs"})
#: ``_IOWR('f', 134, struct fsverity_digest)`` (linux/fsverity.h)
FS_IOC_MEASURE_VERITY = 0xC0046686
_VERITY_MAX_DIGEST = 64
#: index of ctime_ns in an identity
CTIME = 8

#: a key's recorded value: an identity, a link's text or a verity measurement
Entries = dict[str, list[int] | str]


def identity(info: os.stat_result) -> list[int]:
    return [
        info.st_dev,
        info.st_ino,
        info.st_mode,
        info.st_nlink,
        info.st_uid,
        info.st_gid,
        info.st_size,
        info.st_mtime_ns,
        info.st_ctime_ns,
    ]


def verity_measurement(fd: int) -> str | None:
    """The file's fs-verity digest (``ALGO:HEX``), or None when it has none or the kernel cannot
    say (this machine's kernel has no fs-verity: ``ENOTSUP`` on ext4, ``ENOTTY`` on tmpfs)."""
    buffer = bytearray(4 + _VERITY_MAX_DIGEST)
    buffer[2:4] = _VERITY_MAX_DIGEST.to_bytes(2, "little")
    try:
        fcntl.ioctl(fd, FS_IOC_MEASURE_VERITY, buffer)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTTY, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise
    algorithm = int.from_bytes(buffer[0:2], "little")
    size = int.from_bytes(buffer[2:4], "little")
    return f"{algorithm}:{bytes(buffer[4 : 4 + size]).hex()}"


def _verity_of(path: Path) -> str | None:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return verity_measurement(fd)
    finally:
        os.close(fd)


def file_system_types() -> dict[int, str]:
    """Each mounted device number and its file system type, from ``/proc/self/mountinfo``."""
    types: dict[int, str] = {}
    try:
        text = Path("/proc/self/mountinfo").read_text("utf-8", "replace")
    except OSError:
        return types
    for line in text.splitlines():
        fields = line.split(" ")
        if " - " not in line or len(fields) < 3:
            continue
        major, _, minor = fields[2].partition(":")
        after = line.split(" - ", 1)[1].split(" ")
        if major.isdigit() and minor.isdigit() and after:
            types[os.makedev(int(major), int(minor))] = after[0]
    return types


def untrusted_file_system(snapshot_dir: Path, paths: Iterable[str]) -> str | None:
    """Why no record can be kept for these files (the file system of one of them, or of the
    snapshot directory, is not a trusted one), or None."""
    types = file_system_types()
    for target in (Path(snapshot_dir), *(Path(snapshot_dir) / path for path in paths)):
        try:
            device = target.stat().st_dev
        except OSError:
            continue  # the check itself will say what is missing
        fs_type = types.get(device, "unknown")
        if fs_type not in TRUSTED_FILE_SYSTEMS:
            return f"{target} is on {fs_type}, where ctime may not see every write"
    return None


def _directories(snapshot_dir: Path) -> list[str]:
    """Every directory of the snapshot (``""`` for the root), links never followed."""
    found = [""]
    pending = [(os.fspath(snapshot_dir), "")]
    while pending:
        directory, prefix = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    found.append(prefix + entry.name)
                    pending.append((entry.path, prefix + entry.name + "/"))
    return found


def resolved(snapshot_dir: Path) -> Path:
    """The directory a snapshot path names: every link on it followed, once."""
    return Path(snapshot_dir).resolve()


def roots_text(roots: Iterable[Path]) -> str:
    """The ``roots:`` entry of these roots: NUL ends no path component, so the joined text is
    the tuple."""
    return "\0".join(map(str, roots))


def link_resolution(link: Path, routes: dict[str, str]) -> str:
    """``os.path.realpath(link)``, the directory a link's text names resolved once a check (in
    ``routes``): every link of a Hugging Face snapshot points into one ``blobs/``. On strings:
    realpath in full, or Path objects, tripled the cost of a check of 2000 links (measured)."""
    text = os.readlink(link)  # noqa: PTH115 (a string, see above)
    named = text if text.startswith("/") else f"{os.fspath(link).rpartition('/')[0]}/{text}"
    head, _, name = named.rpartition("/")
    if name not in ("", ".", ".."):
        if head not in routes:
            routes[head] = os.path.realpath(head or "/")
        target = f"{routes[head].rstrip('/')}/{name}"
        with contextlib.suppress(OSError):
            if not stat.S_ISLNK(os.lstat(target).st_mode):
                return target
    return os.path.realpath(link)


def _value(snapshot_dir: Path, key: str, routes: dict[str, str] | None = None) -> list[int] | str:
    """The current value of one recorded key (``routes``: see :func:`link_resolution`). Raises
    ``OSError``."""
    kind, _, relative = key.partition(":")
    path = snapshot_dir / relative if relative else snapshot_dir
    if kind in ("dir", "entry"):
        return identity(os.lstat(path))
    if kind == "file":
        return identity(path.stat())
    if kind == "link":
        return str(path.readlink())
    if kind == "real":
        return link_resolution(path, routes if routes is not None else {})
    if kind == "roots":
        return roots_text(allowed_roots_for(snapshot_dir))
    if kind == "verity":
        return _verity_of(path) or ""
    raise ValueError(f"unknown record key {key!r}")


def fingerprint(snapshot_dir: Path, paths: Iterable[str]) -> Entries:
    """The identities a record keeps for these files of the snapshot (resolved). Raises
    ``OSError``."""
    root = resolved(snapshot_dir)
    routes: dict[str, str] = {}
    entries: Entries = {"roots:": _value(root, "roots:")}
    for directory in _directories(root):
        entries[f"dir:{directory}"] = _value(root, f"dir:{directory}")
    for path in paths:
        entries[f"entry:{path}"] = _value(root, f"entry:{path}")
        if stat.S_ISLNK(os.lstat(root / path).st_mode):
            entries[f"link:{path}"] = _value(root, f"link:{path}")
            entries[f"real:{path}"] = _value(root, f"real:{path}", routes)
        entries[f"file:{path}"] = _value(root, f"file:{path}")
        verity = _verity_of(root / path)
        if verity is not None:
            entries[f"verity:{path}"] = verity
    return entries


#: the kinds of key a full pass's scan and reads observe (a link's text and a verity
#: measurement follow from an entry's and a file's identity)
OBSERVED_KINDS = ("roots", "dir", "entry", "real", "file")


def seen_by_pass(scan: SnapshotScan, digests: Mapping[str, FileDigest]) -> Entries:
    """What a full pass saw, as record entries: each directory as it was listed, each entry
    as it was classified, where each link resolved, the roots, each file as it was read."""
    seen: Entries = {"roots:": roots_text(scan.roots)}
    for directory, info in scan.directories.items():
        seen[f"dir:{directory}"] = identity(info)
    for path, digest in digests.items():
        seen[f"entry:{path}"] = identity(scan.entries[path])
        if path in scan.targets:
            seen[f"real:{path}"] = scan.targets[path]
        if digest.opened is not None:
            seen[f"file:{path}"] = identity(digest.opened)
    return seen


def unlike_pass(
    entries: Mapping[str, list[int] | str], seen: Mapping[str, list[int] | str]
) -> str | None:
    """The first key where ``entries`` (taken after a pass) differ from what the pass saw,
    shown, or None: a record must be of the tree the pass judged."""
    observed = {key for key in entries if key.partition(":")[0] in OBSERVED_KINDS}
    for key in sorted(observed | set(seen)):
        if entries.get(key) != seen.get(key):
            return shown(key)
    return None


def shown(key: str) -> str:
    kind, _, relative = key.partition(":")
    where = f"./{relative}" if relative else "the snapshot directory"
    return f"{where} ({kind})"


#: the fields of an identity, in order
FIELDS = ("device", "inode", "mode", "links", "owner", "group", "size", "mtime", "ctime")


def _fields_that_differ(now: list[int] | str, then: list[int] | str) -> str:
    if isinstance(now, list) and isinstance(then, list) and len(now) == len(then):
        return ", ".join(name for name, a, b in zip(FIELDS, now, then, strict=True) if a != b)
    return "text" if not isinstance(now, list) else "identity"


def differences(snapshot_dir: Path, entries: Mapping[str, list[int] | str]) -> list[str]:
    """What no longer holds of ``entries`` in the snapshot (resolved), sorted by key, one line
    each (``changed: ./PATH (KIND: FIELDS)``); empty when everything does."""
    snapshot_dir = resolved(snapshot_dir)
    routes: dict[str, str] = {}
    found: list[str] = []
    for key in sorted(entries):
        kind, _, relative = key.partition(":")
        where = f"./{relative}" if relative else "the snapshot directory"
        try:
            now = _value(snapshot_dir, key, routes)
        except (OSError, ValueError) as exc:
            found.append(f"changed: {where} ({kind}: {getattr(exc, 'strerror', None) or exc})")
            continue
        if now != entries[key]:
            found.append(f"changed: {where} ({kind}: {_fields_that_differ(now, entries[key])})")
    return found
