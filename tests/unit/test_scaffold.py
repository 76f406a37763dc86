"""``detserve init``: the profile it writes validates and fits the device, nothing is replaced,
bad names are refused, and the checklist's commands are the real CLI's, in order.

Every profile is written under ``tmp_path`` (the working directory of the command), as a user
runs ``detserve init`` in a checkout.
"""

from __future__ import annotations

import ast
import json
import os
import shlex
from pathlib import Path
from typing import Any

import pytest

from detserve.profile import load_profile
from detserve.scaffold import CPU_IMAGE_TAG, GPU_IMAGE_TAG, VLLM_VERSION

from .committed import REPO_ROOT, TINY_CONFIG, CliRunner, parse_command_line

EXIT_OK, EXIT_INPUT = 0, 2
QWEN_8B = REPO_ROOT / "configs" / "qwen3-8b.json"
QWEN_235B = REPO_ROOT / "configs" / "qwen3-235b-a22b-instruct-2507.json"
STEPS = ["lock-model", "download", "hash", "lock-image", "bundle", "run", "sample", "attest"]


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory standing for a checkout (configs/, artifacts/, manifests/)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def init(cli: CliRunner, *args: str | Path) -> Any:
    return cli("init", *args)


def document(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def without(doc: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in keys}


# --- what is written ----------------------------------------------------------------------------


def test_a_gpu_profile_validates_and_is_the_committed_qwen3_8b_one(
    checkout: Path, cli: CliRunner
) -> None:
    ran = init(cli, "--model", "Qwen/Qwen3-8B", "--device", "nvidia", "--name", "qwen3-8b")
    assert ran.code == EXIT_OK, ran.err
    path = checkout / "configs" / "qwen3-8b.json"
    assert ran.out.startswith(f"wrote {Path('configs/qwen3-8b.json')}: unpinned profile")
    validated = cli("config", "validate", "--config", path, "--allow-unpinned")
    assert validated.code == EXIT_OK, validated.err
    assert "unpinned: model.revision, runtime.image" in validated.out
    written = document(path)
    vllm, runtime = written["vllm"], written["runtime"]
    assert (vllm["dtype"], vllm["batch_invariant"], vllm["tensor_parallel_size"]) == (
        "bfloat16",
        True,
        1,
    )
    assert (runtime["device"], runtime["gpu_count"], runtime["image_tag"]) == (
        "nvidia",
        1,
        GPU_IMAGE_TAG,
    )
    assert (written["model"]["revision"], runtime["image"]) == (None, None)
    # the committed GPU profile is what init writes for it, but for its words to people
    assert without(written, "description") == without(document(QWEN_8B), "description")


@pytest.mark.parametrize("gpus", [2, 8])
def test_tensor_parallelism_spans_every_gpu(checkout: Path, cli: CliRunner, gpus: int) -> None:
    ran = init(cli, "--model", "Org/Big", "--device", "nvidia", "--gpus", str(gpus), "--name", "b")
    assert ran.code == EXIT_OK, ran.err
    loaded = load_profile(checkout / "configs" / "b.json")
    assert loaded.profile.vllm.tensor_parallel_size == gpus
    assert loaded.profile.runtime.gpu_count == gpus
    assert loaded.profile.runtime.ipc_mode == "host"  # several GPU processes share memory
    if gpus == 8:
        assert (
            document(checkout / "configs" / "b.json")["runtime"] == document(QWEN_235B)["runtime"]
        )


def test_a_cpu_profile_is_the_tiny_profiles_settings(checkout: Path, cli: CliRunner) -> None:
    ran = init(cli, "--model", "Org/Small", "--device", "cpu", "--name", "small")
    assert ran.code == EXIT_OK, ran.err
    path = checkout / "configs" / "small.json"
    assert cli("config", "validate", "--config", path, "--allow-unpinned").code == EXIT_OK
    written, tiny = document(path), document(TINY_CONFIG)
    assert written["runtime"] == tiny["runtime"]
    assert written["runtime"]["image_tag"] == CPU_IMAGE_TAG
    assert written["sampling"] == tiny["sampling"]
    assert written["snapshot"] == tiny["snapshot"]
    assert without(written["vllm"], "served_model_name") == without(
        tiny["vllm"], "served_model_name"
    )
    assert written["vllm"]["served_model_name"] == "small"
    assert written["model"] == {"id": "Org/Small", "ref": "main", "revision": None}


def test_the_image_tags_are_the_stacks_vllm_version() -> None:
    # the CPU image scripts/stack builds, and the upstream image of the same vLLM version
    stack = ast.parse((REPO_ROOT / "scripts" / "stack" / "stack.py").read_text("utf-8"))
    versions = [
        node.value.value
        for node in stack.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "VLLM_VERSION" for t in node.targets)
        and isinstance(node.value, ast.Constant)
    ]
    assert versions == [VLLM_VERSION]
    assert document(TINY_CONFIG)["runtime"]["image_tag"] == CPU_IMAGE_TAG
    assert document(QWEN_8B)["runtime"]["image_tag"] == GPU_IMAGE_TAG
    assert GPU_IMAGE_TAG.removeprefix("vllm/vllm-openai:v") == VLLM_VERSION


