"""Profiles: the committed ones load, and every kind of unpinned or unsafe profile is refused.

Each refusal goes through ``detserve config validate`` as a user would meet it: exit 2, and a
message on stderr that names the path of the offending field.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from detserve.engine_policy import NONDETERMINISTIC_OPTIONS, installs_packages
from detserve.errors import EXIT_INPUT, EXIT_OK, ProfileError, UnpinnedError
from detserve.profile import load_profile, parse_profile

from .committed import REPO_ROOT, SCHEMA_FILE, TINY_CONFIG, TINY_REVISION, CliRunner

DIGEST = "sha256:" + "ab" * 32
PINNED_IMAGE = f"127.0.0.1:5000/detserve/vllm-cpu@{DIGEST}"
QWEN_8B = REPO_ROOT / "configs" / "qwen3-8b.json"
QWEN_235B = REPO_ROOT / "configs" / "qwen3-235b-a22b-instruct-2507.json"

Document = dict[str, Any]


def tiny_document() -> Document:
    """The committed tiny-cpu profile with its image pinned too, so that it is fully valid."""
    document: Document = json.loads(TINY_CONFIG.read_text(encoding="utf-8"))
    document["runtime"]["image"] = PINNED_IMAGE
    return document


def qwen_document() -> Document:
    """The committed qwen3-8b profile, pinned, as a GPU profile to mutate."""
    document: Document = json.loads(QWEN_8B.read_text(encoding="utf-8"))
    document["model"]["revision"] = "0" * 40
    document["runtime"]["image"] = f"vllm/vllm-openai@{DIGEST}"
    return document


def write_profile(directory: Path, document: Document, name: str = "profile.json") -> Path:
    path = directory / name
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def test_tiny_cpu_loads() -> None:
    loaded = load_profile(TINY_CONFIG)
    assert loaded.name == "tiny-cpu"
    assert loaded.revision == TINY_REVISION
    assert loaded.missing_pins() == ["runtime.image"]
    assert loaded.snapshot_dir.is_dir()
    assert loaded.manifest_path.is_file()
    assert loaded.manifest_path.name == f"{TINY_REVISION}.sha256"


@pytest.mark.parametrize("path", [QWEN_8B, QWEN_235B], ids=lambda p: p.stem)
def test_gpu_profiles_load_unpinned(path: Path) -> None:
    loaded = load_profile(path)
    assert loaded.missing_pins() == ["model.revision", "runtime.image"]
    with pytest.raises(UnpinnedError):
        loaded.require_pins()


def test_content_hash_ignores_formatting(tmp_path: Path) -> None:
    document = tiny_document()
    pretty = write_profile(tmp_path, document, "pretty.json")
    compact = tmp_path / "compact.json"
    compact.write_text(json.dumps(document, separators=(",", ":")), encoding="utf-8")
    assert load_profile(pretty).content_sha256 == load_profile(compact).content_sha256
    assert load_profile(pretty).file_sha256 != load_profile(compact).file_sha256


def test_fully_pinned_profile_validates(tmp_path: Path, cli: CliRunner) -> None:
    path = write_profile(tmp_path, tiny_document())
    result = cli("config", "validate", "--config", path)
    assert result.code == EXIT_OK, result.err
    assert "fully pinned" in result.out


def _set(path: str, value: Any) -> Callable[[Document], None]:
    *parents, key = path.split(".")

    def mutate(document: Document) -> None:
        target = document
        for part in parents:
            target = target[part]
        target[key] = value

    return mutate


# (mutation, the field path the message must name, a phrase its line must contain)
INVALID_TINY: dict[str, tuple[Callable[[Document], None], str, str]] = {
    "branch-revision": (_set("model.revision", "main"), "model.revision", "40-hex commit"),
    "short-hash": (_set("model.revision", TINY_REVISION[:12]), "model.revision", "short hash"),
    "uppercase-hash": (_set("model.revision", TINY_REVISION.upper()), "model.revision", "40-hex"),
    "tag-only-image": (
        _set("runtime.image", "127.0.0.1:5000/detserve/vllm-cpu:0.32.0"),
        "runtime.image",
        "a tag alone is refused",
    ),
    "image-digest-too-short": (
        _set("runtime.image", "127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "ab" * 31),
        "runtime.image",
        "REPO@sha256:<64 hex>",
    ),
    "image-digest-too-long": (
        _set("runtime.image", "127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "ab" * 33),
        "runtime.image",
        "REPO@sha256:<64 hex>",
    ),
    "image-tag-and-digest": (
        _set("runtime.image", f"127.0.0.1:5000/detserve/vllm-cpu:0.32.0@{DIGEST}"),
        "runtime.image",
        "REPO@sha256:<64 hex>",
    ),
    "unknown-top-level-key": (_set("pins", {}), "pins", "unknown key"),
    "unknown-nested-key": (_set("runtime.imag", PINNED_IMAGE), "runtime.imag", "unknown key"),
    "unknown-sampling-key": (_set("sampling.top_p", 0.9), "sampling.top_p", "unknown key"),
    "entrypoint-pip-install": (
        _set("runtime.entrypoint", ["bash", "-c", "pip install vllm==0.9 && vllm serve"]),
        "runtime.entrypoint",
        "installs packages",
    ),
    "entrypoint-pip3-version-install": (
        _set("runtime.entrypoint", ["sh", "-c", "pip3.11 install -U vllm; vllm serve"]),
        "runtime.entrypoint",
        "installs packages",
    ),
    "entrypoint-apt-get-install": (
        _set("runtime.entrypoint", ["sh", "-c", "apt-get update && apt-get install -y gcc"]),
        "runtime.entrypoint",
        "installs packages",
    ),
    "entrypoint-uv-pip-install": (
        _set("runtime.entrypoint", ["uv", "pip", "install", "--system", "transformers"]),
        "runtime.entrypoint",
        "installs packages",
    ),
    "empty-entrypoint": (_set("runtime.entrypoint", []), "runtime.entrypoint", "must be [PYTHON"),
    "extra-args-pip-install": (
        _set("vllm.extra_args", {"--additional-config": "pip install evil-kernels"}),
        "vllm.extra_args",
        "--additional-config is not an engine option a strict profile may set",
    ),
    "extra-args-uv-pip-install": (
        _set("vllm.extra_args", {"--worker-extension-cls": "uv pip install --system evil"}),
        "vllm.extra_args",
        "--worker-extension-cls is not an engine option a strict profile may set",
    ),
    "extra-args-apt-get-install": (
        _set("vllm.extra_args", {"--chat-template": "x; apt-get install -y gcc"}),
        "vllm.extra_args",
        "--chat-template is refused in a strict profile",
    ),
    "extra-args-install-in-the-name": (
        _set("vllm.extra_args", {"--x; pip install evil": True}),
        "vllm.extra_args",
        "engine option '--x; pip install evil' must be spelled '--name'",
    ),
    "extra-args-value-in-the-name": (
        _set("vllm.extra_args", {"--max-num-seqs=64": True}),
        "vllm.extra_args",
        "engine option '--max-num-seqs=64' must be spelled '--name'",
    ),
    "env-installs-packages": (
        _set("runtime.environment", {"PRESTART": "pip install torch"}),
        "runtime.environment",
        "'PRESTART' is not an environment variable a strict profile may set",
    ),
    "temperature-above-zero": (
        _set("sampling.temperature", 0.7),
        "sampling.temperature",
        "greedy",
    ),
    "temperature-tiny": (_set("sampling.temperature", 1e-9), "sampling.temperature", "greedy"),
    "concurrency-above-one": (
        _set("sampling.concurrency", 2),
        "sampling.concurrency",
        "expected 1",
    ),
    "secret-env-token": (
        _set("runtime.environment", {"HF_TOKEN": "hf_abc"}),
        "runtime.environment",
        "looks like a secret",
    ),
    "secret-env-password": (
        _set("runtime.environment", {"db_password": "hunter2"}),
        "runtime.environment",
        "looks like a secret",
    ),
    "env-overrides-offline": (
        _set("runtime.environment", {"HF_HUB_OFFLINE": "0"}),
        "runtime.environment",
        "set by detserve",
    ),
    "managed-engine-option": (
        _set("vllm.extra_args", {"--max-model-len": 4096}),
        "vllm.extra_args",
        "structured fields",
    ),
    "undashed-engine-option": (
        _set("vllm.extra_args", {"enable_prefix_caching": True}),
        "vllm.extra_args",
        "refused in a strict profile",
    ),
    # Environment: an allowlist. Each of these redirects the weights, the code or the packages.
    **{
        f"env-{name.lower()}": (
            _set("runtime.environment", {name: value}),
            "runtime.environment",
            f"{name!r} is not an environment variable a strict profile may set",
        )
        for name, value in {
            "HF_HUB_CACHE": "/tmp/unverified",
            "HF_HUB_OFFLINE_X": "1",
            "PYTHONPATH": "/tmp/evil",
            "LD_PRELOAD": "/tmp/evil.so",
            "PIP_INDEX_URL": "http://evil.invalid/simple",
            "TRANSFORMERS_CACHE": "/tmp/unverified",
            "VLLM_PLUGINS": "evil",
        }.items()
    },
    "env-value-of-the-wrong-form": (
        _set("runtime.environment", {"VLLM_CPU_KVCACHE_SPACE": "1 --enable-prefix-caching"}),
        "runtime.environment",
        "does not have the form",
    ),
    # Engine options: exact names on an allowlist; vLLM's parser expands prefixes, so a prefix of
    # a refused option is that option.
    **{
        f"abbreviated-{name.strip('-')}": (
            _set("vllm.extra_args", {name: True}),
            "vllm.extra_args",
            f"{name} is an abbreviation",
        )
        for name in ("--enable-prefix-cach", "--enable-prefix", "--trust-remote", "--load-form")
    },
    "config-file-option": (
        _set("vllm.extra_args", {"--config": "/hf-home/evil.yaml"}),
        "vllm.extra_args",
        "--config is refused in a strict profile",
    ),
    "negated-managed-flag": (
        _set("vllm.extra_args", {"--no-enforce-eager": True}),
        "vllm.extra_args",
        "--no-enforce-eager is not an engine option a strict profile may set",
    ),
    "flag-given-a-value": (
        _set("vllm.extra_args", {"--disable-log-stats": "--enable-prefix-caching"}),
        "vllm.extra_args",
        "is a flag: its value must be true",
    ),
    "option-given-true": (
        _set("vllm.extra_args", {"--max-num-batched-tokens": True}),
        "vllm.extra_args",
        "takes a value, not true",
    ),
    "choice-out-of-range": (
        _set("vllm.extra_args", {"--kv-cache-dtype": "--enable-prefix-caching"}),
        "vllm.extra_args",
        "takes one of",
    ),
    "uppercase-option": (
        _set("vllm.extra_args", {"--Enable-Prefix-Caching": True}),
        "vllm.extra_args",
        "must be spelled '--name'",
    ),
    "entrypoint-shell": (
        _set("runtime.entrypoint", ["sh", "-c", "exec vllm serve --enable-prefix-caching"]),
        "runtime.entrypoint",
        "must be [PYTHON",
    ),
    "entrypoint-extra-options": (
        _set(
            "runtime.entrypoint",
            ["python3", "-m", "vllm.entrypoints.openai.api_server", "--enable-prefix-caching"],
        ),
        "runtime.entrypoint",
        "must be [PYTHON",
    ),
    # Python's `$` also matches before a final newline: every pattern must take the whole value
    "revision-trailing-newline": (
        _set("model.revision", TINY_REVISION + "\n"),
        "model.revision",
        "40-hex commit",
    ),
    "model-id-trailing-newline": (
        _set("model.id", "detserve/tiny-llama\n"),
        "model.id",
        "ORG/NAME",
    ),
    "image-trailing-newline": (
        _set("runtime.image", PINNED_IMAGE + "\n"),
        "runtime.image",
        "REPO@sha256:<64 hex>",
    ),
    "gpu-count-on-cpu": (_set("runtime.gpu_count", 1), "runtime", "device 'nvidia' only"),
    "tensor-parallel-on-cpu": (
        _set("vllm.tensor_parallel_size", 2),
        "vllm.tensor_parallel_size",
        "must be 1 on device 'cpu'",
    ),
    "schema-version": (
        _set("schema_version", 2),
        "schema_version",
        "schema_version: Input should be 1; found 2",
    ),
    "revision-not-a-string": (_set("model.revision", 1234), "model.revision", "string"),
    "port-out-of-range": (_set("runtime.port", 70000), "runtime.port", "65535"),
    # A run log is RFC 8785, exact for integers up to 2**53 - 1: refused here, not mid-sampling.
    "seed-2**64": (_set("sampling.seed", 2**64), "sampling.seed", "9007199254740991"),
    "seed-2**53": (_set("sampling.seed", 2**53), "sampling.seed", "9007199254740991"),
    "seed-negative": (_set("sampling.seed", -1), "sampling.seed", "greater than or equal to 0"),
}


def test_the_largest_seed_a_run_log_holds_is_accepted() -> None:
    document = tiny_document()
    document["sampling"]["seed"] = 2**53 - 1
    profile = parse_profile(json.dumps(document).encode(), source="test")
    assert profile.sampling.seed == 2**53 - 1


@pytest.mark.parametrize("case", sorted(INVALID_TINY), ids=str)
def test_invalid_profile_exits_2_naming_the_field(
    case: str, tmp_path: Path, cli: CliRunner
) -> None:
    mutate, field, phrase = INVALID_TINY[case]
    document = tiny_document()
    mutate(document)
    path = write_profile(tmp_path, document)
    before = path.read_bytes()
    result = cli("config", "validate", "--config", path)
    assert result.code == EXIT_INPUT, result.text
    assert f"invalid profile {path}" in result.err
    # The field and what was wrong with it on one line, so that neither is matched elsewhere.
    assert any(field in line and phrase in line for line in result.err.splitlines()), result.err
    assert path.read_bytes() == before


@pytest.mark.parametrize("option", sorted(NONDETERMINISTIC_OPTIONS))
def test_nondeterministic_engine_option_refused(
    option: str, tmp_path: Path, cli: CliRunner
) -> None:
    document = tiny_document()
    document["vllm"]["extra_args"] = {option: True}
    result = cli("config", "validate", "--config", write_profile(tmp_path, document))
    assert result.code == EXIT_INPUT, result.text
    assert "vllm.extra_args" in result.err
    assert f"{option} is refused in a strict profile" in result.err
    assert NONDETERMINISTIC_OPTIONS[option][:40] in result.err


@pytest.mark.parametrize(
    "spelling", ["--enable_prefix_caching", "--enable-prefix-caching=true", "--load_format"]
)
def test_nondeterministic_option_other_spellings_refused(spelling: str) -> None:
    document = tiny_document()
    document["vllm"]["extra_args"] = {spelling: True}
    with pytest.raises(ProfileError) as raised:
        parse_profile(json.dumps(document).encode(), source="test")
    assert "vllm.extra_args" in raised.value.diagnostics()
    assert "is refused in a strict profile" in raised.value.diagnostics()


def test_tensor_parallel_beyond_gpus_refused(tmp_path: Path, cli: CliRunner) -> None:
    document = qwen_document()
    assert load_profile(write_profile(tmp_path, document, "ok.json")).missing_pins() == []
    document["vllm"]["tensor_parallel_size"] = 2
    result = cli("config", "validate", "--config", write_profile(tmp_path, document))
    assert result.code == EXIT_INPUT, result.text
    assert "vllm.tensor_parallel_size 2 exceeds the 1 GPU(s)" in result.err


def test_tensor_parallel_beyond_gpu_ids_refused(tmp_path: Path, cli: CliRunner) -> None:
    document = qwen_document()
    del document["runtime"]["gpu_count"]
    document["runtime"]["gpu_ids"] = ["0", "1"]
    document["vllm"]["tensor_parallel_size"] = 4
    result = cli("config", "validate", "--config", write_profile(tmp_path, document))
    assert result.code == EXIT_INPUT, result.text
    assert "vllm.tensor_parallel_size 4 exceeds the 2 GPU(s)" in result.err


def test_nvidia_needs_exactly_one_gpu_selection(tmp_path: Path, cli: CliRunner) -> None:
    document = qwen_document()
    document["runtime"]["gpu_ids"] = ["0"]
    result = cli("config", "validate", "--config", write_profile(tmp_path, document))
    assert result.code == EXIT_INPUT, result.text
    assert "runtime: " in result.err
    assert "exactly one of gpu_count or gpu_ids" in result.err


def test_cpu_placement_is_for_the_cpu_backend_only(tmp_path: Path, cli: CliRunner) -> None:
    document = qwen_document()
    document["runtime"]["cpu_placement"] = "engine-core-with-worker"
    result = cli("config", "validate", "--config", write_profile(tmp_path, document))
    assert result.code == EXIT_INPUT, result.text
    assert "cpu_placement is for device 'cpu' only" in result.err


def test_an_unknown_cpu_placement_is_refused(tmp_path: Path, cli: CliRunner) -> None:
    document = tiny_document()
    document["runtime"]["cpu_placement"] = "anywhere"
    result = cli("config", "validate", "--config", write_profile(tmp_path, document))
    assert result.code == EXIT_INPUT, result.text
    assert "runtime.cpu_placement" in result.err


def test_every_bad_field_is_reported_one_line_each(tmp_path: Path, cli: CliRunner) -> None:
    document = tiny_document()
    document["model"]["revision"] = "main"
    document["sampling"]["temperature"] = 1.0
    document["sampling"]["concurrency"] = 4
    document["extra"] = True
    result = cli("config", "validate", "--config", write_profile(tmp_path, document))
    assert result.code == EXIT_INPUT
    field_lines = [line.strip() for line in result.err.splitlines() if line.startswith("  ")]
    fields = sorted(line.split(":", 1)[0] for line in field_lines)
    assert fields == ["extra", "model.revision", "sampling.concurrency", "sampling.temperature"]


@pytest.mark.parametrize("path", [TINY_CONFIG, QWEN_8B, QWEN_235B], ids=lambda p: p.stem)
def test_null_pins_need_allow_unpinned(path: Path, cli: CliRunner) -> None:
    missing = load_profile(path).missing_pins()
    assert missing
    refused = cli("config", "validate", "--config", path)
    assert refused.code == EXIT_INPUT, refused.text
    assert "is not pinned" in refused.err
    for pin in missing:
        assert f"{pin}: null (unpinned)" in refused.err
    allowed = cli("config", "validate", "--config", path, "--allow-unpinned")
    assert allowed.code == EXIT_OK, allowed.text
    assert f"unpinned: {', '.join(missing)}" in allowed.out


def test_validate_json_output(tmp_path: Path, cli: CliRunner) -> None:
    result = cli("config", "validate", "--config", TINY_CONFIG, "--allow-unpinned", "--json")
    assert result.code == EXIT_OK
    report = json.loads(result.out)
    assert report["ok"] is True
    assert report["unpinned"] == ["runtime.image"]
    assert report["profile_sha256"] == load_profile(TINY_CONFIG).content_sha256


def test_missing_profile_file_exits_2(tmp_path: Path, cli: CliRunner) -> None:
    result = cli("config", "validate", "--config", tmp_path / "absent.json")
    assert result.code == EXIT_INPUT
    assert "cannot read profile" in result.err


def test_not_json_exits_2(tmp_path: Path, cli: CliRunner) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"schema_version": 1,', encoding="utf-8")
    result = cli("config", "validate", "--config", path)
    assert result.code == EXIT_INPUT
    assert "invalid profile" in result.err


def test_schema_command_matches_committed_schema(cli: CliRunner) -> None:
    result = cli("config", "schema")
    assert result.code == EXIT_OK
    assert result.out == SCHEMA_FILE.read_text(encoding="utf-8"), (
        "docs/profile.schema.json is stale: run `make schemas` and commit it"
    )


def test_schema_command_json_is_one_line_of_the_same_schema(cli: CliRunner) -> None:
    result = cli("config", "schema", "--json")
    assert result.code == EXIT_OK
    assert result.out.count("\n") == 1
    assert result.out.endswith("\n")
    assert json.loads(result.out) == json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def test_committed_profiles_satisfy_committed_schema() -> None:
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    for path in (TINY_CONFIG, QWEN_8B, QWEN_235B):
        jsonschema.validate(json.loads(path.read_text(encoding="utf-8")), schema)


def test_schema_rejects_unknown_keys_as_the_model_does() -> None:
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    document = copy.deepcopy(tiny_document())
    document["runtime"]["imag"] = "x"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema)


@pytest.mark.parametrize(
    ("words", "installs"),
    [
        (["vllm", "serve", "--model", "x"], False),
        (["python3", "-m", "vllm.entrypoints.openai.api_server"], False),
        (["python", "-m", "pip", "install", "x"], True),
        (["pip3.11", "install", "x"], True),
        (["conda", "install", "-y", "x"], True),
        (["poetry", "add", "x"], True),
        (["uv", "sync"], True),
        (["echo", "pipeline installed"], False),
    ],
)
def test_installs_packages(words: list[str], installs: bool) -> None:
    assert installs_packages(words) is installs


def test_config_options_lists_every_allowlist_entry(cli: CliRunner) -> None:
    from detserve.engine_policy import ENGINE_OPTIONS, ENVIRONMENT_VARIABLES

    shown = cli("config", "options", "--json")
    assert shown.code == 0, shown.text
    document = json.loads(shown.out)
    assert sorted(document["engine_options"]) == sorted(ENGINE_OPTIONS)
    assert sorted(document["environment"]) == sorted(ENVIRONMENT_VARIABLES)
    assert "--config" in document["refused_engine_options"]
    text = cli("config", "options")
    assert text.code == 0
    assert all(name in text.out for name in ENGINE_OPTIONS)
