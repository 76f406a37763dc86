"""Get a model's files at its pinned commit into the profile's Hugging Face home.

huggingface_hub does the transfer, into the layout ``detserve run`` mounts
(``hub/models--ORG--NAME/snapshots/<revision>/`` links into ``blobs/``). Invariants:

* Only the pinned commit is asked for, by its 40-hex id: a profile without ``model.revision``
  is refused before the hub is asked anything. A hub that names another commit for it, or
  answers a file for another commit, is a verification failure (exit 1); such a file is never
  stored under the pinned commit.
* Only the files vLLM loads (:data:`DEFAULT_INCLUDE`, less :data:`DEFAULT_EXCLUDE`; both
  replaceable); the hub's listing is filtered with huggingface_hub's own matcher, so the same
  patterns select the same files as ``snapshot_download``. A path the hub lists that could not
  be written in a manifest is refused.
* The token comes only from the caller (the CLI reads ``--secrets-file``); without one, no token
  is sent, not even one huggingface_hub would find in ``HF_TOKEN`` or its token file: a token is
  never handed to a hub (a mirror) the user did not give it to.
* Free space is checked against the hub's sizes of the files still to fetch before any is
  fetched (exit 3, naming both numbers).
* Interruption leaves no unfinished file in the snapshot (:mod:`detserve.transfer` says how):
  ``verify`` reports such a file missing and cannot take it for the file. Resuming is by file:
  a finished file is never fetched again.
* Afterwards the snapshot is verified against the committed manifest when there is one; when
  there is none, nothing is trusted, and nothing here writes a manifest.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from detserve.errors import (
    DiskSpaceError,
    HubError,
    InputError,
    PinMismatch,
    SnapshotMismatch,
    UsageError,
    bounded,
)
from detserve.manifest import check_relative_path
from detserve.snapshot import VerifyReport, verify_snapshot
from detserve.transfer import Commit, fetch_files, remove_partials

if TYPE_CHECKING:
    from detserve.profile import LoadedProfile

#: What vLLM loads to serve a text model: weights, configurations, tokenizer, chat template.
#: Matched against the whole path in the repository (``fnmatch``, as huggingface_hub does).
DEFAULT_INCLUDE: Final = (
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "hf_quant_config.json",
    "quantize_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "*.tiktoken",
    "chat_template.jinja",
    "chat_template.json",
)
#: Weights vLLM's default loader does not read: the publisher's original checkpoints, and the
#: single-file Mistral format beside the sharded one (the index names the shards vLLM loads).
DEFAULT_EXCLUDE: Final = ("original/*", "consolidated*.safetensors")
#: files fetched at once (huggingface_hub's own default for a snapshot)
DEFAULT_WORKERS: Final = 8

FileState = Literal["present", "blob", "fetch"]
#: a git object id (sha1) or an LFS one (sha256), lowercase hex
_ETAG_RE: Final = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


class DownloadObserver(Protocol):
    """Told the plan, each chunk of bytes written (from several threads), then the check."""

    def planned(self, plan: DownloadPlan) -> None: ...

    def fetched(self, count: int) -> None: ...

    def verifying(self, total: int) -> None: ...

    def verified(self, count: int) -> None: ...


@dataclass(frozen=True)
class RemoteFile:
    """A file of the pinned commit, as the hub lists it, and what is on disk of it already."""

    path: str
    size: int
    #: the name huggingface_hub stores it under in ``blobs/`` (LFS sha256, else git blob id)
    etag: str
    #: ``present`` (linked in the snapshot), ``blob`` (in ``blobs/``, to be linked), ``fetch``
    state: FileState

    def as_json(self) -> dict[str, object]:
        return {"path": self.path, "size": self.size, "state": self.state}


@dataclass(frozen=True)
class DownloadPlan:
    """What a download will do, decided from the hub's listing before anything is fetched."""

    repo_id: str
    revision: str
    endpoint: str
    snapshot_dir: Path
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    files: tuple[RemoteFile, ...]
    #: files of the commit that the patterns leave out
    skipped: tuple[str, ...]
    free_bytes: int
    #: partial files of earlier, killed downloads that were removed
    removed_partials: int

    @property
    def to_fetch(self) -> tuple[RemoteFile, ...]:
        return tuple(f for f in self.files if f.state == "fetch")

    @property
    def fetch_bytes(self) -> int:
        return sum(f.size for f in self.to_fetch)

    def as_json(self) -> dict[str, object]:
        return {
            "model": self.repo_id,
            "revision": self.revision,
            "endpoint": self.endpoint,
            "snapshot": str(self.snapshot_dir),
            "include": list(self.include),
            "exclude": list(self.exclude),
            "files": [f.as_json() for f in self.files],
            "skipped": list(self.skipped),
            "fetch_files": len(self.to_fetch),
            "fetch_bytes": self.fetch_bytes,
            "free_bytes": self.free_bytes,
            "removed_partial_files": self.removed_partials,
        }


