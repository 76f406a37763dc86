"""Secrets for the container: a strict ``.env`` file whose values are never shown.

The file holds ``KEY=VALUE`` lines, blank lines and ``#`` comment lines, nothing else. A value is
taken literally: there is no shell expansion, no ``export``, no escape sequence and no inline
comment. A value may be wrapped in one pair of single or double quotes, which are removed. Every
problem names the file and the line number, never the line itself: a malformed line may hold a
secret.

Only names that look like secrets (``HF_TOKEN``, ``..._API_KEY``, ``..._PASSWORD``...) are
accepted. Everything else that changes what the server computes belongs in the profile, which is
hashed into the container's labels; a secrets file is not, so it must not be a way around them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from detserve.errors import InputError
from detserve.fileio import MAX_SECRETS_BYTES, read_input
from detserve.profile import ENV_NAME_RE, SECRET_NAME_RE

#: variables detserve sets itself; a secrets file may not override them
RESERVED_NAMES = frozenset({"HF_HOME", "HF_HUB_OFFLINE"})

_LINE_RE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$")


class SecretEnvironment(Mapping[str, str]):
    """Secret environment variables: the names may be shown, the values never.

    ``repr`` and ``str`` list the names only, so a secret cannot leak through a log line, an
    exception message or a dataclass ``repr``.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        checked: dict[str, str] = {}
        for name, value in (values or {}).items():
            _check_name(name, where="secret")
            if not isinstance(value, str) or not value:
                raise InputError(f"secret {name}: the value must be a non-empty string")
            checked[name] = value
        self._values = dict(sorted(checked.items()))

    def __getitem__(self, name: str) -> str:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._values)

    def __repr__(self) -> str:
        return f"SecretEnvironment(names={list(self._values)!r})"

    __str__ = __repr__

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))


def _check_name(name: str, *, where: str) -> None:
    if not ENV_NAME_RE.fullmatch(name):
        raise InputError(f"{where}: {name!r} is not a valid environment variable name")
    if name in RESERVED_NAMES:
        raise InputError(f"{where}: {name} is set by detserve and cannot be overridden")
    if not SECRET_NAME_RE.search(name):
        raise InputError(
            f"{where}: {name} does not look like a secret",
            hint=(
                "a secrets file holds credentials only (names containing TOKEN, SECRET, PASSWORD, "
                "API_KEY...); settings belong in the profile's runtime.environment, which is "
                "hashed into the container's labels"
            ),
        )


def _unquote(raw: str, *, where: str) -> str:
    if raw[:1] in {"'", '"'}:
        quote = raw[0]
        if len(raw) < 2 or not raw.endswith(quote) or quote in raw[1:-1]:
            raise InputError(f"{where}: unbalanced quotes (the value is not shown)")
        return raw[1:-1]
    if raw != raw.strip():
        raise InputError(
            f"{where}: white space around an unquoted value (the value is not shown)",
            hint="quote the value if the spaces belong to it",
        )
    if " #" in raw or "\t#" in raw:
        raise InputError(
            f"{where}: an unquoted value containing ' #' is ambiguous (the value is not shown)",
            hint="inline comments are not supported; quote the value if '#' belongs to it",
        )
    return raw


def parse_secrets(text: str, *, source: str) -> SecretEnvironment:
    """Parse ``.env`` text strictly; see the module docstring for the rules."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{source}:{number}"
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE_RE.match(line)
        if match is None:
            raise InputError(
                f"{where}: expected KEY=VALUE, a comment or a blank line (the line is not shown)",
                hint="no 'export', no spaces around '=', one variable per line",
            )
        name = match["name"]
        _check_name(name, where=where)
        if name in values:
            raise InputError(f"{where}: {name} is set twice")
        value = _unquote(match["value"], where=f"{where}: {name}")
        if not value:
            raise InputError(f"{where}: {name} has an empty value; remove the line instead")
        values[name] = value
    return SecretEnvironment(values)


def load_secrets_file(path: Path) -> SecretEnvironment:
    """Read and parse a secrets file (``--secrets-file``)."""
    data = read_input(path, what="secrets file", cap=MAX_SECRETS_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # ``from None``: the decode error quotes a byte of the file, which may be a secret's.
        raise InputError(f"secrets file {path} is not UTF-8 (its content is not shown)") from None
    return parse_secrets(text, source=str(path))
