"""Pins are written by a person's command only, and change one field and nothing else.

``replace_pin`` is checked on its own; ``lock-model`` against a real hub server (olah serving the
tiny model from a git repository, tests/hub_fixtures.py), against an address where nothing
listens, and against a scripted loopback server for the answers olah cannot give (listed above
its tests).
"""

from __future__ import annotations

import difflib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from detserve.errors import (
    EXIT_ENVIRONMENT,
    EXIT_INPUT,
    EXIT_OK,
    EXIT_VERIFICATION,
    ProfileError,
)
from detserve.pinfile import replace_pin
from detserve.profile import load_profile, parse_profile
from hub_fixtures import TinyHub

from .committed import REPO_ROOT, TINY_CONFIG, TINY_REVISION, CliRunner
from .hub_proxy import HubProxy, hub_proxy

NEW_SHA = "0123456789abcdef0123456789abcdef01234567"
TINY_TEXT = TINY_CONFIG.read_text(encoding="utf-8")
QWEN_TEXT = (REPO_ROOT / "configs" / "qwen3-8b.json").read_text(encoding="utf-8")
IMAGE = "127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "cd" * 32


def changed_lines(before: str, after: str) -> list[str]:
    """The ``-``/``+`` lines of a unified diff."""
    diff = difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
    return [line for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")]


# --- replace_pin -------------------------------------------------------------------------------


def test_replace_revision_changes_only_that_field() -> None:
    after = replace_pin(TINY_TEXT, "model", "revision", NEW_SHA)
    assert changed_lines(TINY_TEXT, after) == [
        f'-    "revision": "{TINY_REVISION}"',
        f'+    "revision": "{NEW_SHA}"',
    ]
    assert after == TINY_TEXT.replace(TINY_REVISION, NEW_SHA)
    assert parse_profile(after.encode(), source="t").model.revision == NEW_SHA


def test_replace_null_image_changes_only_that_field() -> None:
    after = replace_pin(TINY_TEXT, "runtime", "image", IMAGE)
    assert changed_lines(TINY_TEXT, after) == ['-    "image": null,', f'+    "image": "{IMAGE}",']
    # image_tag starts with the same letters and must be left alone
    assert '"image_tag": "127.0.0.1:5000/detserve/vllm-cpu:0.32.0"' in after


def test_replace_keeps_unusual_formatting() -> None:
    text = (
        '{"model":{"id":"a/b","ref":"main",  "revision"  :\r\n\tnull},'
        '"description":"say \\"revision\\": null here","runtime":{"image":null}}'
    )
    after = replace_pin(text, "model", "revision", NEW_SHA)
    assert after == text.replace("\tnull}", f'\t"{NEW_SHA}"}}', 1)
    assert json.loads(after)["description"] == 'say "revision": null here'


def test_replace_with_the_same_value_is_a_no_op() -> None:
    assert replace_pin(TINY_TEXT, "model", "revision", TINY_REVISION) == TINY_TEXT


def test_replace_escapes_the_value() -> None:
    after = replace_pin('{"model": {"revision": null}}', "model", "revision", 'a"b\\c')
    assert json.loads(after)["model"]["revision"] == 'a"b\\c'


@pytest.mark.parametrize(
    ("text", "section", "key", "message"),
    [
        pytest.param(TINY_TEXT, "model", "commit", "found 0", id="absent-key"),
        pytest.param(TINY_TEXT, "models", "revision", "no object 'models'", id="absent-section"),
        pytest.param(
            '{"model": "x", "runtime": {}}', "model", "revision", "no object", id="not-an-object"
        ),
        pytest.param('["model"]', "model", "revision", "no object", id="top-level-array"),
        pytest.param('{"model": {', "model", "revision", "not valid JSON", id="not-json"),
        pytest.param(
            '{"model": {"revision": null, "revision": null}}',
            "model",
            "revision",
            "duplicate key(s) revision",
            id="duplicate-key",
        ),
        pytest.param(
            '{"model": {"revision": null}, "model": {"revision": null}}',
            "model",
            "revision",
            "duplicate key(s) model",
            id="duplicate-section",
        ),
        pytest.param(
            '{"model": {"revision": 12}}', "model", "revision", "found 0", id="number-value"
        ),
        pytest.param(
            '{"model": {"revision": null, "x": {"revision": null}}}',
            "model",
            "revision",
            "found",
            id="same-key-nested",
        ),
        pytest.param(
            '{"model": {"revision": null}, "n": ' + "1" * 5000 + "}",
            "model",
            "revision",
            "not valid JSON",
            id="huge-integer",
        ),
    ],
)
def test_replace_refuses_ambiguous_or_absent(
    text: str, section: str, key: str, message: str
) -> None:
    if message == "found":
        # The nested key is another field: exactly one candidate gives the expected document.
        after = replace_pin(text, section, key, NEW_SHA)
        assert json.loads(after)["model"]["x"]["revision"] is None
        return
    with pytest.raises(ProfileError) as raised:
        replace_pin(text, section, key, NEW_SHA)
    assert message in raised.value.diagnostics()


def test_profile_with_duplicate_keys_is_refused(tmp_path: Path, cli: CliRunner) -> None:
    # The first value is what a reviewer reads, the last what a JSON parser uses.
    text = TINY_TEXT.replace(
        f'"revision": "{TINY_REVISION}"', f'"revision": "{NEW_SHA}", "revision": "{TINY_REVISION}"'
    )
    path = tmp_path / "dup.json"
    path.write_text(text, encoding="utf-8")
    result = cli("config", "validate", "--config", path, "--allow-unpinned")
    assert result.code == EXIT_INPUT, result.text
    assert "revision: duplicate key" in result.err


# --- lock-model against a real hub: olah (tests/hub_fixtures.py) ----------------------------------


@pytest.fixture
def proxy(tiny_hub: TinyHub, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubProxy]:
    """A recording proxy in front of olah: what lock-model asked, with which headers."""
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    with hub_proxy(tiny_hub.url) as relay:
        yield relay


def _headers(proxy: HubProxy) -> dict[str, str]:
    return {name.lower(): value for name, value in proxy.requests[0].headers.items()}


def test_unreachable_hub_exits_3_naming_the_address(tiny_profile: Path, cli: CliRunner) -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    result = cli("lock-model", "--config", tiny_profile, "--endpoint", "http://127.0.0.1:9")
    assert result.code == EXIT_ENVIRONMENT, result.text
    assert "cannot reach the Hugging Face hub at http://127.0.0.1:9" in result.err
    assert tiny_profile.read_text(encoding="utf-8") == TINY_TEXT


def test_lock_model_resolves_the_commit(tiny_hub: TinyHub, proxy: HubProxy, cli: CliRunner) -> None:
    before = tiny_hub.config.read_text(encoding="utf-8")
    result = cli("lock-model", "--config", tiny_hub.config, "--endpoint", proxy.url)
    assert result.code == EXIT_OK, result.text
    assert result.out.strip() == f"{tiny_hub.repo_id}@main -> {tiny_hub.commit}"
    assert proxy.paths() == [f"/api/models/{tiny_hub.repo_id}/revision/main"]
    assert "authorization" not in _headers(proxy)
    assert tiny_hub.config.read_text(encoding="utf-8") == before


def test_lock_model_sends_the_token_from_the_environment(
    tiny_hub: TinyHub, proxy: HubProxy, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_testtoken")
    result = cli("lock-model", "--config", tiny_hub.config, "--endpoint", proxy.url)
    assert result.code == EXIT_OK, result.text
    assert _headers(proxy)["authorization"] == "Bearer hf_testtoken"
    assert "hf_testtoken" not in result.text


def test_lock_model_a_moved_ref_exits_1_without_write(tiny_hub: TinyHub, cli: CliRunner) -> None:
    before = tiny_hub.config.read_text(encoding="utf-8")
    newer = tiny_hub.add_commit({"config.json": b"{}\n"})
    result = cli("lock-model", "--config", tiny_hub.config, "--endpoint", tiny_hub.url)
    assert result.code == EXIT_VERIFICATION, result.text
    assert f"pinned:   {tiny_hub.commit}" in result.err
    assert f"resolved: {newer}" in result.err
    assert tiny_hub.config.read_text(encoding="utf-8") == before


def test_lock_model_write_changes_only_the_revision(tiny_hub: TinyHub, cli: CliRunner) -> None:
    before = tiny_hub.config.read_text(encoding="utf-8")
    newer = tiny_hub.add_commit({"config.json": b"{}\n"})
    result = cli("lock-model", "--config", tiny_hub.config, "--endpoint", tiny_hub.url, "--write")
    assert result.code == EXIT_OK, result.text
    after = tiny_hub.config.read_text(encoding="utf-8")
    assert changed_lines(before, after) == [
        f'-    "revision": "{tiny_hub.commit}"',
        f'+    "revision": "{newer}"',
    ]
    assert after == before.replace(tiny_hub.commit, newer)
    assert f"wrote model.revision to {tiny_hub.config}" in result.err


def test_lock_model_write_output_leaves_the_original(
    tiny_hub: TinyHub, tmp_path: Path, cli: CliRunner
) -> None:
    before = tiny_hub.config.read_text(encoding="utf-8")
    newer = tiny_hub.add_commit({"config.json": b"{}\n"})
    output = tmp_path / "locked" / "tiny-cpu.locked.json"
    result = cli(
        "lock-model", "--config", tiny_hub.config, "--endpoint", tiny_hub.url,
        "--write", "--output", output, "--json",
    )  # fmt: skip
    assert result.code == EXIT_OK, result.text
    assert tiny_hub.config.read_text(encoding="utf-8") == before
    assert output.read_text(encoding="utf-8") == before.replace(tiny_hub.commit, newer)
    report = json.loads(result.out)
    assert report["pinned"] == newer
    assert report["previous"] == tiny_hub.commit
    assert report["changed"] is True
    assert report["written"] == str(output)
    assert report["resolved_by"] == tiny_hub.url


def test_lock_model_output_exists_refused_before_asking_the_hub(
    tiny_hub: TinyHub, proxy: HubProxy, tmp_path: Path, cli: CliRunner
) -> None:
    newer = tiny_hub.add_commit({"config.json": b"{}\n"})
    output = tmp_path / "exists.json"
    output.write_text("keep\n")
    result = cli(
        "lock-model", "--config", tiny_hub.config, "--endpoint", proxy.url,
        "--write", "--output", output,
    )  # fmt: skip
    assert result.code == EXIT_INPUT, result.text
    assert output.read_text() == "keep\n"
    assert proxy.requests == []
    forced = cli(
        "lock-model", "--config", tiny_hub.config, "--endpoint", proxy.url,
        "--write", "--output", output, "--force",
    )  # fmt: skip
    assert forced.code == EXIT_OK, forced.text
    assert json.loads(output.read_text())["model"]["revision"] == newer


def test_lock_model_output_without_write_is_a_usage_error(
    tiny_hub: TinyHub, proxy: HubProxy, tmp_path: Path, cli: CliRunner
) -> None:
    output = tmp_path / "o.json"
    result = cli(
        "lock-model", "--config", tiny_hub.config, "--endpoint", proxy.url, "--output", output
    )
    assert result.code == EXIT_INPUT
    assert "--profile-output goes with --write" in result.err
    assert proxy.requests == []
    assert not output.exists()


def test_lock_model_fills_an_unpinned_profile(
    make_tiny_hub: Callable[..., TinyHub], tmp_path: Path, cli: CliRunner
) -> None:
    hub = make_tiny_hub(repo_id=f"Qwen/Qwen3-8B-{tmp_path.name}")
    text = QWEN_TEXT.replace('"Qwen/Qwen3-8B"', f'"{hub.repo_id}"')
    profile = tmp_path / "qwen3-8b.json"
    profile.write_text(text, encoding="utf-8")
    dry = cli("lock-model", "--config", profile, "--endpoint", hub.url)
    assert dry.code == EXIT_OK, dry.text
    assert "model.revision is unpinned; re-run with --write" in dry.err
    assert profile.read_text(encoding="utf-8") == text
    written = cli("lock-model", "--config", profile, "--endpoint", hub.url, "--write")
    assert written.code == EXIT_OK, written.text
    after = profile.read_text(encoding="utf-8")
    assert changed_lines(text, after) == [
        '-    "revision": null',
        f'+    "revision": "{hub.commit}"',
    ]
    assert load_profile(profile).missing_pins() == ["runtime.image"]


def test_lock_model_an_absent_repository_is_bad_input(
    tiny_hub: TinyHub, tmp_path: Path, cli: CliRunner
) -> None:
    profile = tmp_path / "absent.json"
    before = tiny_hub.config.read_text(encoding="utf-8")
    profile.write_text(before.replace(tiny_hub.repo_id, "nobody/absent"), encoding="utf-8")
    result = cli("lock-model", "--config", profile, "--endpoint", tiny_hub.url, "--write")
    assert result.code == EXIT_INPUT, result.text
    assert "not found" in result.err
    assert tiny_hub.url in result.err


def test_lock_model_a_model_id_huggingface_hub_refuses_is_bad_input(
    tiny_hub: TinyHub, proxy: HubProxy, tmp_path: Path, cli: CliRunner
) -> None:
    profile = tmp_path / "p.json"
    profile.write_text(TINY_TEXT.replace("detserve/tiny-llama", "detserve/tiny--llama"))
    result = cli("lock-model", "--config", profile, "--endpoint", proxy.url)
    assert result.code == EXIT_INPUT, result.text
    assert "refused by huggingface_hub" in result.err
    assert proxy.requests == []


# --- lock-model against a home-made hub: only the answers olah cannot give -----------------------
#
# olah answers what the hub answers for what a git repository holds. It cannot answer: a ref
# with a slash (``refs/pr/1``: its router refuses the quoted slash), an unknown revision as the
# hub does (404 RevisionNotFound; olah says RepoNotFound), a 500 or a bare 401, an answer without
# a commit or with a malformed one, or a body that is not the hub's (a captive portal's HTML).
# Those are scripted here.


@dataclass
class FakeHub:
    """A loopback HTTP server answering ``/api/models/{id}/revision/{ref}`` as scripted."""

    url: str
    answers: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def answer(self, path: str, status: int, body: object, headers: dict[str, str] | None = None):
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.answers[path] = (
            status,
            {"Content-Type": "application/json", **(headers or {})},
            payload,
        )

    def model(self, repo_id: str, ref: str, sha: str | None) -> None:
        self.answer(
            f"/api/models/{repo_id}/revision/{ref}",
            200,
            {"id": repo_id, "sha": sha, "private": False, "siblings": [], "tags": []},
        )


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    hub = FakeHub(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hub.requests.append((self.path, dict(self.headers.items())))
            path = self.path.split("?", 1)[0]
            status, headers, body = hub.answers.get(
                path,
                (404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "not found"}, b"{}"),
            )
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def tiny_profile(tmp_path: Path) -> Path:
    path = tmp_path / "tiny-cpu.json"
    path.write_text(TINY_TEXT, encoding="utf-8")
    return path


def test_lock_model_quotes_the_ref(fake_hub: FakeHub, tmp_path: Path, cli: CliRunner) -> None:
    profile = tmp_path / "p.json"
    profile.write_text(TINY_TEXT.replace('"ref": "main"', '"ref": "refs/pr/1"'), encoding="utf-8")
    fake_hub.model("detserve/tiny-llama", "refs%2Fpr%2F1", TINY_REVISION)
    result = cli("lock-model", "--config", profile, "--endpoint", fake_hub.url)
    assert result.code == EXIT_OK, result.text
    assert fake_hub.requests[0][0] == "/api/models/detserve/tiny-llama/revision/refs%2Fpr%2F1"


@pytest.mark.parametrize(
    ("status", "headers", "code", "message"),
    [
        pytest.param(
            404, {"X-Error-Code": "RevisionNotFound"}, EXIT_INPUT, "not found", id="no-revision"
        ),
        pytest.param(404, {"X-Error-Code": "RepoNotFound"}, EXIT_INPUT, "not found", id="no-repo"),
        pytest.param(500, {}, EXIT_ENVIRONMENT, "the hub refused", id="server-error"),
        pytest.param(401, {}, EXIT_ENVIRONMENT, "the hub refused", id="unauthorized"),
    ],
)
def test_lock_model_hub_errors(
    status: int,
    headers: dict[str, str],
    code: int,
    message: str,
    fake_hub: FakeHub,
    tiny_profile: Path,
    cli: CliRunner,
) -> None:
    fake_hub.answer(
        "/api/models/detserve/tiny-llama/revision/main", status, {"error": "nope"}, headers
    )
    result = cli("lock-model", "--config", tiny_profile, "--endpoint", fake_hub.url, "--write")
    assert result.code == code, result.text
    assert message in result.err
    assert fake_hub.url in result.err
    assert tiny_profile.read_text(encoding="utf-8") == TINY_TEXT


@pytest.mark.parametrize(
    "sha",
    [None, "main", TINY_REVISION[:7], TINY_REVISION.upper()],
    ids=["no-sha", "branch", "short", "upper"],
)
def test_lock_model_refuses_an_answer_without_a_commit(
    sha: str | None, fake_hub: FakeHub, tiny_profile: Path, cli: CliRunner
) -> None:
    fake_hub.model("detserve/tiny-llama", "main", sha)
    result = cli("lock-model", "--config", tiny_profile, "--endpoint", fake_hub.url, "--write")
    assert result.code == EXIT_ENVIRONMENT, result.text
    assert "answered no commit" in result.err
    assert tiny_profile.read_text(encoding="utf-8") == TINY_TEXT


@pytest.mark.parametrize(
    "body",
    [b"<html>a captive portal</html>", b'{"sha": "' + NEW_SHA.encode() + b'"}', b"[1, 2]"],
    ids=["html", "no-id", "a-list"],
)
def test_lock_model_refuses_an_answer_that_is_not_the_hubs(
    body: bytes, fake_hub: FakeHub, tiny_profile: Path, cli: CliRunner
) -> None:
    fake_hub.answer("/api/models/detserve/tiny-llama/revision/main", 200, body)
    result = cli("lock-model", "--config", tiny_profile, "--endpoint", fake_hub.url, "--write")
    assert result.code == EXIT_ENVIRONMENT, result.text
    assert "internal error" not in result.err
    assert f"{fake_hub.url}: the answer for detserve/tiny-llama@main is not what the hub sends" in (
        result.err
    )
    assert tiny_profile.read_text(encoding="utf-8") == TINY_TEXT
