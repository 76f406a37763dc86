#!/usr/bin/env python3
"""A Hugging Face hub on loopback: olah serving local git repositories, offline.

`olah <https://github.com/vtuber-plan/olah>`_ is a self-hosted mirror of the Hugging Face hub.
Besides proxying huggingface.co it serves git repositories found under its ``mirrors-path``
(``<mirrors>/models/ORG/NAME``) with the hub's own API: ``/api/models/ID/revision/REF`` (a
branch resolves to its commit), ``/api/models/ID/tree/REV``, ``/ID/resolve/REV/FILE`` (with
``X-Repo-Commit`` and ``ETag``), and git LFS files from the repository's ``.git/lfs/objects``.
The tests and the download benchmark run ``huggingface_hub`` against it, so what detserve asks
of a hub is answered by a real hub server, not by a script of answers.

Invariants:

* Offline, always: the configuration says ``offline = true`` and points olah's upstream at
  ``127.0.0.1:9`` (nothing listens there), and its environment points any HTTP proxy there too.
  :meth:`OlahHub.start` checks it: a repository olah does not hold must be refused at once as
  not found (an online olah would try huggingface.co and answer 504), and olah's log must not
  mention an upstream request.
* Loopback only, a free port, its own folders; :meth:`OlahHub.stop` ends the process it started
  (by its id) and nothing else.
* Repositories are deterministic: fixed author, committer, dates and messages, so the same files
  give the same commit on every machine (a commit is the hub's revision).
* Weights (``*.safetensors``, ``*.bin``) are stored as git LFS, as on the hub: a pointer in git,
  the bytes in ``.git/lfs/objects``. Those bytes are not covered by any git hash, which is how a
  test plays a compromised server: :meth:`ModelRepo.tamper_lfs` changes what a commit serves.

By hand (serves until Ctrl-C)::

    .venv/bin/python scripts/stack/olah_hub.py serve --model-dir DIR --repo-id ORG/NAME

then ``detserve lock-model --endpoint URL ...`` and ``detserve download --endpoint URL ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

#: the author and committer of every commit, and the date of the first one (each next commit is
#: one day later): commits are a function of their files and their order alone
AUTHOR = ("detserve tests", "tests@detserve.invalid")
FIRST_DATE = datetime(2025, 1, 1, tzinfo=UTC)
#: files stored as git LFS objects, as the hub stores weights
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
GITATTRIBUTES = "".join(
    f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES
)
#: where olah's upstream and any proxy point: nothing listens on the discard port
NOWHERE = "127.0.0.1:9"
START_TIMEOUT_S = 60.0

#: git without the machine's or the user's configuration (signing, hooks, templates, autocrlf)
_GIT_ENVIRONMENT = {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": AUTHOR[0],
    "GIT_AUTHOR_EMAIL": AUTHOR[1],
    "GIT_COMMITTER_NAME": AUTHOR[0],
    "GIT_COMMITTER_EMAIL": AUTHOR[1],
    "LC_ALL": "C",
}

FileContent = bytes | Path


class HubError(RuntimeError):
    """olah could not be started, or is not the offline server it must be."""


def _git(repo: Path, *args: str, date: datetime | None = None) -> str:
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **_GIT_ENVIRONMENT}
    if date is not None:
        stamp = date.strftime("%Y-%m-%dT%H:%M:%S+00:00")
        environment |= {"GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}
    done = subprocess.run(
        ["git", "-C", str(repo), *args], env=environment, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise HubError(f"git {' '.join(args)} in {repo} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def _sha256_of(content: FileContent) -> tuple[str, int]:
    if isinstance(content, bytes):
        return hashlib.sha256(content).hexdigest(), len(content)
    digest = hashlib.sha256()
    with content.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest(), content.stat().st_size


def lfs_pointer(oid: str, size: int) -> bytes:
    """The git LFS pointer text (spec v1) that olah recognises."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


