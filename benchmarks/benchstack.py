"""What the benchmarks that start the local detserve server share: its options, the checks before
it starts, a profile of their own, and a server that is stopped however the benchmark ends.

Invariants: no server is started on a port that is taken (the check runs before anything is
written); a ``DetserveError`` raised while the server runs leaves as a ``BenchError`` (exit 2, no
verdict) with its diagnostics; the server is stopped after the body unless ``--keep`` was given.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench_runtime import BASE_PROFILE, lock_base_profile, port_is_free, write_bench_profile
from benchlib import BenchError, add_detserve_option, say
from detserve import api
from detserve.errors import DetserveError


def add_server_options(
    parser: argparse.ArgumentParser, *, name: str, port: int, gateway_port: int | None = None
) -> None:
    """``--name``, ``--port``, ``--gateway-port`` (when the benchmark runs one), ``--keep`` and
    ``--detserve``."""
    parser.add_argument("--name", default=name, help=f"profile name ({name})")
    parser.add_argument("--port", type=int, default=port, help=f"server host port ({port})")
    if gateway_port is not None:
        parser.add_argument(
            "--gateway-port", type=int, default=gateway_port, help=f"gateway port ({gateway_port})"
        )
    parser.add_argument("--keep", action="store_true", help="leave the container running")
    add_detserve_option(parser)


def prepare_stack(detserve: str, ports: Sequence[int], *, flags: str = "--port") -> None:
    """Lock the base profile's image if it is not yet, and refuse a port that is taken."""
    if not BASE_PROFILE.is_file():
        lock_base_profile(detserve)
    for port in ports:
        if not port_is_free("127.0.0.1", port):
            raise BenchError(f"port {port} is taken; pass {flags}")


def bench_profile(name: str, port: int, folder: Path) -> Path:
    """The base profile under ``name`` on ``port``, written into ``folder``."""
    return write_bench_profile(BASE_PROFILE, name, port, folder)


@contextlib.contextmanager
def served(profile: Path, name: str, port: int, *, keep: bool) -> Iterator[None]:
    """The server of ``profile`` running for the body; stopped after it unless ``keep``."""
    try:
        say(f"starting {name} on port {port}")
        api.run(profile, on_stage=say)
        yield
    except DetserveError as exc:
        raise BenchError(exc.diagnostics()) from exc
    finally:
        if not keep:
            api.stop(profile)
