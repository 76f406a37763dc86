"""A Docker engine's address: the one check of a ``--docker-host`` or ``--node`` URL, and whether
the engine it names runs on this host.

Every address a person gives for an engine (``--docker-host URL`` of any command, the ``HOST`` of
``fleet --node HOST[,config=PATH][,name=LABEL]``) goes through :func:`check_docker_host`, so the
two spellings accept and refuse the same things: ``unix:///ABSOLUTE/PATH`` and
``npipe:////./pipe/NAME``; ``tcp://``, ``http://`` and ``https://`` with a host and an optional
port, nothing else (no user, path, query or fragment: the Docker SDK would drop or misread
them); ``ssh://[USER@]HOST[:PORT]``. No control character, space or comma anywhere (a comma
separates a node's options). A refusal is a :class:`~detserve.errors.UsageError` (exit 2),
before any engine is asked.

:func:`engine_on_this_host` says whether an engine's published ports are this host's: a Unix
socket or a named pipe is a local engine, and so is a TCP address of loopback; anything else
(``ssh://``, ``tcp://`` to another name or address) is a remote engine, whose ``127.0.0.1`` is
another machine's. What follows from that is :mod:`detserve.runtime.reach`. The module imports
nothing heavy: ``fleet`` and the command line check addresses without the Docker SDK.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final
from urllib.parse import urlsplit

from detserve.errors import UsageError, bounded

DEFAULT_DOCKER_HOST: Final = "unix:///var/run/docker.sock"
#: the URL schemes the Docker SDK connects through
DOCKER_HOST_SCHEMES: Final = ("unix", "tcp", "ssh", "npipe", "http", "https")
#: the longest address accepted (a Unix socket path is at most 108 bytes; a host name 253)
MAX_DOCKER_HOST_CHARS: Final = 1024

_FORBIDDEN = re.compile(r"[\x00-\x20\x7f,]")
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
_USER = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]{0,63}$")
_EXAMPLES: Final = "e.g. unix:///var/run/docker.sock, tcp://host:2376 or ssh://user@host"


def _refuse(option: str, host: str, why: str) -> UsageError:
    return UsageError(
        f"{option} {bounded(repr(host), 200)} is not a Docker host URL: {why}", hint=_EXAMPLES
    )


def _check_host_part(option: str, host: str, hostname: str | None) -> None:
    if not hostname:
        raise _refuse(option, host, "it names no host")
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        if not _HOST_NAME.match(hostname):
            raise _refuse(option, host, f"{hostname!r} is not a host name or address") from None


def check_docker_host(host: str, *, option: str = "--docker-host") -> str:
    """``host`` when it is a Docker host URL detserve connects to; else a :class:`UsageError`
    naming ``option`` (``--docker-host``, ``--node``) and what is wrong."""
    if len(host) > MAX_DOCKER_HOST_CHARS:
        raise _refuse(option, host, f"longer than {MAX_DOCKER_HOST_CHARS} characters")
    if _FORBIDDEN.search(host):
        raise _refuse(option, host, "it holds a space, a comma or a control character")
    scheme, separator, rest = host.partition("://")
    if not separator or scheme not in DOCKER_HOST_SCHEMES:
        raise _refuse(option, host, f"the scheme must be one of {', '.join(DOCKER_HOST_SCHEMES)}")
    if not rest:
        raise _refuse(option, host, "nothing follows ://")
    if scheme in {"unix", "npipe"}:
        if not rest.startswith("/") or rest.strip("/") == "":
            raise _refuse(option, host, "a socket or pipe is named by an absolute path")
        return host
    try:
        parts = urlsplit(host)
        port = parts.port
    except ValueError as exc:
        raise _refuse(option, host, str(exc)) from None
    if parts.path not in {"", "/"} or parts.query or parts.fragment or "?" in host or "#" in host:
        raise _refuse(option, host, "an engine URL has no path, query or fragment")
    if parts.password is not None:
        raise _refuse(option, host, "a password has no place in an engine URL")
    if parts.username is not None and (scheme != "ssh" or not _USER.match(parts.username)):
        raise _refuse(option, host, "only ssh:// names a user, a plain one")
    if port == 0:
        raise _refuse(option, host, "port 0")
    _check_host_part(option, host, parts.hostname)
    return host


def engine_host_name(address: str) -> str | None:
    """The host part of a TCP or SSH engine address (``tcp://gpu-1:2376`` -> ``gpu-1``);
    None for a socket or a pipe."""
    scheme = address.partition("://")[0]
    if scheme in {"unix", "npipe", "http+unix"}:
        return None
    try:
        return urlsplit(address).hostname
    except ValueError:
        return None


def _is_loopback(name: str) -> bool:
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def engine_on_this_host(address: str | None) -> bool:
    """Whether the engine at ``address`` publishes its containers' ports on this host.

    None (an engine that names no address, a library caller's own) is taken as this host's, as
    before addresses were known. A Unix socket or named pipe is this host's engine; a TCP or
    HTTP address is when its host is loopback; ``ssh://`` and other hosts are remote.
    """
    if address is None:
        return True
    name = engine_host_name(address)
    if name is None:
        return True
    return address.partition("://")[0] != "ssh" and _is_loopback(name)
