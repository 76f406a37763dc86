"""Does vLLM's CPU build serve the weights from pages mapped from the snapshot's files?

Asked of the real container: after `detserve run`, every process's ``/proc/PID/maps`` is read
inside it (an ``exec`` through the Docker SDK, the way ``runtime/placement.py`` places
processes) and the snapshot's files are looked for. Then a weight is changed on the host, in a
copy of the model, and the same greedy requests are sent again.

The answer decides what a file changed while serving does (docs/threat-model.md, "Weights
changed after a full pass"): where the weights are mapped, a change reaches the
answers at once, and the gateway's record check (every ``--reverify-interval``) is what bounds
how long it is served; where they were copied at load, the server keeps computing with what it
loaded, and the change matters from the next load, which is a new container lifetime and so a
full pass.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import docker
import requests

from detserve.runtime.container_spec import CONTAINER_HF_HOME
from detserve.runtime.vllm_client import completion_body

from .conftest import DetserveRunner, ProfileFactory, container_of

REPO_ROOT = Path(__file__).resolve().parents[2]
HF_CACHE = REPO_ROOT / "artifacts" / "hf-cache"

#: every process's mapped files, as ``{"PID TITLE": [paths]}``
MAPS_SCRIPT = """
import json, os
found = {}
for entry in os.listdir("/proc"):
    if not entry.isdigit():
        continue
    try:
        with open("/proc/%s/comm" % entry) as handle:
            title = handle.read().strip()
        with open("/proc/%s/maps" % entry) as handle:
            lines = handle.read().splitlines()
    except OSError:
        continue
    paths = set()
    for line in lines:
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5].startswith("/"):
            paths.add(fields[5])
    found["%s %s" % (entry, title)] = sorted(paths)
print(json.dumps(found))
"""

PROMPTS = ("The capital of France is", "1, 2, 3, 4,", "Once upon a time")


def mapped_files(client: docker.DockerClient, name: str) -> dict[str, list[str]]:
    container = client.containers.get(name)
    result: Any = container.exec_run(["python3", "-c", MAPS_SCRIPT], stdout=True, stderr=True)
    assert result.exit_code == 0, result.output
    found: dict[str, list[str]] = json.loads(result.output)
    return found


def greedy_tokens(port: int) -> list[list[int]]:
    answers = []
    for prompt in PROMPTS:
        response = requests.post(
            f"http://127.0.0.1:{port}/v1/completions",
            json=completion_body(prompt, 16, 0, model="tiny-llama"),
            timeout=120,
        )
        response.raise_for_status()
        answers.append(response.json()["choices"][0]["token_ids"])
    return answers


def scale_every_float(weights: Path) -> None:
    """Multiply every float32 of every tensor by -8 in place (the header is left as it is)."""
    import numpy as np

    data = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    end = header + (len(data) - header) // 4 * 4
    body = np.frombuffer(memoryview(data)[header:end], dtype="<f4").copy()
    body *= -8.0
    data[header:end] = body.tobytes()
    with weights.open("r+b") as handle:  # in place: the same inode, as a writer on the host would
        handle.write(bytes(data))


def test_the_cpu_engine_does_not_serve_from_mapped_snapshot_files(
    profile_factory: ProfileFactory,
    detserve: DetserveRunner,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    cache = tmp_path / "hf-cache"
    shutil.copytree(HF_CACHE, cache, symlinks=True)

    def own_cache(document: dict[str, Any]) -> None:
        document["snapshot"]["hf_home"] = str(cache)

    profile = profile_factory("weights-mapped", edit=own_cache)
    document = json.loads(profile.read_text(encoding="utf-8"))
    ran = detserve("run", "--json", "--config", profile)
    assert ran.code == 0, ran
    name = container_of(profile)
    try:
        mapped = mapped_files(docker_client, name)
        workers = [process for process in mapped if process.endswith("VLLM::Worker")]
        assert workers, sorted(mapped)
        # The reading works: the worker maps the libraries it runs (torch's among them).
        assert any("torch" in path for path in mapped[workers[0]]), mapped[workers[0]][:20]
        in_cache = {
            process: [path for path in paths if path.startswith(CONTAINER_HF_HOME)]
            for process, paths in mapped.items()
        }
        print(f"\nfiles of the model cache mapped by the container's processes: {in_cache}")
        weights_mapped = {
            process: [path for path in paths if not path.endswith((".json", ".txt"))]
            for process, paths in in_cache.items()
        }
        assert not any(weights_mapped.values()), (
            "vLLM's CPU build now maps the snapshot's weights while serving: a file changed on "
            f"the host changes the answers at once ({weights_mapped}); see docs/threat-model.md"
        )
        port = document["runtime"]["port"]
        before = greedy_tokens(port)
        blob = (
            cache
            / "hub"
            / "models--detserve--tiny-llama"
            / "snapshots"
            / document["model"]["revision"]
            / "model.safetensors"
        ).resolve()
        scale_every_float(blob)
        after = greedy_tokens(port)
        # Computed from what was loaded: the change reaches the answers at the next load only
        # (a new container lifetime, so a full pass: it would fail on this file).
        assert after == before
        verify = detserve("verify", "--config", profile)
        assert verify.code == 1, verify
    finally:
        detserve("stop", "--config", profile)
