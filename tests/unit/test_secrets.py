"""The secrets file: strict ``.env`` parsing whose errors name the line but never show a value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detserve.errors import EXIT_INPUT, InputError
from detserve.runtime.secrets import SecretEnvironment, load_secrets_file, parse_secrets

from .committed import CliRunner
from .conftest import TinyWorkspace

SECRET = "hf_s3cr3t-value-never-shown"


def test_comments_blank_lines_and_quotes() -> None:
    text = (
        "# credentials for the container\n"
        "\n"
        f"HF_TOKEN={SECRET}\n"
        "   # an indented comment\n"
        "REGISTRY_PASSWORD='with spaces and $HOME'\n"
        'OTHER_API_KEY="double quoted # not a comment"\n'
    )
    secrets = parse_secrets(text, source="s.env")
    assert dict(secrets) == {
        "HF_TOKEN": SECRET,
        "OTHER_API_KEY": "double quoted # not a comment",
        "REGISTRY_PASSWORD": "with spaces and $HOME",  # no expansion
    }
    assert secrets.names == ("HF_TOKEN", "OTHER_API_KEY", "REGISTRY_PASSWORD")
    assert SECRET not in repr(secrets)
    assert SECRET not in str(secrets)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (f"export HF_TOKEN={SECRET}", "expected KEY=VALUE"),
        (f"HF_TOKEN = {SECRET}", "expected KEY=VALUE"),
        (f"{SECRET}", "expected KEY=VALUE"),
        (f"HF_TOKEN='{SECRET}", "unbalanced quotes"),
        (f"HF_TOKEN={SECRET} ", "white space around an unquoted value"),
        (f"HF_TOKEN={SECRET} # mine", "ambiguous"),
        ("HF_TOKEN=", "empty value"),
        (f"VLLM_ATTENTION_BACKEND={SECRET}", "does not look like a secret"),
        (f"HF_HOME_TOKEN={SECRET}\nHF_HOME_TOKEN={SECRET}", "set twice"),
        (f"HF_HOME={SECRET}", "set by detserve"),
    ],
)
def test_bad_lines_name_the_line_never_the_value(line: str, message: str) -> None:
    text = f"# header\n\n{line}\n"
    with pytest.raises(InputError, match=message) as raised:
        parse_secrets(text, source="prod.env")
    shown = raised.value.diagnostics()
    assert "prod.env:3" in shown or "prod.env:4" in shown
    assert SECRET not in shown
    assert raised.value.exit_code == EXIT_INPUT


def test_non_utf8_file_is_refused_without_showing_content(tmp_path: Path) -> None:
    path = tmp_path / "s.env"
    path.write_bytes(b"HF_TOKEN=\xff\xfesecret\n")
    with pytest.raises(InputError, match="not UTF-8") as raised:
        load_secrets_file(path)
    assert raised.value.__cause__ is None
    assert "secret" not in raised.value.diagnostics().replace("secrets file", "")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read secrets file"):
        load_secrets_file(tmp_path / "absent.env")


def test_secret_environment_checks_names_and_values() -> None:
    assert len(SecretEnvironment({"A_TOKEN": "x"})) == 1
    with pytest.raises(InputError):
        SecretEnvironment({"A_TOKEN": ""})


def test_start_refuses_a_bad_secrets_file_before_the_engine(
    tiny_workspace: TinyWorkspace, cli: CliRunner, tmp_path: Path
) -> None:
    document = json.loads(tiny_workspace.config.read_text(encoding="utf-8"))
    document["runtime"]["image"] = "127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "0" * 64
    tiny_workspace.config.write_text(json.dumps(document), encoding="utf-8")
    secrets = tmp_path / "bad.env"
    secrets.write_text(f"HF_TOKEN={SECRET}\nthis line holds {SECRET}\n", encoding="utf-8")
    ran = cli("start", "--config", tiny_workspace.config, "--secrets-file", secrets)
    assert ran.code == EXIT_INPUT
    assert f"{secrets}:2: expected KEY=VALUE" in ran.err
    assert SECRET not in ran.text
