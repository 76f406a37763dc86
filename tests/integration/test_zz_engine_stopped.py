"""The real dockerd stopped: before a command, and in the middle of one.

Named to run after the other integration files: stopping the engine kills every container (the
engine runs without live-restore). The engine is started again afterwards through the stack
script (``scripts/stack/stack.py engine``), whatever the test's outcome.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REPO_ROOT, DetserveRunner, ProfileFactory, container_of

EXIT_ENVIRONMENT = 3
DOCKERD_PIDFILE = Path("/var/run/docker.pid")
SOCKET = "unix:///var/run/docker.sock"
STOP_TIMEOUT_S = 60


def _stop_dockerd() -> None:
    pid = int(DOCKERD_PIDFILE.read_text().strip())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    pytest.fail(f"dockerd (pid {pid}) did not stop within {STOP_TIMEOUT_S} s")


def _start_dockerd() -> None:
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "stack" / "stack.py"), "engine"],
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.fixture
def engine_stopper() -> Iterator[object]:
    """Stops the real engine when called; always starts it again afterwards."""
    if os.environ.get("DOCKER_HOST", SOCKET) != SOCKET or not DOCKERD_PIDFILE.exists():
        pytest.skip("the engine is not the local dockerd the stack started")
    try:
        yield _stop_dockerd
    finally:
        _start_dockerd()


def test_a_stopped_engine_is_named_and_nothing_starts(
    local_profile: Path, detserve: DetserveRunner, engine_stopper: object, tmp_path: Path
) -> None:
    _stop_dockerd()
    for command in (
        ("status", "--config", local_profile),
        ("start", "--config", local_profile),
        ("run", "--config", local_profile, "--stop"),
    ):
        ran = detserve(*command)
        assert ran.code == EXIT_ENVIRONMENT, ran
        assert f"the container engine at {SOCKET} does not answer" in ran.err, ran
        assert "Traceback" not in ran.err, ran
    out = tmp_path / "out"
    ran = detserve(
        "sample",
        "--config",
        local_profile,
        "--run-log-output",
        out / "x.runlog.jsonl",
        "--output",
        out / "x.sidecar.json",
    )
    assert ran.code == EXIT_ENVIRONMENT, ran
    assert not out.exists()


def test_the_engine_stopped_during_wait_fails_at_once(
    profile_factory: ProfileFactory, detserve: DetserveRunner, engine_stopper: object
) -> None:
    profile = profile_factory("engine-stops")
    started = detserve("start", "--config", profile)
    assert started.code == 0, started
    waiting = subprocess.Popen(
        [sys.executable, "-m", "detserve", "wait", "--config", str(profile), "--timeout", "300"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)  # the server needs 30 s or more to be ready: wait is polling now
    assert waiting.poll() is None, waiting.communicate()
    began = time.monotonic()
    _stop_dockerd()
    _, err = waiting.communicate(timeout=120)
    assert waiting.returncode == EXIT_ENVIRONMENT, err
    assert time.monotonic() - began < 60, "wait kept polling a server whose engine had stopped"
    # Which it sees first depends on timing: the container killed by the stopping engine, or the
    # engine itself gone. Either way the engine's address is named (here from the failed log read).
    name = container_of(profile)
    assert f"container {name} exited" in err or "stopped answering" in err, err
    assert SOCKET in err, err
    assert "Traceback" not in err, err
