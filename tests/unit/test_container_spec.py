"""The exact container configuration detserve sends to the engine, for a CPU and a GPU profile.

``build_container_spec`` is pure, so every setting of the container can be checked here without
an engine: the pinned image by digest, the engine arguments, the read-only Hugging Face mount,
the loopback port, shm, IPC, GPU requests, the pin labels, and that secrets appear in the
container's environment only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from docker.types import DeviceRequest, Mount

from detserve.errors import InputError, ManifestError, UnpinnedError
from detserve.imageref import ImageRef
from detserve.profile import LoadedProfile, load_profile
from detserve.runtime.container_spec import (
    build_container_spec,
    engine_args,
    label_mismatches,
    server_base_url,
)

from .committed import REPO_ROOT, TINY_REVISION
from .conftest import TinyWorkspace

DIGEST = "sha256:" + "5e" * 32
CPU_IMAGE = f"127.0.0.1:5000/detserve/vllm-cpu@{DIGEST}"
GPU_IMAGE = f"docker.io/vllm/vllm-openai@{DIGEST}"
GPU_REVISION = "0123456789abcdef0123456789abcdef01234567"
SECRET_VALUE = "hf_DoNotShowMe0123456789"


def _write(path: Path, document: dict[str, Any]) -> LoadedProfile:
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return load_profile(path)


@pytest.fixture
def cpu_profile(tiny_workspace: TinyWorkspace) -> LoadedProfile:
    """The committed tiny-cpu profile (copied with its model and manifest), image pinned."""
    document = json.loads(tiny_workspace.config.read_text(encoding="utf-8"))
    document["runtime"]["image"] = CPU_IMAGE
    return _write(tiny_workspace.config, document)


def _split(reference: str) -> tuple[str, str]:
    ref = ImageRef.parse(reference)
    return ref.repository, ref.digest


def gpu_document(hf_home: Path) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "name": "qwen-tp2",
        "model": {"id": "Qwen/Qwen3-8B", "revision": GPU_REVISION},
        "snapshot": {"hf_home": str(hf_home), "manifest_dir": "manifests"},
        "runtime": {
            "image_tag": "vllm/vllm-openai:v0.32.0",
            "image": GPU_IMAGE,
            "device": "nvidia",
            "gpu_count": 2,
            "shm_size": "16g",
            "ipc_mode": "host",
            "host": "127.0.0.1",
            "port": 8123,
            "environment": {"VLLM_LOGGING_LEVEL": "INFO"},
            "entrypoint": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        },
        "vllm": {
            "served_model_name": "qwen3-8b",
            "dtype": "bfloat16",
            "max_model_len": 8192,
            "tensor_parallel_size": 2,
            "gpu_memory_utilization": 0.9,
            "max_num_seqs": 4,
            "extra_args": {
                "--max-num-batched-tokens": 8192,
                "--disable-log-stats": True,
                "--kv-cache-dtype": "auto",
            },
        },
        "sampling": {"seed": 1234, "max_tokens": 64},
    }


@pytest.fixture
def gpu_profile(tmp_path: Path) -> LoadedProfile:
    hf_home = tmp_path / "hf-home"
    hf_home.mkdir()
    manifest = tmp_path / "manifests" / "qwen-tp2" / f"{GPU_REVISION}.sha256"
    manifest.parent.mkdir(parents=True)
    manifest.write_bytes(b"ab" * 32 + b"  ./config.json\n")
    return _write(tmp_path / "qwen-tp2.json", gpu_document(hf_home))


def test_cpu_profile_exact_create_kwargs(cpu_profile: LoadedProfile) -> None:
    manifest_bytes = cpu_profile.manifest_path.read_bytes()
    kwargs = build_container_spec(cpu_profile, {}).to_create_kwargs()
    assert kwargs == {
        "image": CPU_IMAGE,
        "name": "detserve-tiny-cpu",
        "command": [
            "--model",
            "detserve/tiny-llama",
            "--revision",
            TINY_REVISION,
            "--served-model-name",
            "tiny-llama",
            "--dtype",
            "float32",
            "--max-model-len",
            "512",
            "--seed",
            "0",
            "--tensor-parallel-size",
            "1",
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
            "--no-enable-prefix-caching",
            "--max-num-seqs",
            "32",
            "--enforce-eager",
            # the pinned structured-output backend, as canonical JSON
            "--structured-outputs-config",
            '{"backend":"xgrammar","disable_any_whitespace":true}',
        ],
        "environment": {
            "HF_HOME": "/hf-home",
            "HF_HUB_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1",
        },
        "labels": {
            "io.detserve.profile": "tiny-cpu",
            "io.detserve.profile-sha256": cpu_profile.content_sha256,
            "io.detserve.model-id": "detserve/tiny-llama",
            "io.detserve.model-revision": TINY_REVISION,
            "io.detserve.image": CPU_IMAGE,
            "io.detserve.manifest-sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        },
        # the verified snapshot and the blobs it links into, read-only, and nothing else of the
        # Hugging Face home
        "mounts": [
            Mount(
                target=f"/hf-home/hub/models--detserve--tiny-llama/snapshots/{TINY_REVISION}",
                source=str(cpu_profile.snapshot_dir),
                type="bind",
                read_only=True,
            ),
            Mount(
                target="/hf-home/hub/models--detserve--tiny-llama/blobs",
                source=str(cpu_profile.model_cache_dir / "blobs"),
                type="bind",
                read_only=True,
            ),
        ],
        "ports": {"8000/tcp": ("127.0.0.1", 8000)},
        "shm_size": "1g",
        "init": True,
    }
    # the mount is read-only in the form the engine receives it
    assert kwargs["mounts"][0]["ReadOnly"] is True
    assert Path(kwargs["mounts"][0]["Source"]).is_absolute()
    # no entrypoint override, no IPC mode, no GPUs for a CPU profile
    assert "entrypoint" not in kwargs
    assert "device_requests" not in kwargs


def test_gpu_profile_exact_create_kwargs(gpu_profile: LoadedProfile) -> None:
    kwargs = build_container_spec(gpu_profile, {}).to_create_kwargs()
    assert kwargs["image"] == GPU_IMAGE
    assert kwargs["name"] == "detserve-qwen-tp2"
    assert kwargs["entrypoint"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert kwargs["command"] == [
        "--model",
        "Qwen/Qwen3-8B",
        "--revision",
        GPU_REVISION,
        "--served-model-name",
        "qwen3-8b",
        "--dtype",
        "bfloat16",
        "--max-model-len",
        "8192",
        "--seed",
        "1234",
        "--tensor-parallel-size",
        "2",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--no-enable-prefix-caching",
        "--gpu-memory-utilization",
        "0.9",
        "--max-num-seqs",
        "4",
        # extra_args sorted by option name; true is a bare flag
        "--disable-log-stats",
        "--kv-cache-dtype",
        "auto",
        "--max-num-batched-tokens",
        "8192",
    ]
    assert kwargs["device_requests"] == [
        DeviceRequest(driver="nvidia", count=2, capabilities=[["gpu"]])
    ]
    assert kwargs["device_requests"][0]["Count"] == 2
    assert kwargs["ipc_mode"] == "host"
    assert kwargs["shm_size"] == "16g"
    assert kwargs["ports"] == {"8000/tcp": ("127.0.0.1", 8123)}
    # no blobs/ in this model's cache: the snapshot alone is mounted
    assert kwargs["mounts"] == [
        Mount(
            target=f"/hf-home/hub/models--Qwen--Qwen3-8B/snapshots/{GPU_REVISION}",
            source=str(gpu_profile.snapshot_dir),
            type="bind",
            read_only=True,
        )
    ]
    assert kwargs["environment"] == {
        "HF_HOME": "/hf-home",
        "HF_HUB_OFFLINE": "1",
        "VLLM_LOGGING_LEVEL": "INFO",
    }
    assert kwargs["labels"]["io.detserve.image"] == GPU_IMAGE
    assert kwargs["labels"]["io.detserve.model-revision"] == GPU_REVISION


def test_gpu_ids_become_device_ids(tmp_path: Path, gpu_profile: LoadedProfile) -> None:
    document = gpu_document(gpu_profile.hf_home)
    del document["runtime"]["gpu_count"]
    document["runtime"]["gpu_ids"] = ["GPU-1234", "3"]
    loaded = _write(tmp_path / "qwen-tp2.json", document)
    kwargs = build_container_spec(loaded, {}).to_create_kwargs()
    assert kwargs["device_requests"] == [
        DeviceRequest(driver="nvidia", device_ids=["GPU-1234", "3"], capabilities=[["gpu"]])
    ]
    # Count 0 with DeviceIDs: exactly those GPUs (-1 would be all of them)
    assert kwargs["device_requests"][0]["Count"] == 0


def test_secrets_reach_the_environment_only(cpu_profile: LoadedProfile) -> None:
    spec = build_container_spec(cpu_profile, {"HF_TOKEN": SECRET_VALUE})
    kwargs = spec.to_create_kwargs()
    assert kwargs["environment"]["HF_TOKEN"] == SECRET_VALUE
    assert SECRET_VALUE not in " ".join(kwargs["command"])
    assert SECRET_VALUE not in json.dumps(kwargs["labels"])
    assert SECRET_VALUE not in repr(spec)
    assert SECRET_VALUE not in str(spec)
    assert "HF_TOKEN" in repr(spec)  # the name may be shown
    assert "HF_TOKEN" not in spec.environment  # kept apart from the non-secret environment
    assert engine_args(cpu_profile) == kwargs["command"]


@pytest.mark.parametrize(
    ("secrets", "expected"),
    [
        ({"VLLM_CPU_KVCACHE_SPACE_TOKEN": "x"}, None),  # allowed: looks like a secret
        ({"HF_HOME": "/elsewhere"}, "set by detserve"),
        ({"HF_HUB_OFFLINE": "0"}, "set by detserve"),
        ({"VLLM_ATTENTION_BACKEND": "TORCH_SDPA"}, "does not look like a secret"),
        ({"HF_TOKEN": ""}, "non-empty"),
        ({"BAD NAME_TOKEN": "x"}, "not a valid environment variable name"),
    ],
)
def test_secret_names_are_checked(
    cpu_profile: LoadedProfile, secrets: dict[str, str], expected: str | None
) -> None:
    if expected is None:
        build_container_spec(cpu_profile, secrets)
        return
    with pytest.raises(InputError, match=expected) as raised:
        build_container_spec(cpu_profile, secrets)
    for value in secrets.values():
        if value:
            assert value not in raised.value.diagnostics()


def test_unpinned_profile_is_refused(tiny_workspace: TinyWorkspace) -> None:
    loaded = load_profile(tiny_workspace.config)  # runtime.image is null in the committed file
    with pytest.raises(UnpinnedError, match=r"runtime\.image"):
        build_container_spec(loaded, {})


def test_missing_manifest_is_refused(cpu_profile: LoadedProfile) -> None:
    cpu_profile.manifest_path.unlink()
    with pytest.raises(ManifestError, match="manifest not found"):
        build_container_spec(cpu_profile, {})


@pytest.mark.parametrize(
    "reference",
    [
        "127.0.0.1:5000/detserve/vllm-cpu:0.32.0",
        "vllm/vllm-openai:latest",
        "vllm/vllm-openai",
        "vllm/vllm-openai:v1@" + DIGEST,
        "vllm/vllm-openai@sha256:abc",
    ],
)
def test_only_digest_references_are_accepted(reference: str) -> None:
    with pytest.raises(InputError, match="only 'REPO@sha256:<64 hex>' is accepted"):
        _split(reference)


def test_digest_reference_is_split() -> None:
    assert _split(CPU_IMAGE) == ("127.0.0.1:5000/detserve/vllm-cpu", DIGEST)


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8000"),
        ("0.0.0.0", "http://127.0.0.1:8000"),
        ("::", "http://[::1]:8000"),
        ("::1", "http://[::1]:8000"),
    ],
)
def test_server_base_url(cpu_profile: LoadedProfile, host: str, url: str) -> None:
    document = json.loads(cpu_profile.path.read_text(encoding="utf-8"))
    document["runtime"]["host"] = host
    assert server_base_url(_write(cpu_profile.path, document).profile) == url


def test_label_mismatches_name_expected_and_found() -> None:
    expected = {"io.detserve.profile-sha256": "aaa", "io.detserve.profile": "p"}
    found = {"io.detserve.profile-sha256": "bbb"}
    assert label_mismatches(expected, found) == [
        "io.detserve.profile: expected p, found (absent)",
        "io.detserve.profile-sha256: expected aaa, found bbb",
    ]
    assert label_mismatches(expected, dict(expected)) == []


# --- docker-compose.yml starts the same container -----------------------------------------------

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:\?|:-)(?P<arg>[^}]*))?\}")


def _interpolate(text: str, variables: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` substitution."""

    def one(match: re.Match[str]) -> str:
        value = variables.get(match["name"], "")
        if value:
            return value
        if match["op"] == ":?":
            raise AssertionError(f"compose would refuse: {match['arg']}")
        return match["arg"] or ""

    return _VARIABLE.sub(one, text)


