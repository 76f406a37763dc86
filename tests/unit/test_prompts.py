"""Prompt bundles: the hash is checked first (exit 1), then the content is parsed strictly (exit 2).

Content errors are tested with a re-made pin, so that the hash matches and it is the parser that
refuses; hash errors with the committed pin.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from detserve.errors import EXIT_INPUT, EXIT_OK, EXIT_VERIFICATION
from detserve.prompts import load_bundle

from .committed import (
    BUNDLE_DIR,
    BUNDLE_PIN,
    DATASET_SOURCE,
    REPO_ROOT,
    TINY_CONFIG,
    TINY_REVISION,
    CliRunner,
    TinyWorkspace,
    sha256_hex,
)

PROMPTS = (BUNDLE_DIR / "prompts.jsonl").read_bytes()
PROMPT_LINES = PROMPTS.splitlines(keepends=True)
DATASET_SHA256 = json.loads((BUNDLE_DIR / "bundle.json").read_bytes())["source"]["file_sha256"]


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the committed bundle and of its pin."""
    directory = tmp_path / "bundle"
    shutil.copytree(BUNDLE_DIR, directory)
    pin = tmp_path / "pin" / "reference_prompts.sha256"
    pin.parent.mkdir()
    shutil.copyfile(BUNDLE_PIN, pin)
    return directory, pin


def verify(cli: CliRunner, bundle: tuple[Path, Path]) -> tuple[int, str]:
    directory, pin = bundle
    result = cli("prompts", "verify", "--bundle", directory, "--bundle-pin", pin)
    return result.code, result.err


def repin(cli: CliRunner, bundle: tuple[Path, Path]) -> None:
    """Pin the bundle as it is now, as a person would with `detserve hash`."""
    directory, pin = bundle
    made = cli("hash", "--snapshot", directory, "--output", pin, "--force")
    assert made.code == EXIT_OK, made.text


def write_prompts(bundle: tuple[Path, Path], data: bytes) -> None:
    (bundle[0] / "prompts.jsonl").write_bytes(data)


def test_committed_bundle_verifies(cli: CliRunner) -> None:
    result = cli("prompts", "verify", "--bundle", BUNDLE_DIR, "--bundle-pin", BUNDLE_PIN)
    assert result.code == EXIT_OK, result.text
    assert f"64 prompts, bundle sha256 {sha256_hex(BUNDLE_PIN.read_bytes())}" in result.out


