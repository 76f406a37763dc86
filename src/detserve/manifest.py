"""Snapshot manifests: one ``<sha256>  ./<relative path>`` line per file, sorted by path.

The format is byte-compatible with coreutils, so ``cd SNAPSHOT && sha256sum -c MANIFEST`` checks
the same thing ``detserve verify`` does. Parsing is strict and never raises on content: every
malformed, escaping, duplicate or unsorted line becomes a :class:`ManifestProblem`, so that
``verify`` can report every problem at once. :func:`load_manifest` is the strict entry point for
callers that need a clean manifest.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from detserve.errors import ManifestError, SnapshotMismatch
from detserve.fileio import MAX_MANIFEST_BYTES, read_input

_LINE_RE = re.compile(rb"^(?P<digest>[0-9a-f]{64})  \./(?P<path>[^\n\r\x00]+)$")
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, order=True)
class ManifestProblem:
    """Something wrong with a manifest line; ``line`` is 1-based (0: the manifest as a whole)."""

    line: int
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "manifest"
        return f"{where}: {self.message}"


def check_relative_path(path: str) -> str | None:
    """Why ``path`` is not a safe path inside a snapshot, or None when it is."""
    if not path:
        return "empty path"
    if "\n" in path or "\r" in path or "\x00" in path:
        # A manifest is one line per file: such a name cannot be written in one.
        return "line break or NUL in path"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "path is not valid UTF-8"
    if path.startswith("/"):
        return "absolute path"
    # One split, no PurePosixPath: this runs three times a file (scan, manifest line, manifest).
    parts = path.split("/")
    if ".." in parts:
        return "path escapes the snapshot ('..')"
    if "." in parts or "" in parts:  # "./a", "a//b", "a/" (a leading "/" is refused above)
        return "path is not normalised"
    if "\\" in path:
        return "backslash in path"
    return None


@dataclass(frozen=True)
class SnapshotManifest:
    """The expected sha256 of every file of a snapshot, keyed by relative POSIX path."""

    digests: Mapping[str, str]

    def __post_init__(self) -> None:
        for path, digest in self.digests.items():
            reason = check_relative_path(path)
            if reason:
                raise ManifestError(f"{path!r}: {reason}")
            if not _DIGEST_RE.fullmatch(digest):
                raise ManifestError(f"{path!r}: not a lowercase 64-hex sha256: {digest!r}")

    @property
    def paths(self) -> list[str]:
        return sorted(self.digests, key=_sort_key)

    def to_bytes(self) -> bytes:
        """The canonical manifest text, exactly what coreutils ``sha256sum`` writes."""
        return b"".join(f"{self.digests[path]}  ./{path}\n".encode() for path in self.paths)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @property
    def total_files(self) -> int:
        return len(self.digests)


def _sort_key(path: str) -> bytes:
    # Byte order of the UTF-8 path: what `LC_ALL=C sort` gives, independent of the locale.
    return path.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class ParsedManifest:
    manifest: SnapshotManifest
    problems: tuple[ManifestProblem, ...]
    sha256: str


def parse_manifest(data: bytes) -> ParsedManifest:
    """Parse manifest bytes, collecting every problem instead of stopping at the first."""
    problems: list[ManifestProblem] = []
    digests: dict[str, str] = {}
    if not data:
        problems.append(ManifestProblem(0, "empty manifest: it pins nothing"))
    elif not data.endswith(b"\n"):
        problems.append(ManifestProblem(0, "no final newline (truncated?)"))
    previous: bytes | None = None
    for number, raw in enumerate(data.split(b"\n")[:-1] if data else [], start=1):
        if raw.endswith(b"\r"):
            problems.append(ManifestProblem(number, "CRLF line ending"))
            continue
        match = _LINE_RE.match(raw)
        if not match:
            problems.append(ManifestProblem(number, _why_malformed(raw)))
            continue
        try:
            path = match["path"].decode("utf-8")
        except UnicodeDecodeError:
            problems.append(ManifestProblem(number, "path is not valid UTF-8"))
            continue
        reason = check_relative_path(path)
        if reason:
            problems.append(ManifestProblem(number, f"{reason}: {path!r}"))
            continue
        if path in digests:
            problems.append(ManifestProblem(number, f"duplicate entry: ./{path}"))
            continue
        key = _sort_key(path)
        if previous is not None and key < previous:
            problems.append(ManifestProblem(number, f"not sorted by path: ./{path}"))
        previous = key
        digests[path] = match["digest"].decode("ascii")
    return ParsedManifest(
        manifest=SnapshotManifest(digests),
        problems=tuple(problems),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _why_malformed(raw: bytes) -> str:
    head, _, rest = raw.partition(b" ")
    if not raw.strip():
        return "blank line"
    if len(head) != 64:
        return f"digest is {len(head)} characters, expected 64: {_show(raw)}"
    if not re.fullmatch(rb"[0-9a-f]{64}", head):
        return f"digest is not lowercase hex: {_show(raw)}"
    if rest.startswith(b"*") or rest.startswith(b" *"):
        return f"binary-mode marker '*' is not used: {_show(raw)}"
    if not rest.startswith(b" ./"):
        return f"expected '<sha256>  ./<path>': {_show(raw)}"
    return f"malformed line: {_show(raw)}"


def _show(raw: bytes, limit: int = 120) -> str:
    text = raw.decode("utf-8", "backslashreplace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def read_manifest_bytes(path: Path) -> bytes:
    """Read a manifest; a missing one is a hard error, never created implicitly."""
    try:
        present = Path(path).exists()
    except OSError:
        present = True  # a name too long, say: reading it says why
    if not present:
        raise ManifestError(
            f"manifest not found: {path}",
            hint=(
                "detserve never creates a manifest implicitly; make one from a snapshot you trust "
                "with `detserve hash ... --manifest-output PATH`, review it and commit it"
            ),
        )
    return read_input(path, what="manifest", cap=MAX_MANIFEST_BYTES, error=ManifestError)


def load_manifest(path: Path) -> ParsedManifest:
    """Load a manifest and fail (exit 1) on any problem in it."""
    return checked_manifest(read_manifest_bytes(path), path)


def checked_manifest(data: bytes, path: Path) -> ParsedManifest:
    """Parse the manifest bytes read from ``path``; fail (exit 1) on any problem in them."""
    parsed = parse_manifest(data)
    if parsed.problems:
        raise SnapshotMismatch(
            f"manifest {path} is not valid: {len(parsed.problems)} problem(s)",
            details=[str(problem) for problem in sorted(parsed.problems)],
        )
    return parsed