def test_the_profile_names_its_layout_relative_to_itself(checkout: Path, cli: CliRunner) -> None:
    ran = init(cli, "--model", "Org/M", "--device", "cpu", "--name", "m", "--output", "p/q/m.json")
    assert ran.code == EXIT_OK, ran.err
    loaded = load_profile(checkout / "p" / "q" / "m.json")
    assert loaded.hf_home == checkout / "artifacts" / "hf-cache"
    assert loaded.profile.snapshot.manifest_dir == "../../manifests"
    assert loaded.profile.prompts is not None
    assert (
        loaded.resolve_path(loaded.profile.prompts.bundle) == checkout / "artifacts" / "m-prompts"
    )
    assert loaded.resolve_path(loaded.profile.prompts.manifest) == (
        checkout / "manifests" / "m-prompts" / "m-prompts.sha256"
    )


def test_a_profile_outside_the_checkout_names_absolute_paths(
    checkout: Path, cli: CliRunner, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "m.json"
    ran = init(cli, "--model", "Org/M", "--device", "cpu", "--name", "m", "--output", elsewhere)
    assert ran.code == EXIT_OK, ran.err
    written = document(elsewhere)
    assert written["snapshot"]["hf_home"] == str(checkout / "artifacts" / "hf-cache")
    assert written["prompts"]["bundle"] == str(checkout / "artifacts" / "m-prompts")
    assert load_profile(elsewhere).hf_home == checkout / "artifacts" / "hf-cache"


def test_hf_home_is_taken_from_the_working_directory(checkout: Path, cli: CliRunner) -> None:
    ran = init(cli, "--model", "Org/M", "--device", "nvidia", "--name", "m", "--hf-home", "weights")
    assert ran.code == EXIT_OK, ran.err
    assert load_profile(checkout / "configs" / "m.json").hf_home == checkout / "weights"


# --- refusals -----------------------------------------------------------------------------------


def test_an_existing_profile_is_never_replaced(checkout: Path, cli: CliRunner) -> None:
    path = checkout / "configs" / "m.json"
    path.parent.mkdir()
    path.write_text("mine\n", encoding="utf-8")
    ran = init(cli, "--model", "Org/M", "--device", "cpu", "--name", "m")
    assert ran.code == EXIT_INPUT, ran.err
    assert "refusing to overwrite" in ran.err
    assert "init never replaces a profile" in ran.err
    assert path.read_text(encoding="utf-8") == "mine\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.json"]  # no temporary left


@pytest.mark.parametrize("kind", ["directory", "symlink", "dangling symlink", "fifo"])
def test_a_target_that_is_not_a_regular_file_is_refused(
    checkout: Path, cli: CliRunner, kind: str
) -> None:
    path = checkout / "configs" / "m.json"
    path.parent.mkdir()
    victim = checkout / "victim.json"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        if kind == "symlink":
            victim.write_text("{}\n", encoding="utf-8")
        path.symlink_to(victim)
    ran = init(cli, "--model", "Org/M", "--device", "cpu", "--name", "m")
    assert ran.code == EXIT_INPUT, ran.err
    assert "refusing to replace" in ran.err
    if kind == "symlink":
        assert victim.read_text(encoding="utf-8") == "{}\n"
    if kind == "dangling symlink":
        assert not victim.exists()


@pytest.mark.parametrize(
    "model",
    [
        "Qwen3-8B",
        "a/b/c",
        "../x",
        "/abs",
        "a--b/c",
        "a/b..c",
        "a/b.git",
        "-a/b",
        "a/",
        "a b/c",
        "a/b\n",
        "a/" + "b" * 97,
        "",
    ],
)
def test_a_bad_model_id_is_refused(checkout: Path, cli: CliRunner, model: str) -> None:
    ran = init(cli, "--model", model, "--device", "cpu", "--name", "m")
    assert ran.code == EXIT_INPUT, ran.err
    assert "expected a Hugging Face model id 'ORG/NAME'" in ran.err
    assert not (checkout / "configs").exists()


