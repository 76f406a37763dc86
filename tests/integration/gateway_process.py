"""A ``detserve serve`` process on a free loopback port, for the real-container gateway tests.

The gateway runs as a user runs it: a separate process, started after ``detserve run`` and
stopped with Ctrl-C (SIGINT), which closes its transcript. :func:`start_gateway` returns once
``/health`` answers 200, or fails the test with the process's output.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import openai
import pytest

from .conftest import REPO_ROOT, free_port

MODEL = "tiny-llama"
#: the engine's share of one CPU while a test needs a stream that cannot end on its own
THROTTLED_CPU_QUOTA, CPU_PERIOD = 5_000, 100_000


@contextlib.contextmanager
def throttled(container_name: str) -> Iterator[docker.models.containers.Container]:
    """The engine held to 5 % of one CPU (cgroup quota, through the Docker SDK), then freed.

    Unthrottled, the tiny model writes a 480-token stream in about half a second, and a test that
    must act mid-stream (leave, kill) has lost that race on two busy cores. Throttled, the first
    token still comes at once (the quota is not yet spent) and the rest at about one a second,
    so "mid-stream" holds by construction. Nothing the pins cover changes: the container keeps
    its id, start time and configuration.
    """
    container = docker.from_env().containers.get(container_name)
    container.update(cpu_period=CPU_PERIOD, cpu_quota=THROTTLED_CPU_QUOTA)
    try:
        yield container
    finally:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            container.update(cpu_quota=-1)  # -1: no quota, as the container was created


@dataclass
class GatewayProcess:
    profile: Path
    url: str
    transcripts: Path
    process: subprocess.Popen[str]

    def client(self, *, timeout: float = 120.0) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=timeout
        )

    def health(self) -> httpx.Response:
        return httpx.get(f"{self.url}/health", timeout=10)

    def stop(self) -> tuple[int, str, str]:
        """Ctrl-C, then the exit code and output (the process's whole output, once)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        out, err = self.process.communicate(timeout=60)
        return self.process.returncode, out, err

    def segments(self) -> list[Path]:
        return sorted(self.transcripts.iterdir())


def start_gateway(
    profile: Path, transcripts: Path, *options: str, timeout_s: float = 120.0
) -> GatewayProcess:
    """``detserve serve --config PROFILE --transcript-dir TRANSCRIPTS OPTIONS...``, healthy."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "detserve", "serve", "--config", str(profile),
         "--transcript-dir", str(transcripts), "--port", str(port), *options],
        cwd=REPO_ROOT, env=dict(os.environ), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    running = GatewayProcess(profile, f"http://127.0.0.1:{port}", transcripts, process)
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            pytest.fail(f"the gateway exited before it was healthy: {running.stop()}")
        try:
            if running.health().status_code == 200:
                return running
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the gateway did not become healthy: {running.stop()}")
        time.sleep(0.2)