@dataclass(frozen=True)
class DownloadResult:
    """A finished download: what was fetched, and whether the snapshot is trusted."""

    plan: DownloadPlan
    fetched_bytes: int
    seconds: float
    manifest: Path
    #: the verification against ``manifest``; None when there is no manifest (nothing trusted)
    verified: VerifyReport | None
    #: the command that makes the manifest, when there is none
    next_command: str | None

    @property
    def trusted(self) -> bool:
        return self.verified is not None

    def as_json(self) -> dict[str, object]:
        rate = self.fetched_bytes / self.seconds if self.seconds > 0 else None
        return {
            "ok": True,
            **self.plan.as_json(),
            "dry_run": False,
            "fetched_bytes": self.fetched_bytes,
            "seconds": round(self.seconds, 3),
            "throughput_bytes_per_s": None if rate is None else round(rate),
            "manifest": str(self.manifest),
            "trusted": self.trusted,
            "verified": None if self.verified is None else self.verified.as_json(),
            "next": self.next_command,
        }


def check_patterns(include: Sequence[str], exclude: Sequence[str]) -> None:
    """Patterns are glob patterns over repository paths; none may be empty, some must include."""
    if not include:
        raise UsageError("--include needs at least one pattern (or none given: the defaults)")
    for pattern in (*include, *exclude):
        if not pattern.strip() or "\n" in pattern or "\x00" in pattern:
            raise UsageError(f"not a file pattern: {bounded(repr(pattern))}")


def token_from(secrets_file: Path | None) -> str | None:
    """``HF_TOKEN`` of a secrets file (``--secrets-file``), or None without one.

    The only source of a token: none is taken from the environment or huggingface_hub's token
    file. A secrets file given without ``HF_TOKEN`` is refused, naming the names it holds (its
    values are never shown).
    """
    if secrets_file is None:
        return None
    from detserve.runtime.secrets import load_secrets_file

    secrets = load_secrets_file(secrets_file)
    if "HF_TOKEN" not in secrets:
        raise InputError(
            f"secrets file {secrets_file} has no HF_TOKEN",
            details=[f"names in it: {', '.join(secrets.names) or '(none)'}"],
            hint="the hub token is read from HF_TOKEN=... in --secrets-file",
        )
    return secrets["HF_TOKEN"]


def _free_bytes(directory: Path) -> int:
    """Free bytes for an unprivileged writer on the file system ``directory`` will be on."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def plan_download(
    loaded: LoadedProfile,
    *,
    endpoint: str,
    token: str | None,
    include: Sequence[str] = DEFAULT_INCLUDE,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
) -> DownloadPlan:
    """List the pinned commit on the hub, choose the files, see what is on disk, check space."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    # huggingface_hub's own matcher, so that the same patterns choose the same files as its
    # snapshot_download; its utils package re-exports it without naming it in __all__.
    from huggingface_hub.utils import filter_repo_objects  # type: ignore[attr-defined]

    from detserve.hub import hub_call

    check_patterns(include, exclude)
    repo_id, revision = loaded.profile.model.id, loaded.revision
    api = HfApi(endpoint=endpoint, token=token if token is not None else False)
    with hub_call(endpoint, f"{repo_id}@{revision}"):
        # First the commit itself: one request, not retried (the listing is, for about 25 s,
        # when nothing answers), and the hub must name the very commit asked for.
        answered = getattr(api.model_info(repo_id, revision=revision, timeout=30), "sha", None)
        if answered != revision:
            raise PinMismatch(
                f"{endpoint} answered another commit for the pinned {repo_id}@{revision}",
                details=[f"pinned:   {revision}", f"answered: {bounded(repr(answered))}"],
                hint="this hub does not serve the pinned commit faithfully; do not use it",
            )
        listed = [
            entry
            for entry in api.list_repo_tree(repo_id, revision=revision, recursive=True)
            if isinstance(entry, RepoFile)
        ]
    unsafe = sorted(
        f"{bounded(repr(e.path))}: {why}" for e in listed if (why := check_relative_path(e.path))
    )
    # An object id names a file in blobs/ (and its partial files): hex, or it is not one.
    unsafe += sorted(
        f"{bounded(repr(e.path))}: object id {bounded(repr(_etag_of(e)))} is not a git or LFS id"
        for e in listed
        if not _ETAG_RE.fullmatch(str(_etag_of(e)))
    )
    unsafe += sorted(
        f"{bounded(repr(e.path))}: size {bounded(repr(e.size))} is not a byte count"
        for e in listed
        if not isinstance(e.size, int) or e.size < 0
    )
    if unsafe:
        raise HubError(
            f"{endpoint}: the listing of {repo_id}@{revision} names paths no snapshot may hold, "
            "or files it does not describe as the hub does",
            details=unsafe,
        )
    chosen = {
        e.path
        for e in filter_repo_objects(
            listed, allow_patterns=list(include), ignore_patterns=list(exclude), key=_path_of
        )
    }
    removed = remove_partials(loaded.model_cache_dir)
    blobs = loaded.model_cache_dir / "blobs"
    files = []
    for entry in sorted(listed, key=_path_of):
        if entry.path not in chosen:
            continue
        etag = str(_etag_of(entry))  # checked above: hex
        if (loaded.snapshot_dir / entry.path).exists():
            state: FileState = "present"
        elif (blobs / etag).exists():
            state = "blob"
        else:
            state = "fetch"
        files.append(RemoteFile(path=entry.path, size=entry.size, etag=etag, state=state))
    if not files:
        raise InputError(
            f"no file of {repo_id}@{revision} matches the patterns",
            details=[f"include: {' '.join(include)}", f"exclude: {' '.join(exclude)}"],
            hint="check --include and --exclude against the repository's files",
        )
    plan = DownloadPlan(
        repo_id=repo_id,
        revision=revision,
        endpoint=endpoint,
        snapshot_dir=loaded.snapshot_dir,
        include=tuple(include),
        exclude=tuple(exclude),
        files=tuple(files),
        skipped=tuple(sorted(e.path for e in listed if e.path not in chosen)),
        free_bytes=_free_bytes(blobs),
        removed_partials=removed,
    )
    if plan.fetch_bytes > plan.free_bytes:
        raise DiskSpaceError(
            f"not enough free space for {repo_id}@{revision}: {plan.fetch_bytes} bytes to "
            f"download, {plan.free_bytes} bytes free on the file system of {blobs}",
            details=[
                f"to download: {len(plan.to_fetch)} files, {plan.fetch_bytes} bytes",
                f"free: {plan.free_bytes} bytes",
            ],
            hint="free space there, or point snapshot.hf_home at a larger disk",
        )
    return plan