def _compose_variables(loaded: LoadedProfile) -> dict[str, str]:
    """What a user writes into .env for a profile, following .env.example's comments."""
    repo, digest = _split(loaded.image)
    args = engine_args(loaded)
    optional = args[args.index("--no-enable-prefix-caching") + 1 :]
    profile = loaded.profile
    return {
        "DETSERVE_PROFILE": profile.name,
        "DETSERVE_PROFILE_SHA256": loaded.content_sha256,
        "DETSERVE_IMAGE_REPO": repo,
        "DETSERVE_IMAGE_DIGEST": digest,
        "DETSERVE_MODEL_ID": profile.model.id,
        "DETSERVE_MODEL_REVISION": loaded.revision,
        "DETSERVE_MANIFEST_SHA256": hashlib.sha256(loaded.manifest_path.read_bytes()).hexdigest(),
        "DETSERVE_MODEL_FOLDER": loaded.model_cache_dir.name,
        "DETSERVE_SNAPSHOT_DIR": os.path.realpath(loaded.snapshot_dir),
        "DETSERVE_BLOBS_DIR": os.path.realpath(loaded.model_cache_dir / "blobs"),
        "DETSERVE_SERVED_MODEL_NAME": profile.vllm.served_model_name,
        "DETSERVE_DTYPE": profile.vllm.dtype,
        "DETSERVE_MAX_MODEL_LEN": str(profile.vllm.max_model_len),
        "DETSERVE_SEED": str(profile.sampling.seed),
        "DETSERVE_TENSOR_PARALLEL_SIZE": str(profile.vllm.tensor_parallel_size),
        "DETSERVE_OPTIONAL_ARGS": shlex.join(optional),
        "DETSERVE_HOST": profile.runtime.host,
        "DETSERVE_PORT": str(profile.runtime.port),
        "DETSERVE_SHM_SIZE": profile.runtime.shm_size,
    }


