"""The tiny model on a real Hugging Face hub server (olah, offline, on loopback), for any test.

``olah_server`` (one for the session): an olah process started by scripts/stack/olah_hub.py,
offline and checked to be (it refuses an unknown repository at once, and never logs an
upstream request), on a free loopback port, in its own temporary folder, stopped at the end.
Tests add repositories to it while it runs, each under a name no other test uses.

``tiny_hub`` (one per test): the committed tiny model's files, plus a README.md that vLLM does
not load, as a deterministic git repository on that server (fixed author, committer, dates:
its commit is :data:`TINY_HUB_COMMIT` on every machine), and a repository layout under
``tmp_path`` to use it from: a copy of configs/tiny-cpu.json naming that repository and pinned
to that commit, the committed manifest under that commit's name (the same files, so the same
manifest), and an empty Hugging Face home. Nothing committed changes: the committed tiny model
keeps its revision (a hash of its manifest, from before there was a hub); on the hub a revision
is a git commit, and here it is one.

``tiny_hub.add_commit({...})`` adds a commit (it moves ``main``), ``tiny_hub.repo.tamper_lfs``
changes what a commit serves for an LFS file (a compromised server). ``make_tiny_hub`` makes
more, e.g. ``make_tiny_hub(repo_id="Qwen/Qwen3-8B")``.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO_ROOT / "configs" / "tiny-cpu.json"
_TINY_REVISION = "46e57beb165a224b80456c14f6813993c9347126"
TINY_SNAPSHOT = (
    REPO_ROOT / "artifacts" / "hf-cache" / "hub" / "models--detserve--tiny-llama" / "snapshots"
) / _TINY_REVISION
TINY_MANIFEST = REPO_ROOT / "manifests" / "tiny-cpu" / f"{_TINY_REVISION}.sha256"
#: a file of the repository that vLLM does not load (so download must leave it out)
README = b"# tiny-llama\n\nA 2-layer random-weight Llama for detserve's tests.\n"
#: the commit of the tiny model's repository: its files, README.md and .gitattributes, by the
#: fixed author on the fixed date (scripts/stack/olah_hub.py)
TINY_HUB_COMMIT = "4fc793a4657951bc1ec90a04b4c6730b0a9a50c4"


def _load_olah_hub() -> ModuleType:
    path = REPO_ROOT / "scripts" / "stack" / "olah_hub.py"
    spec = importlib.util.spec_from_file_location("olah_hub", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["olah_hub"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


olah_hub = sys.modules.get("olah_hub") or _load_olah_hub()


def tiny_files() -> dict[str, bytes | Path]:
    """The tiny model's files as a hub repository holds them."""
    files: dict[str, bytes | Path] = {p.name: p.resolve() for p in sorted(TINY_SNAPSHOT.iterdir())}
    files["README.md"] = README
    return files


@dataclass(frozen=True)
class TinyHub:
    """The tiny model on the hub, and a profile pinned to its commit (see the module docstring)."""

    url: str
    repo: olah_hub.ModelRepo
    commit: str
    root: Path
    config: Path
    #: the committed tiny manifest under the commit's name (absent for other files)
    manifest: Path
    hf_home: Path

    @property
    def repo_id(self) -> str:
        return str(self.repo.repo_id)

    @property
    def model_dir(self) -> Path:
        return self.hf_home / "hub" / ("models--" + self.repo_id.replace("/", "--"))

    @property
    def snapshot(self) -> Path:
        """Where ``detserve download`` puts the pinned commit's files."""
        return self.model_dir / "snapshots" / self.commit

    def add_commit(
        self,
        files: dict[str, bytes | Path],
        remove: tuple[str, ...] = (),
        message: str | None = None,
    ) -> str:
        """Commit ``files`` (and remove ``remove``) on ``main``: the new commit, which ``main``
        now names (the profile still pins :attr:`commit`)."""
        return str(self.repo.commit(files, remove=remove, message=message))

    def profile(self) -> dict[str, object]:
        loaded: dict[str, object] = json.loads(self.config.read_text(encoding="utf-8"))
        return loaded

    def write_profile(self, document: dict[str, object]) -> None:
        self.config.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


@pytest.fixture(scope="session")
def olah_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One offline olah for the session (``.url``, ``.model(...)``, ``.repository(...)``)."""
    with olah_hub.OlahHub(tmp_path_factory.mktemp("olah")) as hub:
        yield hub
        hub.check_offline()


_numbers = itertools.count(1)


@pytest.fixture
def make_tiny_hub(olah_server: object, tmp_path: Path) -> Callable[..., TinyHub]:
    """``make_tiny_hub(repo_id=None, files=None)``: a new repository on the session's olah
    (the tiny model's files unless ``files``), and a layout pinned to its first commit."""

    def make(repo_id: str | None = None, files: dict[str, bytes | Path] | None = None) -> TinyHub:
        name = repo_id or f"detserve/tiny-llama-{next(_numbers)}"
        repo, commit = olah_server.model(name, files if files is not None else tiny_files())
        root = tmp_path / name.replace("/", "--")
        config = root / "configs" / "tiny-cpu.json"
        config.parent.mkdir(parents=True)
        document = json.loads(TINY_CONFIG.read_text(encoding="utf-8"))
        document["model"]["id"] = name
        document["model"]["revision"] = commit
        config.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        manifest = root / "manifests" / "tiny-cpu" / f"{commit}.sha256"
        manifest.parent.mkdir(parents=True)
        if files is None:
            shutil.copyfile(TINY_MANIFEST, manifest)
        return TinyHub(
            url=olah_server.url,
            repo=repo,
            commit=commit,
            root=root,
            config=config,
            manifest=manifest,
            hf_home=root / "artifacts" / "hf-cache",
        )

    return make


@pytest.fixture
def tiny_hub(make_tiny_hub: Callable[..., TinyHub]) -> TinyHub:
    """The tiny model on the hub at :data:`TINY_HUB_COMMIT`, and a profile pinned to it."""
    hub = make_tiny_hub()
    assert hub.commit == TINY_HUB_COMMIT, "the tiny model's repository is not deterministic"
    return hub