@dataclass(frozen=True)
class ModelRepo:
    """A model repository olah serves: a git work tree at ``path``, served as ``repo_id``."""

    path: Path
    repo_id: str

    @property
    def lfs_objects(self) -> Path:
        return self.path / ".git" / "lfs" / "objects"

    def lfs_object(self, oid: str) -> Path:
        return self.lfs_objects / oid[:2] / oid[2:4] / oid

    def _write(self, name: str, content: FileContent) -> None:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(LFS_SUFFIXES):
            oid, size = _sha256_of(content)
            stored = self.lfs_object(oid)
            if not stored.exists():
                stored.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(content, bytes):
                    stored.write_bytes(content)
                else:
                    shutil.copyfile(content, stored)
            target.write_bytes(lfs_pointer(oid, size))
        elif isinstance(content, bytes):
            target.write_bytes(content)
        else:
            shutil.copyfile(content, target)

    def commits(self) -> list[str]:
        """Every commit of ``main``, oldest first."""
        if not _git(self.path, "branch", "--list", "main"):
            return []  # a new repository: main has no commit yet
        return _git(self.path, "rev-list", "--reverse", "main").split()

    def commit(
        self,
        files: Mapping[str, FileContent],
        *,
        remove: tuple[str, ...] = (),
        message: str | None = None,
    ) -> str:
        """Write ``files`` (bytes, or a file to copy), remove ``remove``, commit on ``main``.

        The commit is dated one day after the previous one: the same changes in the same order
        give the same commits anywhere. Returns the new commit (the hub's revision).
        """
        number = len(self.commits())
        for name, content in files.items():
            self._write(name, content)
        for name in remove:
            (self.path / name).unlink()
        _git(self.path, "add", "--all")
        _git(
            self.path,
            "commit",
            "--quiet",
            "--allow-empty",
            "--no-gpg-sign",
            "-m",
            message or f"commit {number + 1}",
            date=FIRST_DATE + timedelta(days=number),
        )
        return self.head()

    def head(self) -> str:
        return _git(self.path, "rev-parse", "main")

    def lfs_oid(self, name: str, commit: str) -> str:
        """The sha256 of the LFS object ``name`` points at in ``commit``."""
        pointer = _git(self.path, "show", f"{commit}:{name}")
        for line in pointer.splitlines():
            if line.startswith("oid sha256:"):
                return line.removeprefix("oid sha256:")
        raise HubError(f"{name} is not an LFS pointer in {commit}")

    def tamper_lfs(self, name: str, commit: str) -> None:
        """Flip the last byte of what ``commit`` serves for the LFS file ``name``: same size,
        same commit, other bytes (a compromised server or storage)."""
        stored = self.lfs_object(self.lfs_oid(name, commit))
        data = bytearray(stored.read_bytes())
        data[-1] ^= 0x01
        stored.write_bytes(bytes(data))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _config(root: Path, port: int, *, offline: bool = True) -> str:
    netloc = f"127.0.0.1:{port}"
    return "\n".join(
        [
            "[basic]",
            'host = "127.0.0.1"',
            f"port = {port}",
            f"repos-path = {json.dumps(str(root / 'cache'))}",
            f"mirrors-path = [{json.dumps(str(root / 'mirrors'))}]",
            'hf-scheme = "http"',
            f'hf-netloc = "{NOWHERE}"',
            f'hf-lfs-netloc = "{NOWHERE}"',
            'mirror-scheme = "http"',
            f'mirror-netloc = "{netloc}"',
            f'mirror-lfs-netloc = "{netloc}"',
            # a branch is resolved afresh on every request: a new commit moves it at once
            "metadata-cache-ttl = 0",
            "",
            "[accessibility]",
            f"offline = {'true' if offline else 'false'}",
            "",
        ]
    )


def _answer(url: str) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, dict(response.headers.items())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items())


