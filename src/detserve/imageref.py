"""Image references: the one parser for every place detserve reads one.

A pin is ``REPO@sha256:<64 hex>``; a tag (``REPO:TAG``) is only ever something ``lock-image``
resolves. A colon is allowed before the last slash only (a registry port): ``repo:tag@digest``
names two things, and a reviewer reading the tag would not be reading the pin.
:data:`DIGEST_REF_PATTERN` is written so that Python's ``re`` and ECMA-262 (JSON Schema) read
it alike; the run-log schema uses it as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from detserve.errors import InputError

_REPOSITORY = r"(?:[a-z0-9][a-z0-9._:-]*/)*[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?"
#: ``REPO@sha256:<64 hex>``, anchored; the same text in Python and in JSON Schema
DIGEST_REF_PATTERN = rf"^{_REPOSITORY}@sha256:[0-9a-f]{{64}}$"
# fullmatch, not `$`: Python's `$` also matches before a final newline
_DIGEST_REF_RE = re.compile(rf"(?P<repository>{_REPOSITORY})@(?P<digest>sha256:[0-9a-f]{{64}})")


def registry_of(repository: str) -> str:
    """The registry address of a repository (``docker.io`` when it names none)."""
    first, _, rest = repository.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


@dataclass(frozen=True)
class ImageRef:
    """A pinned image: a repository and the sha256 digest of its content."""

    repository: str
    digest: str

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        """``REPO@sha256:HEX``; anything else, a tag above all, is refused (exit 2)."""
        match = _DIGEST_REF_RE.fullmatch(text)
        if match is None:
            raise InputError(
                f"refusing image reference {text[:200]!r}: only 'REPO@sha256:<64 hex>' is accepted",
                hint=(
                    "a tag can be moved to other content; pin it with `detserve lock-image --write`"
                ),
            )
        return cls(repository=match["repository"], digest=match["digest"])

    @property
    def registry(self) -> str:
        return registry_of(self.repository)

    def normalised(self) -> str:
        """The reference as the engine spells it (``docker.io/library/NAME@...`` for the hub)."""
        repository = self.repository
        if self.registry == "docker.io":
            repository = repository.removeprefix("docker.io/").removeprefix("index.docker.io/")
            if "/" not in repository:
                repository = f"library/{repository}"
            repository = f"docker.io/{repository}"
        return f"{repository}@{self.digest}"

    def __str__(self) -> str:
        return f"{self.repository}@{self.digest}"


def is_digest_ref(text: str) -> bool:
    return _DIGEST_REF_RE.fullmatch(text) is not None


def repository_of_tag(tag: str) -> str:
    """``host:5000/repo:tag`` -> ``host:5000/repo``; a colon before the last slash is a port."""
    if "@" in tag:
        raise InputError(f"runtime.image_tag {tag!r} already has a digest; give a tag to resolve")
    name, slash, last = tag.rpartition("/")
    if ":" in last:
        last = last.split(":", 1)[0]
    return f"{name}{slash}{last}"