def test_committed_bundle_verifies_with_defaults(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    assert cli("prompts", "verify", "--json").code == EXIT_OK


def test_committed_bundle_loads() -> None:
    loaded = load_bundle(BUNDLE_DIR, BUNDLE_PIN)
    assert len(loaded.prompts) == loaded.info.n_prompts == 64
    assert [p.id for p in loaded.prompts] == [f"p{i:05d}" for i in range(64)]
    assert loaded.info.tokenizer.model_revision == TINY_REVISION
    assert all(p.n_tokens <= loaded.info.max_prompt_tokens for p in loaded.prompts)
    assert [p.prompt for p in loaded.take(2)] == [
        json.loads(line)["prompt"] for line in PROMPT_LINES[:2]
    ]


# --- the hash is checked first: exit 1 -------------------------------------------------------


def test_one_changed_byte_exits_1(bundle: tuple[Path, Path], cli: CliRunner) -> None:
    data = bytearray(PROMPTS)
    data[PROMPTS.index(b"France")] = ord("f")
    write_prompts(bundle, bytes(data))
    code, err = verify(cli, bundle)
    assert code == EXIT_VERIFICATION, err
    assert "changed: ./prompts.jsonl expected 17e9a664" in err
    assert "does not match its pinned hash" in err


def test_reordered_prompts_exit_1(bundle: tuple[Path, Path], cli: CliRunner) -> None:
    records = [json.loads(line) for line in PROMPT_LINES]
    records[0], records[1] = records[1], records[0]
    reserialised = b"".join(
        (json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        for r in records
    )
    assert sorted(reserialised.splitlines()) == sorted(PROMPTS.splitlines())
    write_prompts(bundle, reserialised)
    code, err = verify(cli, bundle)
    assert code == EXIT_VERIFICATION, err
    assert "changed: ./prompts.jsonl" in err


def test_changed_bundle_info_exits_1(bundle: tuple[Path, Path], cli: CliRunner) -> None:
    info = bundle[0] / "bundle.json"
    info.write_bytes(
        info.read_bytes().replace(b'"max_prompt_tokens":480', b'"max_prompt_tokens":481')
    )
    code, err = verify(cli, bundle)
    assert code == EXIT_VERIFICATION, err
    assert "changed: ./bundle.json" in err


def test_extra_file_in_bundle_exits_1(bundle: tuple[Path, Path], cli: CliRunner) -> None:
    (bundle[0] / "prompts.jsonl.orig").write_bytes(PROMPTS)
    code, err = verify(cli, bundle)
    assert code == EXIT_VERIFICATION, err
    assert "extra: ./prompts.jsonl.orig" in err


def test_missing_pin_exits_2(bundle: tuple[Path, Path], cli: CliRunner) -> None:
    bundle[1].unlink()
    code, err = verify(cli, bundle)
    assert code == EXIT_INPUT, err
    assert not bundle[1].exists()


def test_pin_of_other_files_exits_2(bundle: tuple[Path, Path], cli: CliRunner) -> None:
    (bundle[0] / "notes.txt").write_text("x")
    repin(cli, bundle)
    code, err = verify(cli, bundle)
    assert code == EXIT_INPUT, err
    assert "must list exactly bundle.json and prompts.jsonl" in err


# --- the content is parsed strictly: exit 2, with a re-made pin -------------------------------


def _line(record: dict[str, object]) -> bytes:
    return (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()


BAD_CONTENT: dict[str, tuple[bytes, str]] = {
    "invalid-utf8": (
        PROMPT_LINES[0]
        + b'{"id":"p00001","n_tokens":3,"prompt":"caf\xe9"}\n'
        + b"".join(PROMPT_LINES[2:]),
        "prompts.jsonl:2: invalid UTF-8 at byte",
    ),
    "spaces-after-separators": (
        PROMPT_LINES[0]
        + json.dumps(json.loads(PROMPT_LINES[1]), sort_keys=True).encode()
        + b"\n"
        + b"".join(PROMPT_LINES[2:]),
        "prompts.jsonl:2: not canonical JSON",
    ),
    "unsorted-keys": (
        b"".join(PROMPT_LINES[:5])
        + json.dumps(
            dict(reversed(json.loads(PROMPT_LINES[5]).items())), separators=(",", ":")
        ).encode()
        + b"\n"
        + b"".join(PROMPT_LINES[6:]),
        "prompts.jsonl:6: not canonical JSON",
    ),
    "ascii-escaped-unicode": (
        b"".join(PROMPT_LINES[:-1]) + _line({"id": "p00063", "n_tokens": 4, "prompt": "héllo"}),
        "prompts.jsonl:64: not canonical JSON",
    ),
    "duplicate-id": (
        b"".join(PROMPT_LINES[:-1]) + PROMPT_LINES[0].replace(b'"n_tokens":15', b'"n_tokens":16'),
        "prompts.jsonl:64: duplicate prompt id 'p00000'",
    ),
    "empty": (b"", "empty bundle: no prompts"),
    "no-final-newline": (PROMPTS[:-1], "no final newline"),
    "blank-line": (b"".join(PROMPT_LINES[:-1]) + b"\n", "prompts.jsonl:64: invalid JSON"),
    "too-few-prompts": (b"".join(PROMPT_LINES[:-1]), "bundle.json says 64 prompts, found 63"),
    "unknown-field": (
        b"".join(PROMPT_LINES[:-1])
        + _line({"id": "p00063", "n_tokens": 4, "prompt": "x", "temperature": 1}),
        "prompts.jsonl:64: invalid prompt record",
    ),
    "zero-tokens": (
        b"".join(PROMPT_LINES[:-1]) + _line({"id": "p00063", "n_tokens": 0, "prompt": "x"}),
        "prompts.jsonl:64: invalid prompt record\n"
        "  n_tokens: Input should be greater than or equal to 1; found 0",
    ),
    "empty-prompt": (
        b"".join(PROMPT_LINES[:-1]) + _line({"id": "p00063", "n_tokens": 1, "prompt": ""}),
        "prompts.jsonl:64: invalid prompt record\n"
        "  prompt: String should have at least 1 character; found ''",
    ),
    "tokens-as-string": (
        b"".join(PROMPT_LINES[:-1]) + _line({"id": "p00063", "n_tokens": "4", "prompt": "x"}),
        "prompts.jsonl:64: invalid prompt record\n"
        "  n_tokens: Input should be a valid integer; found '4'",
    ),
    "not-an-object": (
        b"".join(PROMPT_LINES[:-1]) + b'["p00063"]\n',
        "prompts.jsonl:64: invalid prompt record\n  (record): Input should be a valid dictionary",
    ),
    "huge-integer": (
        b"".join(PROMPT_LINES[:-1])
        + b'{"id":"p00063","n_tokens":'
        + b"9" * 5000
        + b',"prompt":"x"}\n',
        "prompts.jsonl:64: invalid JSON",
    ),
    "deep-nesting": (b"[" * 100_000 + b"\n", "prompts.jsonl:1: invalid JSON"),
    # RFC 8785 holds integers up to 2**53 - 1 exactly, and no lone surrogate
    "tokens-beyond-2**53": (
        b"".join(PROMPT_LINES[:-1]) + _line({"id": "p00063", "n_tokens": 2**53, "prompt": "x"}),
        "prompts.jsonl:64: invalid prompt record\n"
        "  n_tokens: Input should be less than or equal to 9007199254740991; found "
        "9007199254740992",
    ),
    "lone-surrogate": (
        b"".join(PROMPT_LINES[:-1]) + b'{"id":"p00063","n_tokens":1,"prompt":"\\ud800"}\n',
        "prompts.jsonl:64: invalid prompt record\n  prompt: Input should be a valid string",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONTENT), ids=str)
def test_bad_content_with_a_remade_pin_exits_2(
    case: str, bundle: tuple[Path, Path], cli: CliRunner
) -> None:
    data, message = BAD_CONTENT[case]
    write_prompts(bundle, data)
    repin(cli, bundle)
    code, err = verify(cli, bundle)
    assert code == EXIT_INPUT, err
    assert message in err, err
    assert "internal error" not in err


def test_invalid_bundle_info_with_a_remade_pin_exits_2(
    bundle: tuple[Path, Path], cli: CliRunner
) -> None:
    info = bundle[0] / "bundle.json"
    info.write_bytes(info.read_bytes().replace(b'"format_version":1', b'"format_version":2'))
    repin(cli, bundle)
    code, err = verify(cli, bundle)
    assert code == EXIT_INPUT, err
    assert "format_version" in err


def test_bundle_info_beyond_2_53_with_a_remade_pin_exits_2(
    bundle: tuple[Path, Path], cli: CliRunner
) -> None:
    # bundle.json is RFC 8785, exact for integers up to 2**53 - 1: a larger one is no bundle.
    info = bundle[0] / "bundle.json"
    info.write_bytes(
        info.read_bytes().replace(
            b'"max_prompt_tokens":480', f'"max_prompt_tokens":{2**53}'.encode()
        )
    )
    repin(cli, bundle)
    code, err = verify(cli, bundle)
    assert code == EXIT_INPUT, err
    assert "max_prompt_tokens: Input should be less than or equal to 9007199254740991" in err


# --- bootstrap -------------------------------------------------------------------------------


def bootstrap(cli: CliRunner, config: Path, output: Path, *extra: str | Path) -> tuple[int, str]:
    result = cli(
        "prompts", "bootstrap", "--config", config, "--dataset-file", DATASET_SOURCE,
        "--dataset-sha256", DATASET_SHA256, "--n-prompts", "64", "--output-dir", output, *extra,
    )  # fmt: skip
    return result.code, result.text


def test_bootstrap_reproduces_the_committed_bundle(tmp_path: Path, cli: CliRunner) -> None:
    output = tmp_path / "rebuilt"
    code, text = bootstrap(cli, TINY_CONFIG, output)
    assert code == EXIT_OK, text
    for name in ("bundle.json", "prompts.jsonl"):
        assert (output / name).read_bytes() == (BUNDLE_DIR / name).read_bytes(), name
    pin = tmp_path / "pin.sha256"
    assert cli("hash", "--snapshot", output, "--output", pin).code == EXIT_OK
    assert pin.read_bytes() == BUNDLE_PIN.read_bytes()


def test_bootstrap_wrong_dataset_sha256_exits_1(tmp_path: Path, cli: CliRunner) -> None:
    output = tmp_path / "out"
    result = cli(
        "prompts", "bootstrap", "--config", TINY_CONFIG, "--dataset-file", DATASET_SOURCE,
        "--dataset-sha256", "0" * 64, "--n-prompts", "4", "--output-dir", output,
    )  # fmt: skip
    assert result.code == EXIT_VERIFICATION, result.text
    assert f"actual   {DATASET_SHA256}" in result.err
    assert not output.exists()


def test_bootstrap_tokenizer_that_differs_from_the_manifest_exits_1(
    tiny_workspace: TinyWorkspace, tmp_path: Path, cli: CliRunner
) -> None:
    config = tiny_workspace.snapshot / "tokenizer_config.json"
    changed = config.read_bytes().replace(b'"model_max_length": 512', b'"model_max_length": 513')
    config.unlink()
    config.write_bytes(changed)  # a regular file in place of the link: a locally edited cache
    output = tmp_path / "out"
    code, text = bootstrap(cli, tiny_workspace.config, output)
    assert code == EXIT_VERIFICATION, text
    assert "tokenizer files of" in text
    assert "tokenizer_config.json: manifest 2f998834" in text
    assert f"actual {sha256_hex(changed)}" in text
    assert not output.exists()


def test_bootstrap_tokenizer_absent_from_the_manifest_exits_1(
    tiny_workspace: TinyWorkspace, tmp_path: Path, cli: CliRunner
) -> None:
    (tiny_workspace.snapshot / "vocab.json").write_text("{}")
    code, text = bootstrap(cli, tiny_workspace.config, tmp_path / "out")
    assert code == EXIT_VERIFICATION, text
    assert "vocab.json: manifest (absent)" in text


def test_bootstrap_from_the_workspace_copy_matches_too(
    tiny_workspace: TinyWorkspace, tmp_path: Path, cli: CliRunner
) -> None:
    output = tmp_path / "out"
    code, text = bootstrap(cli, tiny_workspace.config, output)
    assert code == EXIT_OK, text
    assert (output / "prompts.jsonl").read_bytes() == PROMPTS


def test_bootstrap_refuses_to_overwrite(bundle: tuple[Path, Path], cli: CliRunner) -> None:
    before = (bundle[0] / "prompts.jsonl").read_bytes()
    code, text = bootstrap(cli, TINY_CONFIG, bundle[0])
    assert code == EXIT_INPUT, text
    assert "refusing to overwrite" in text
    assert (bundle[0] / "prompts.jsonl").read_bytes() == before


def test_bootstrap_needs_a_pinned_model(tmp_path: Path, cli: CliRunner) -> None:
    code, text = bootstrap(cli, REPO_ROOT / "configs" / "qwen3-8b.json", tmp_path / "out")
    assert code == EXIT_INPUT, text
    assert "model.revision: null" in text


def test_bootstrap_too_few_prompts_exits_2(tmp_path: Path, cli: CliRunner) -> None:
    output = tmp_path / "out"
    result = cli(
        "prompts", "bootstrap", "--config", TINY_CONFIG, "--dataset-file", DATASET_SOURCE,
        "--dataset-sha256", DATASET_SHA256, "--n-prompts", "65", "--output-dir", output,
    )  # fmt: skip
    assert result.code == EXIT_INPUT, result.text
    assert "only 64 prompts" in result.err
    assert not (output / "prompts.jsonl").exists()


def test_bootstrap_refuses_max_prompt_tokens_bundle_json_cannot_hold(
    tmp_path: Path, cli: CliRunner
) -> None:
    output = tmp_path / "out"
    result = cli(
        "prompts", "bootstrap", "--config", TINY_CONFIG, "--dataset-file", DATASET_SOURCE,
        "--dataset-sha256", DATASET_SHA256, "--n-prompts", "2", "--output-dir", output,
        "--max-prompt-tokens", str(2**53),
    )  # fmt: skip
    assert result.code == EXIT_INPUT, result.text
    assert f"--max-prompt-tokens {2**53}: choose 1..{2**53 - 1}" in result.err
    assert "internal error" not in result.err
    assert not output.exists()


@pytest.mark.parametrize(
    "line",
    [b'{"text": ' + b"1" * 5000 + b"}", b"[" * 100_000, b'{"text": 3}', b"not json"],
    ids=["huge-integer", "deep-nesting", "not-a-string", "not-json"],
)
def test_bootstrap_bad_dataset_line_exits_2(line: bytes, tmp_path: Path, cli: CliRunner) -> None:
    dataset = tmp_path / "data.jsonl"
    dataset.write_bytes(b'{"text": "fine"}\n' + line + b"\n")
    output = tmp_path / "out"
    result = cli(
        "prompts", "bootstrap", "--config", TINY_CONFIG, "--dataset-file", dataset,
        "--dataset-sha256", sha256_hex(dataset.read_bytes()), "--n-prompts", "2",
        "--output-dir", output,
    )  # fmt: skip
    assert result.code == EXIT_INPUT, result.text
    assert f"{dataset}:2: " in result.err
    assert not output.exists()