def _assert_compose_starts_the_container_of(
    loaded: LoadedProfile, variables: dict[str, str]
) -> None:
    text = (REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    service = yaml.safe_load(_interpolate(text, variables))["services"]["vllm"]
    kwargs = build_container_spec(loaded, {}).to_create_kwargs()

    assert service["image"] == kwargs["image"]
    assert service["container_name"] == kwargs["name"]
    assert shlex.split(service["command"]) == kwargs["command"]
    assert service["labels"] == kwargs["labels"]
    assert service["shm_size"] == kwargs["shm_size"]
    assert service["init"] is kwargs["init"] is True
    assert service["ports"] == ["127.0.0.1:8000:8000"]
    assert service["volumes"] == [
        {"type": "bind", "source": m["Source"], "target": m["Target"], "read_only": m["ReadOnly"]}
        for m in kwargs["mounts"]
    ]
    # detserve's own variables, plus the profile's environment through DETSERVE_RUNTIME_ENV_FILE
    assert service["environment"] == {"HF_HOME": "/hf-home", "HF_HUB_OFFLINE": "1"}
    assert service["env_file"] == ["/dev/null", "/dev/null"]


def test_compose_file_starts_the_same_container(cpu_profile: LoadedProfile) -> None:
    _assert_compose_starts_the_container_of(cpu_profile, _compose_variables(cpu_profile))


_ENV_LINE = re.compile(r"(?:export )?(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)")


def _read_env_file(text: str) -> dict[str, str]:
    """A ``.env`` file as docker compose reads it, for what ``.env.example`` uses: blank and
    ``#`` lines skipped; ``NAME=value``, the value unquoted (a `` #`` comment and the white space
    around it cut, quotes inside kept), in single quotes (literal) or in double quotes (``\\``
    escapes). Anything else fails the test rather than being read some other way."""
    variables: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _ENV_LINE.fullmatch(line)
        assert match is not None, f".env.example:{number}: not NAME=value: {line!r}"
        value = match["value"]
        quote = value[:1]
        if quote in ("'", '"'):
            assert len(value) > 1, f".env.example:{number}: unclosed {quote}"
            assert value.endswith(quote), f".env.example:{number}: unclosed {quote}"
        if quote == "'":
            value = value[1:-1]
        elif quote == '"':
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].strip()
        assert "$" not in value, f".env.example:{number}: compose would interpolate {value!r}"
        variables[match["name"]] = value
    return variables