def _path_of(entry: Any) -> str:
    return str(entry.path)


def _etag_of(entry: Any) -> object:
    """The name huggingface_hub stores a listed file under: its LFS sha256, else its git id."""
    return entry.lfs.sha256 if entry.lfs is not None else entry.blob_id


def verify_download(
    loaded: LoadedProfile,
    *,
    on_total: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport | None:
    """The snapshot checked against the committed manifest, or None when there is none."""
    manifest = loaded.manifest_path
    if not os.path.lexists(manifest):
        return None
    try:
        return verify_snapshot(loaded.snapshot_dir, manifest, progress=progress, on_total=on_total)
    except SnapshotMismatch as exc:
        raise SnapshotMismatch(
            f"the files of {loaded.profile.model.id}@{loaded.revision} in {loaded.snapshot_dir} "
            f"do not match the committed manifest {manifest}",
            details=exc.details,
            hint=(
                "do not serve them: the hub served other bytes than the manifest pins (or the "
                f"cache was changed). Remove {loaded.model_cache_dir} and download again from a "
                "hub you trust; never re-hash these files to make them pass"
            ),
        ) from exc


def hash_command(loaded: LoadedProfile) -> str:
    """The command that makes the (missing) manifest of the downloaded snapshot."""
    return f"detserve hash --config {loaded.path} --manifest-output {loaded.manifest_path}"


def download(
    loaded: LoadedProfile,
    *,
    endpoint: str,
    token: str | None = None,
    include: Sequence[str] = DEFAULT_INCLUDE,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    workers: int = DEFAULT_WORKERS,
    observer: DownloadObserver | None = None,
) -> DownloadResult:
    """Plan, fetch and verify; see the module docstring for what each step guarantees."""
    plan = plan_download(loaded, endpoint=endpoint, token=token, include=include, exclude=exclude)
    if observer is not None:
        observer.planned(plan)
    started = time.perf_counter()
    commit = Commit(
        repo_id=plan.repo_id,
        revision=plan.revision,
        endpoint=plan.endpoint,
        hf_home=loaded.hf_home,
        token=token,
    )
    # the largest first: they bound the wall time
    pending = sorted((f for f in plan.files if f.state != "present"), key=lambda f: -f.size)
    fetched = fetch_files(
        commit,
        [(f.path, f.etag) for f in pending],
        workers=workers,
        on_bytes=observer.fetched if observer is not None else None,
    )
    seconds = time.perf_counter() - started
    verified = verify_download(
        loaded,
        on_total=observer.verifying if observer is not None else None,
        progress=observer.verified if observer is not None else None,
    )
    return DownloadResult(
        plan=plan,
        fetched_bytes=fetched,
        seconds=seconds,
        manifest=loaded.manifest_path,
        verified=verified,
        next_command=None if verified is not None else hash_command(loaded),
    )
