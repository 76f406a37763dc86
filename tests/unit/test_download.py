"""``detserve download`` against a real hub server: olah, offline, on loopback.

The tiny model is a deterministic git repository on olah (tests/hub_fixtures.py), and a copy of
its profile is pinned to that repository's commit. Through it, for real: ``lock-model`` resolves
``main``, and reports both commits once a new one moves it; ``download`` fetches exactly the
pinned commit, only what vLLM loads, and verifies it; a file changed on the server after the
manifest was committed fails the download and ``run``; an unreachable hub is exit 3.

A proxy (hub_proxy.py) stands between detserve and olah where a test must see what was asked
(the revision, the token), stall a transfer (to interrupt it), or make the hub lie (another
commit, a path no snapshot may hold): olah does none of that by itself.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import errors as hub_errors

from detserve import api
from detserve.errors import (
    EXIT_ENVIRONMENT,
    EXIT_INPUT,
    EXIT_OK,
    EXIT_VERIFICATION,
    HubError,
    SnapshotMismatch,
)
from detserve.hub import hub_call
from detserve.manifest import SnapshotManifest
from detserve.transfer import TRANSFER_CHUNK_BYTES
from hub_fixtures import TINY_HUB_COMMIT, TinyHub, olah_hub

from .committed import TINY_MANIFEST, TINY_SNAPSHOT, CliRunner, sha256_hex
from .hub_proxy import HubProxy, hub_proxy

TINY_NAMES = sorted(p.name for p in TINY_SNAPSHOT.iterdir())
IMAGE = "127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "ab" * 32


@pytest.fixture(autouse=True)
def _no_hub_settings_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def proxy(tiny_hub: TinyHub) -> Iterator[HubProxy]:
    with hub_proxy(tiny_hub.url) as relay:
        yield relay


def download(cli: CliRunner, hub: TinyHub, endpoint: str | None = None, *extra: str | Path):
    return cli("download", "--config", hub.config, "--endpoint", endpoint or hub.url, *extra)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def snapshot_files(hub: TinyHub) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(hub.snapshot.iterdir())}


# --- lock-model through the hub -------------------------------------------------------------------


def test_lock_model_resolves_main_to_the_git_commit(tiny_hub: TinyHub, cli: CliRunner) -> None:
    result = cli("lock-model", "--config", tiny_hub.config, "--endpoint", tiny_hub.url)
    assert result.code == EXIT_OK, result.text
    assert result.out.strip() == f"{tiny_hub.repo_id}@main -> {TINY_HUB_COMMIT}"


def test_lock_model_without_endpoint_asks_and_names_the_hub_of_hf_endpoint(
    tiny_hub: TinyHub, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mirror set by HF_ENDPOINT (read by huggingface_hub at import) is the hub asked, and the
    one the pin is reported as resolved by: never huggingface.co (docs/serve-your-model.md)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", tiny_hub.url)
    result = cli("lock-model", "--config", tiny_hub.config, "--write")
    assert result.code == EXIT_OK, result.text
    assert f"trusting {TINY_HUB_COMMIT} (resolved by {tiny_hub.url})" in result.err
    assert "huggingface.co" not in result.text


def test_a_new_commit_moves_main_and_lock_model_reports_both(
    tiny_hub: TinyHub, cli: CliRunner
) -> None:
    before = tiny_hub.config.read_bytes()
    newer = tiny_hub.add_commit({"config.json": b'{"architectures": ["Other"]}\n'})
    assert newer != tiny_hub.commit
    result = cli("lock-model", "--config", tiny_hub.config, "--endpoint", tiny_hub.url)
    assert result.code == EXIT_VERIFICATION, result.text
    assert f"pinned:   {tiny_hub.commit}" in result.err
    assert f"resolved: {newer}" in result.err
    assert tiny_hub.config.read_bytes() == before


# --- download: the pinned commit, what vLLM loads, verified ---------------------------------------


def test_download_fetches_the_pinned_commit_into_the_layout_run_mounts(
    tiny_hub: TinyHub, cli: CliRunner
) -> None:
    manifest = tiny_hub.manifest.read_bytes()
    result = download(cli, tiny_hub)
    assert result.code == EXIT_OK, result.text
    assert f"OK: {len(TINY_NAMES)} files" in result.out
    # exactly the files vLLM loads: README.md and .gitattributes are on the hub, not here
    assert sorted(names(tiny_hub.snapshot)) == TINY_NAMES
    assert "left out: .gitattributes README.md" in result.err
    for name in TINY_NAMES:
        entry = tiny_hub.snapshot / name
        assert entry.is_symlink()
        assert entry.resolve().parent == tiny_hub.model_dir / "blobs"
        assert entry.read_bytes() == (TINY_SNAPSHOT / name).read_bytes()
    assert names(tiny_hub.model_dir / "snapshots") == [tiny_hub.commit]
    assert not (tiny_hub.model_dir / "refs").exists()  # asked by commit: no branch recorded
    assert tiny_hub.manifest.read_bytes() == manifest
    # and the snapshot is what `verify` and `run` read through the profile
    assert cli("verify", "--config", tiny_hub.config).code == EXIT_OK


def test_download_fetches_exactly_the_pinned_commit_not_mains_newer_files(
    tiny_hub: TinyHub, proxy: HubProxy, cli: CliRunner
) -> None:
    newer = tiny_hub.add_commit(
        {
            "config.json": b'{"architectures": ["Other"]}\n',
            "model-extra.safetensors": b"weights of another commit",
        }
    )
    result = download(cli, tiny_hub, proxy.url, "--json")
    assert result.code == EXIT_OK, result.text
    report = json.loads(result.out)
    assert report["revision"] == tiny_hub.commit
    assert report["trusted"] is True
    assert snapshot_files(tiny_hub)["config.json"] == (TINY_SNAPSHOT / "config.json").read_bytes()
    assert names(tiny_hub.model_dir / "snapshots") == [tiny_hub.commit]
    asked = proxy.paths()
    assert asked, "nothing went through the proxy"
    assert not [path for path in asked if newer in path or "/main" in path]
    files = [path for path in asked if "/resolve/" in path]
    assert sorted(p.rsplit("/", 1)[1] for p in proxy.paths("GET") if "/resolve/" in p) == TINY_NAMES
    assert all(f"/resolve/{tiny_hub.commit}/" in path for path in files)


def test_a_second_download_fetches_nothing_and_verifies(
    tiny_hub: TinyHub, proxy: HubProxy, cli: CliRunner
) -> None:
    assert download(cli, tiny_hub, proxy.url).code == EXIT_OK
    proxy.requests.clear()
    again = download(cli, tiny_hub, proxy.url)
    assert again.code == EXIT_OK, again.text
    assert f"nothing to fetch: all {len(TINY_NAMES)} files are in" in again.out
    assert "OK:" in again.out
    assert not [p for p in proxy.paths() if "/resolve/" in p]  # the listing only


def test_a_file_changed_on_the_server_fails_the_download_and_run_refuses(
    tiny_hub: TinyHub, cli: CliRunner
) -> None:
    """The manifest was committed from the genuine files; then the server's storage of the
    weights changed (an LFS object: no git hash covers it). Same commit, other bytes."""
    tiny_hub.repo.tamper_lfs("model.safetensors", tiny_hub.commit)
    result = download(cli, tiny_hub)
    assert result.code == EXIT_VERIFICATION, result.text
    lines = [line for line in result.err.splitlines() if line.strip().startswith("changed:")]
    assert lines == [
        f"  changed: ./model.safetensors expected "
        f"{sha256_hex((TINY_SNAPSHOT / 'model.safetensors').read_bytes())} actual "
        f"{sha256_hex((tiny_hub.snapshot / 'model.safetensors').read_bytes())}"
    ]
    assert "do not serve them" in result.err
    assert tiny_hub.manifest.read_bytes() == TINY_MANIFEST.read_bytes()  # never re-made
    # `run` verifies before anything starts (with --hash; without it, the wait verifies and
    # removes the container: tests/integration/test_runtime.py::
    # test_a_tampered_snapshot_fails_the_wait_and_removes_the_container, on the real engine).
    document = tiny_hub.profile()
    document["runtime"]["image"] = IMAGE  # type: ignore[index]
    tiny_hub.write_profile(document)

    class NoEngine:
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"the engine was asked for {name} before the snapshot verified")

    with pytest.raises(SnapshotMismatch) as refused:
        api.run(tiny_hub.config, hash_first=True, engine=NoEngine())  # type: ignore[arg-type]
    assert "changed: ./model.safetensors" in refused.value.diagnostics()


def test_without_a_manifest_nothing_is_trusted_and_the_next_command_is_printed(
    tiny_hub: TinyHub, cli: CliRunner
) -> None:
    tiny_hub.manifest.unlink()
    result = download(cli, tiny_hub)
    assert result.code == EXIT_OK, result.text
    assert "NOT TRUSTED" in result.out
    assert "nothing downloaded is trusted yet" in result.out
    command = f"detserve hash --config {tiny_hub.config} --manifest-output {tiny_hub.manifest}"
    assert f"  {command}\n" in result.out
    assert list(tiny_hub.manifest.parent.iterdir()) == []  # no manifest was made
    # the printed command is the next step, as printed
    made = cli(*command.split()[1:])
    assert made.code == EXIT_OK, made.text
    assert tiny_hub.manifest.read_bytes() == TINY_MANIFEST.read_bytes()
    assert cli("verify", "--config", tiny_hub.config).code == EXIT_OK


def test_json_without_a_manifest(tiny_hub: TinyHub, cli: CliRunner) -> None:
    tiny_hub.manifest.unlink()
    result = download(cli, tiny_hub, None, "--json")
    assert result.code == EXIT_OK, result.text
    report = json.loads(result.out)
    assert report["trusted"] is False
    assert report["verified"] is None
    assert report["next"].startswith("detserve hash --config ")
    assert [f["path"] for f in report["files"]] == TINY_NAMES
    assert report["skipped"] == [".gitattributes", "README.md"]
    assert report["fetched_bytes"] == sum((TINY_SNAPSHOT / n).stat().st_size for n in TINY_NAMES)


def test_huggingface_hub_reads_small_pieces_while_downloading(tiny_hub: TinyHub) -> None:
    """Memory is bounded by the files fetched at once, not their sizes: huggingface_hub's 10 MiB
    read per transfer becomes 1 MiB while a download runs, and is given back after. (The peak
    memory itself is measured by benchmarks/bench_download.py.)"""
    from huggingface_hub import constants

    before = constants.DOWNLOAD_CHUNK_SIZE
    seen: list[int] = []

    class Observer:
        def planned(self, plan: object) -> None:
            pass

        def fetched(self, count: int) -> None:
            seen.append(constants.DOWNLOAD_CHUNK_SIZE)

        def verifying(self, total: int) -> None:
            pass

        def verified(self, count: int) -> None:
            pass

    api.download_snapshot(tiny_hub.config, endpoint=tiny_hub.url, observer=Observer())
    assert seen
    assert set(seen) == {TRANSFER_CHUNK_BYTES}
    assert before == constants.DOWNLOAD_CHUNK_SIZE


# --- what is fetched: the patterns ----------------------------------------------------------------


def test_include_replaces_the_defaults_and_verification_names_what_is_missing(
    tiny_hub: TinyHub, cli: CliRunner
) -> None:
    result = download(cli, tiny_hub, None, "--include", "config.json", "--include", "*.md")
    assert result.code == EXIT_VERIFICATION, result.text
    assert sorted(names(tiny_hub.snapshot)) == ["README.md", "config.json"]
    assert "include: config.json *.md" in result.err
    for name in TINY_NAMES:
        if name != "config.json":
            assert f"missing: ./{name}" in result.err
    assert "extra: ./README.md" in result.err


def test_dry_run_lists_and_fetches_nothing(
    tiny_hub: TinyHub, proxy: HubProxy, cli: CliRunner
) -> None:
    result = download(cli, tiny_hub, proxy.url, "--dry-run")
    assert result.code == EXIT_OK, result.text
    listed = [line.split() for line in result.out.splitlines()]
    assert [(state, name) for state, _, name in listed] == [("fetch", n) for n in TINY_NAMES]
    assert not tiny_hub.snapshot.exists()
    assert not [p for p in proxy.paths() if "/resolve/" in p]


@pytest.mark.parametrize("pattern", ["", " ", "a\nb"], ids=["empty", "blank", "line-break"])
def test_a_bad_pattern_is_bad_input_before_the_hub_is_asked(
    tiny_hub: TinyHub, proxy: HubProxy, cli: CliRunner, pattern: str
) -> None:
    result = download(cli, tiny_hub, proxy.url, "--include", pattern)
    assert result.code == EXIT_INPUT, result.text
    assert proxy.requests == []


# --- bad input and the environment ----------------------------------------------------------------


def test_an_unpinned_revision_is_bad_input_before_the_hub_is_asked(
    tiny_hub: TinyHub, proxy: HubProxy, cli: CliRunner
) -> None:
    document = tiny_hub.profile()
    document["model"]["revision"] = None  # type: ignore[index]
    tiny_hub.write_profile(document)
    result = download(cli, tiny_hub, proxy.url)
    assert result.code == EXIT_INPUT, result.text
    assert "model.revision" in result.err
    assert "lock-model" in result.err
    assert proxy.requests == []


def test_an_unreachable_hub_is_exit_3(tiny_hub: TinyHub, cli: CliRunner, tmp_path: Path) -> None:
    # A hub that was there and is gone: its port now refuses connections.
    with olah_hub.OlahHub(tmp_path / "gone") as gone:
        url = gone.url
    for command in ("download", "lock-model"):
        result = cli(command, "--config", tiny_hub.config, "--endpoint", url)
        assert result.code == EXIT_ENVIRONMENT, result.text
        assert f"cannot reach the Hugging Face hub at {url}" in result.err
    assert not tiny_hub.hf_home.exists()


def test_a_hub_gone_after_its_listing_is_exit_3(
    tiny_hub: TinyHub, proxy: HubProxy, cli: CliRunner
) -> None:
    proxy.drops.append("/resolve/")
    result = download(cli, tiny_hub, proxy.url)
    assert result.code == EXIT_ENVIRONMENT, result.text
    assert f"cannot reach the Hugging Face hub at {proxy.url}" in result.err
    assert not (tiny_hub.snapshot / "model.safetensors").exists()


def test_a_file_the_hub_could_not_be_asked_about_is_exit_3_not_a_missing_file() -> None:
    # huggingface_hub raises LocalEntryNotFoundError (an EntryNotFoundError: "not found", exit 2)
    # when the hub did not answer about a file (a refused connection, a timeout) and no copy is
    # cached: what failed is the hub, exit 3.
    cause = ConnectionRefusedError("connection refused")
    with pytest.raises(HubError) as raised, hub_call("http://127.0.0.1:9", "a/b@c"):
        raise hub_errors.LocalEntryNotFoundError("cannot find the requested files") from cause
    assert raised.value.exit_code == EXIT_ENVIRONMENT
    assert "cannot reach the Hugging Face hub at http://127.0.0.1:9" in raised.value.message
    assert "connection refused" in raised.value.message


@pytest.mark.parametrize("endpoint", ["ftp://127.0.0.1:9", "127.0.0.1:9", "http://"])
def test_an_endpoint_that_is_not_http_is_bad_input(
    tiny_hub: TinyHub, cli: CliRunner, endpoint: str
) -> None:
    result = download(cli, tiny_hub, endpoint)
    assert result.code == EXIT_INPUT, result.text
    assert "not a hub address" in result.err


def test_too_little_disk_space_is_exit_3_naming_both_numbers(
    make_tiny_hub, proxy: HubProxy, cli: CliRunner
) -> None:
    huge = 10**15  # a petabyte: no test machine has it free
    hub = make_tiny_hub(files={"config.json": b"{}\n"})
    (hub.repo.path / "model.safetensors").write_bytes(olah_hub.lfs_pointer("ab" * 32, huge))
    hub.repo.commit({})
    document = hub.profile()
    document["model"]["revision"] = hub.repo.head()  # type: ignore[index]
    hub.write_profile(document)
    with hub_proxy(hub.url) as relay:
        result = cli("download", "--config", hub.config, "--endpoint", relay.url)
        asked = relay.paths()
    assert result.code == EXIT_ENVIRONMENT, result.text
    assert f"{huge + 3} bytes to download" in result.err
    assert "bytes free on the file system of" in result.err
    assert not [p for p in asked if "/resolve/" in p]  # nothing was fetched


# --- the token: from --secrets-file only ----------------------------------------------------------


def _authorizations(proxy: HubProxy) -> set[str | None]:
    return {
        {k.lower(): v for k, v in r.headers.items()}.get("authorization") for r in proxy.requests
    }


def test_no_token_is_sent_without_a_secrets_file_even_with_hf_token_set(
    tiny_hub: TinyHub, proxy: HubProxy, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_from_the_environment")
    result = download(cli, tiny_hub, proxy.url)
    assert result.code == EXIT_OK, result.text
    assert proxy.requests
    assert _authorizations(proxy) == {None}


def test_the_token_of_the_secrets_file_is_sent_and_never_shown(
    tiny_hub: TinyHub, proxy: HubProxy, cli: CliRunner, tmp_path: Path
) -> None:
    secrets = tmp_path / "hub.env"
    secrets.write_text("HF_TOKEN=hf_secret_of_the_file\n")
    for extra in ((), ("--json",)):
        proxy.requests.clear()
        result = download(cli, tiny_hub, proxy.url, "--secrets-file", secrets, *extra)
        assert result.code == EXIT_OK, result.text
        assert _authorizations(proxy) == {"Bearer hf_secret_of_the_file"}
        assert "hf_secret_of_the_file" not in result.text


def test_a_secrets_file_without_hf_token_is_bad_input(
    tiny_hub: TinyHub, proxy: HubProxy, cli: CliRunner, tmp_path: Path
) -> None:
    secrets = tmp_path / "hub.env"
    secrets.write_text("OTHER_TOKEN=not-for-the-hub\n")
    result = download(cli, tiny_hub, proxy.url, "--secrets-file", secrets)
    assert result.code == EXIT_INPUT, result.text
    assert "has no HF_TOKEN" in result.err
    assert "OTHER_TOKEN" in result.err
    assert "not-for-the-hub" not in result.text
    assert proxy.requests == []


# --- a hub that lies (through the proxy) ----------------------------------------------------------


def test_a_hub_that_answers_another_commit_for_the_pinned_one_is_refused(
    tiny_hub: TinyHub, proxy: HubProxy, cli: CliRunner
) -> None:
    other = "1" * 40
    proxy.body_rewrites.append(
        (
            f"/revision/{tiny_hub.commit}",
            lambda body: body.replace(tiny_hub.commit.encode(), other.encode()),
        )
    )
    result = download(cli, tiny_hub, proxy.url)
    assert result.code == EXIT_VERIFICATION, result.text
    assert f"answered: '{other}'" in result.err
    assert not tiny_hub.hf_home.exists()


def test_a_file_answered_for_another_commit_is_refused(
    tiny_hub: TinyHub, proxy: HubProxy, cli: CliRunner
) -> None:
    tiny_hub.manifest.unlink()  # nothing to verify against: only the commit check can catch it
    other = "0" * 40
    proxy.rewrites.append(("/config.json", "X-Repo-Commit", other))
    result = download(cli, tiny_hub, proxy.url)
    assert result.code == EXIT_VERIFICATION, result.text
    assert "answered config.json for another commit than the pinned" in result.err
    assert not (tiny_hub.snapshot / "config.json").exists()


@pytest.mark.parametrize("evil", ["../config.json", "a//b.json", "./config.json"])
def test_a_listing_with_a_path_no_snapshot_may_hold_is_refused(
    tiny_hub: TinyHub, proxy: HubProxy, cli: CliRunner, evil: str
) -> None:
    proxy.body_rewrites.append(
        (
            "/tree/" + tiny_hub.commit + "/",
            lambda body: body.replace(b'"config.json"', json.dumps(evil).encode()),
        )
    )
    result = download(cli, tiny_hub, proxy.url)
    assert result.code == EXIT_ENVIRONMENT, result.text
    assert "names paths no snapshot may hold" in result.err
    assert not tiny_hub.hf_home.exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [("oid", "../../../outside"), ("oid", "ABC"), ("size", -1)],
    ids=["oid-escapes", "oid-not-hex", "negative-size"],
)
def test_a_listing_that_describes_a_file_otherwise_than_the_hub_is_refused(
    tiny_hub: TinyHub, proxy: HubProxy, cli: CliRunner, field: str, value: object
) -> None:
    # The object id names the blob (and the partial files removed): never a path.
    def change(body: bytes) -> bytes:
        listing = json.loads(body)
        entry = next(e for e in listing if e["path"] == "config.json")
        entry[field] = value
        return json.dumps(listing).encode()

    proxy.body_rewrites.append(("/tree/" + tiny_hub.commit + "/", change))
    result = download(cli, tiny_hub, proxy.url)
    assert result.code == EXIT_ENVIRONMENT, result.text
    assert "'config.json': " in result.err
    assert not tiny_hub.hf_home.exists()


# --- interrupted downloads ------------------------------------------------------------------------

#: several of the 1 MiB pieces a download writes (TRANSFER_CHUNK_BYTES): a partial file has bytes
BIG = 8 * 1024 * 1024


@pytest.fixture
def big_hub(make_tiny_hub) -> TinyHub:
    weights = random.Random(0).randbytes(BIG)
    files: dict[str, bytes | Path] = {"config.json": b"{}\n", "model.safetensors": weights}
    hub = make_tiny_hub(files=files)
    manifest = SnapshotManifest({name: sha256_hex(data) for name, data in files.items()})
    hub.manifest.write_bytes(manifest.to_bytes())
    return hub


def _spawn_download(hub: TinyHub, endpoint: str) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return subprocess.Popen(
        [sys.executable, "-m", "detserve", "download", "--config", str(hub.config),
         "--endpoint", endpoint, "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        # a suite started in the background (`cmd &`) ignores SIGINT, and Python keeps an
        # ignored SIGINT ignored: give the child the default, as a terminal would
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def _partials(hub: TinyHub) -> list[Path]:
    return sorted((hub.model_dir / "blobs").glob("*.incomplete"))


def _wait_for_partial_bytes(hub: TinyHub, least: int) -> None:
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size >= least for p in _partials(hub)):
        assert time.monotonic() < deadline, "the download never wrote a partial file"
        time.sleep(0.05)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["ctrl-c", "killed"])
def test_an_interrupted_download_leaves_nothing_verify_could_take_and_resumes(
    big_hub: TinyHub, cli: CliRunner, how: str
) -> None:
    with hub_proxy(big_hub.url) as relay:
        held = relay.hold("/model.safetensors", after_bytes=BIG // 2)
        running = _spawn_download(big_hub, relay.url)
        assert held.reached.wait(60), "the transfer never reached the hold"
        _wait_for_partial_bytes(big_hub, 2 * TRANSFER_CHUNK_BYTES)
        running.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
        _, err = running.communicate(timeout=30)
        held.release.set()
    if how == "ctrl-c":
        assert running.returncode == EXIT_ENVIRONMENT, err
        assert "interrupted" in err
        assert "run the same command again" in err
        assert _partials(big_hub) == []  # removed at once, though its transfer was stalled
    else:
        assert running.returncode == -signal.SIGKILL
        assert [p.stat().st_size >= 2 * TRANSFER_CHUNK_BYTES for p in _partials(big_hub)] == [True]
    # The unfinished file has no snapshot entry: verify cannot take the partial bytes for it.
    assert not (big_hub.snapshot / "model.safetensors").exists()
    assert (big_hub.snapshot / "config.json").read_bytes() == b"{}\n"  # finished, kept
    checked = cli("verify", "--config", big_hub.config)
    assert checked.code == EXIT_VERIFICATION
    assert "missing: ./model.safetensors" in checked.err
    # The same command again fetches what is missing, and only that.
    with hub_proxy(big_hub.url) as relay:
        resumed = download(cli, big_hub, relay.url)
        fetched = [p.rsplit("/", 1)[1] for p in relay.paths("GET") if "/resolve/" in p]
    assert resumed.code == EXIT_OK, resumed.text
    assert fetched == ["model.safetensors"]
    assert _partials(big_hub) == []
    if how == "killed":
        assert "removed 1 partial file(s) of an interrupted download" in resumed.err