class OlahHub:
    """An olah process on 127.0.0.1 serving the repositories under ``root/mirrors``.

    Use as a context manager, or :meth:`start` and :meth:`stop`. Repositories may be added while
    it runs (olah looks for them on every request).
    """

    def __init__(self, root: Path, *, offline: bool = True) -> None:
        #: False only to test that :meth:`start` refuses an olah that is not offline
        self.offline = offline
        self.root = root
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "olah.out"

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def repository(self, repo_id: str) -> ModelRepo:
        """A new, empty repository served as ``repo_id`` (ORG/NAME), branch ``main``."""
        path = self.root / "mirrors" / "models" / repo_id
        if path.exists():
            raise HubError(f"repository {repo_id} exists already at {path}")
        path.mkdir(parents=True)
        _git(path, "init", "--quiet", "--initial-branch=main")
        return ModelRepo(path=path, repo_id=repo_id)

    def model(self, repo_id: str, files: Mapping[str, FileContent]) -> tuple[ModelRepo, str]:
        """A repository holding ``files`` (and a ``.gitattributes`` naming the LFS files) in one
        commit; the repository and that commit."""
        repo = self.repository(repo_id)
        commit = repo.commit({".gitattributes": GITATTRIBUTES.encode(), **files}, message="model")
        return repo, commit

    def start(self) -> OlahHub:
        (self.root / "mirrors" / "models").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = self.root / "olah.toml"
        config.write_text(_config(self.root, self.port, offline=self.offline), encoding="utf-8")
        # olah (through httpx) honours proxy variables: any request that slipped past the
        # offline switch would go to a proxy where nothing listens.
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.lower().endswith("_proxy") and not key.startswith("HF_")
        } | {"HTTP_PROXY": f"http://{NOWHERE}", "HTTPS_PROXY": f"http://{NOWHERE}"}
        environment |= {"ALL_PROXY": f"http://{NOWHERE}", "NO_PROXY": "", "HF_HUB_OFFLINE": "1"}
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "olah.server",
                "--config",
                str(config),
                "--log-path",
                str(self.root / "logs"),
            ],
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
        try:
            self._wait_until_offline()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_offline(self) -> None:
        probe = f"{self.url}/api/models/olah-offline-check/absent/revision/main"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise HubError(f"olah exited ({self._process.returncode}):\n{self.log_text()}")
            try:
                status, headers = _answer(probe)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise HubError(f"olah did not answer within {START_TIMEOUT_S:.0f} s") from None
                time.sleep(0.1)
        error_code = {k.lower(): v for k, v in headers.items()}.get("x-error-code")
        if status not in (401, 404) or error_code != "RepoNotFound":
            raise HubError(
                f"olah is not offline: an absent repository got {status} ({error_code}); an "
                "offline olah refuses it at once as RepoNotFound"
            )
        self.check_offline()

    def check_offline(self) -> None:
        """Fail if olah's log shows any attempt to reach an upstream hub."""
        attempts = [line for line in self.log_text().splitlines() if "Upstream" in line]
        if attempts:
            raise HubError("olah tried to reach an upstream hub:\n" + "\n".join(attempts))

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> OlahHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def olah_hub(root: Path | None = None) -> Iterator[OlahHub]:
    """An offline olah in ``root`` (a new temporary folder, removed afterwards, when None)."""
    with contextlib.ExitStack() as stack:
        if root is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="olah-hub-")))
        yield stack.enter_context(OlahHub(root))


def _serve(args: argparse.Namespace) -> int:
    files = {
        path.relative_to(args.model_dir).as_posix(): path
        for path in sorted(args.model_dir.rglob("*"))
        if path.is_file() and ".git" not in path.relative_to(args.model_dir).parts
    }
    if not files:
        print(f"no files in {args.model_dir}", file=sys.stderr)
        return 2
    with olah_hub(args.root) as hub:
        _, commit = hub.model(args.repo_id, files)
        print(f"endpoint {hub.url}\nmodel {args.repo_id}\ncommit {commit}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve one model directory as ORG/NAME")
    serve.add_argument("--model-dir", type=Path, required=True)
    serve.add_argument("--repo-id", required=True)
    serve.add_argument("--root", type=Path, default=None, help="olah's folder (a temporary one)")
    args = parser.parse_args(argv)
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