@pytest.mark.parametrize(
    "name", ["Qwen3", "../x", "a/b", ".hidden", "-x", "", "x" * 65, "a b", "a\nb", "..", "."]
)
def test_a_bad_name_is_refused(checkout: Path, cli: CliRunner, name: str) -> None:
    ran = init(cli, "--model", "Org/M", "--device", "cpu", "--name", name)
    assert ran.code == EXIT_INPUT, ran.err
    assert "expected a profile name, a plain file name" in ran.err
    assert not (checkout / "configs").exists()
    assert list(checkout.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "tpu"], "--device 'tpu': choose cpu or nvidia"),
        (["--device", "cpu", "--gpus", "2"], "--gpus is for --device nvidia"),
        (["--device", "cpu", "--output", "a\x1bb.json"], "a path with a control character"),
        (["--device", "nvidia", "--gpus", "0"], "--gpus"),
    ],
)
def test_bad_options_are_refused(
    checkout: Path, cli: CliRunner, args: list[str], message: str
) -> None:
    ran = init(cli, "--model", "Org/M", "--name", "m", *args)
    assert ran.code == EXIT_INPUT, ran.err
    assert message in ran.err
    assert list(checkout.iterdir()) == []


# --- the checklist ------------------------------------------------------------------------------


def test_the_gpu_checklist_is_shown_exactly(checkout: Path, cli: CliRunner) -> None:
    ran = init(cli, "--model", "Qwen/Qwen3-8B", "--device", "nvidia", "--name", "q", "--json")
    assert ran.code == EXIT_OK, ran.err
    answer = json.loads(ran.out)
    assert answer["profile"] == str(Path("configs/q.json"))
    steps = answer["checklist"]
    assert [step["step"] for step in steps] == STEPS
    p = "configs/q.json"
    assert [step["commands"] for step in steps] == [
        [f"detserve lock-model --config {p} --write"],
        [f"detserve download --config {p}"],
        [f"detserve hash --config {p} --manifest-output manifests/q/REVISION.sha256"],
        [f"detserve lock-image --config {p} --write"],
        [
            f"detserve prompts bootstrap --config {p} --dataset-file DATASET --dataset-sha256 "
            "DATASET_SHA256 --n-prompts 64 --name q-prompts --output-dir artifacts/q-prompts",
            "detserve hash --snapshot artifacts/q-prompts --manifest-output "
            "manifests/q-prompts/q-prompts.sha256",
            f"detserve prompts verify --config {p}",
        ],
        [f"detserve run --config {p}"],
        [
            f"detserve sample --config {p} --run-log-output artifacts/runs/q.runlog.jsonl "
            "--sidecar-output artifacts/runs/q.sidecar.json"
        ],
        [
            "detserve keygen --output-dir keys/",
            "detserve attest --run-log artifacts/runs/q.runlog.jsonl --sidecar "
            "artifacts/runs/q.sidecar.json --key keys/detserve.key --envelope-output "
            "artifacts/runs/q.claim.intoto.json",
        ],
    ]
    assert steps[2]["instead"] == [
        f"detserve hash --config {p} --model-signature SIGNATURE --public-key PUBLIC_KEY "
        "--manifest-output manifests/q/REVISION.sha256"
    ]
    # the text shows the same commands, each on a line of its own, in the same order
    shown = init(cli, "--model", "Qwen/Qwen3-8B", "--device", "nvidia", "--name", "r")
    lines = [line.strip() for line in shown.out.splitlines()]
    commands = [c.replace("q", "r") for step in steps for c in step["commands"] + step["instead"]]
    positions = [lines.index(command) for command in commands]
    assert positions == sorted(positions)


def test_a_cpu_checklist_serves_the_locally_pinned_copy(checkout: Path, cli: CliRunner) -> None:
    ran = init(cli, "--model", "Org/Small", "--device", "cpu", "--name", "s", "--json")
    steps = {step["step"]: step["commands"] for step in json.loads(ran.out)["checklist"]}
    assert steps["lock-image"] == [
        "detserve lock-image --config configs/s.json --write --profile-output configs/s.local.json"
    ]
    assert steps["run"] == ["detserve run --config configs/s.local.json"]
    assert steps["lock-model"] == ["detserve lock-model --config configs/s.json --write"]


def test_a_path_is_quoted_for_the_shell(checkout: Path, cli: CliRunner) -> None:
    ran = init(
        cli, "--model", "Org/M", "--device", "nvidia", "--name", "m", "--output", "my p/m.json"
    )
    assert ran.code == EXIT_OK, ran.err
    assert "detserve run --config 'my p/m.json'" in ran.out


@pytest.mark.parametrize("device", ["cpu", "nvidia"])
def test_every_command_of_the_checklist_parses(checkout: Path, cli: CliRunner, device: str) -> None:
    ran = init(cli, "--model", "Org/M", "--device", device, "--name", "m", "--json")
    commands = [
        command
        for step in json.loads(ran.out)["checklist"]
        for command in step["commands"] + step["instead"]
    ]
    parsed = 0
    for command in commands:
        words = shlex.split(command)
        assert words[0] == "detserve"
        try:
            parse_command_line(words[1:])
        except Exception as exc:  # noqa: BLE001  # click's own, or typer's copy of it
            pytest.fail(f"{command}: {exc}")
        parsed += 1
    assert parsed == len(commands)