#: what .env.example leaves to each machine (empty, or a placeholder path): filled in as its
#: comments say; every other value is the tiny profile's own, written in the file
_MACHINE_VALUES = frozenset(
    {
        "DETSERVE_PROFILE_SHA256",
        "DETSERVE_IMAGE_DIGEST",
        "DETSERVE_MANIFEST_SHA256",
        "DETSERVE_SNAPSHOT_DIR",
        "DETSERVE_BLOBS_DIR",
    }
)


def test_env_example_holds_the_tiny_profiles_values(cpu_profile: LoadedProfile) -> None:
    # .env.example says its values are configs/tiny-cpu.json's: read as compose reads it, with
    # only the machine's values filled in, it must start the container that profile makes
    example = _read_env_file((REPO_ROOT / ".env.example").read_text(encoding="utf-8"))
    profile = _compose_variables(cpu_profile)
    written = {name: value for name, value in example.items() if name not in _MACHINE_VALUES}
    assert written == {name: profile.get(name, "") for name in written}, (
        ".env.example disagrees with the profile"
    )
    machine = {name: profile[name] for name in _MACHINE_VALUES}
    _assert_compose_starts_the_container_of(cpu_profile, example | machine)


def test_compose_file_refuses_a_missing_digest(cpu_profile: LoadedProfile) -> None:
    variables = _compose_variables(cpu_profile)
    del variables["DETSERVE_IMAGE_DIGEST"]
    text = (REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    with pytest.raises(AssertionError, match="DETSERVE_IMAGE_DIGEST"):
        _interpolate(text, variables)


def test_env_example_lists_every_compose_variable() -> None:
    compose = (REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    example = (REPO_ROOT / ".env.example").read_text(encoding="utf-8")
    used = {match["name"] for match in _VARIABLE.finditer(compose)}
    listed = set(re.findall(r"^([A-Z0-9_]+)=", example, flags=re.MULTILINE))
    assert used == listed
    # each variable is preceded by a comment line
    lines = example.splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^[A-Z0-9_]+=", line):
            assert lines[index - 1].startswith("#"), line
