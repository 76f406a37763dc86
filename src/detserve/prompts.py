"""Prompt bundles: the pinned list of prompts a run samples.

A bundle is a directory::

    bundle.json     what the bundle is: its source (dataset, revision, file sha256) and the
                    tokenizer it was measured with (model id, revision, tokenizer file hashes)
    prompts.jsonl   one canonical JSON object a line, a request of one kind
                    (:mod:`detserve.request_kinds`): {"id", "n_tokens", "prompt"} (a completion) or
                    {"id", "n_tokens", "messages"} (a chat), each optionally with "stop" and
                    "constraint" (a JSON Schema as its author's JSON text: ``prompts bootstrap``
                    neither reorders nor respells it)

Its pin is a manifest of those files (``manifests/reference_prompts/reference_prompts.sha256``,
the same format as snapshot manifests); the bundle's hash is the sha256 of that manifest. Every
load verifies the files against the pin first (a mismatch is fatal, exit 1) and only then parses
them strictly (invalid content is bad input, exit 2), naming the line.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from detserve import spelled_json
from detserve.canonical import MAX_EXACT_INTEGER, canonical_bytes, canonical_json, duplicate_keys
from detserve.chat_template import pinned_chat_template, render_chat, special_tokens
from detserve.errors import BundleError, InputError, SnapshotMismatch, bounded
from detserve.field_errors import format_validation_error
from detserve.fileio import (
    MAX_BUNDLE_INFO_BYTES,
    MAX_DATASET_BYTES,
    MAX_PROMPTS_BYTES,
    MAX_TOKENIZER_BYTES,
    atomic_write_bytes,
    check_output_dir,
    check_outputs,
    read_input,
)
from detserve.hub import hub_call
from detserve.manifest import load_manifest
from detserve.profile import COMMIT_RE, LoadedProfile
from detserve.request_kinds import TEMPLATE_OVERRIDES, PromptRecord
from detserve.snapshot import verify_snapshot
from detserve.strict_model import StrictModel

BUNDLE_FILE = "bundle.json"
PROMPTS_FILE = "prompts.jsonl"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)


class DatasetSource(StrictModel):
    kind: Literal["local-file", "hf-dataset"]
    name: str
    revision: str | None
    filename: str
    file_sha256: str
    field: str | None


class TokenizerPin(StrictModel):
    model_id: str
    model_revision: str
    files: dict[str, str]


class BundleInfo(StrictModel):
    format: Literal["detserve-prompt-bundle"]
    format_version: Literal[1]
    name: str
    source: DatasetSource
    tokenizer: TokenizerPin
    # Both are written as RFC 8785, which holds integers up to 2**53 - 1 exactly.
    n_prompts: int = Field(ge=1, le=MAX_EXACT_INTEGER)
    max_prompt_tokens: int = Field(ge=1, le=MAX_EXACT_INTEGER)


@dataclass(frozen=True)
class PromptBundle:
    info: BundleInfo
    prompts: tuple[PromptRecord, ...]
    sha256: str  # sha256 of the pin manifest: the bundle's identity
    path: Path
    pin_path: Path

    @property
    def files(self) -> tuple[Path, ...]:
        """What loading the bundle read, the inputs no output may be or lie in: its pin, its
        directory (whose every file the pin covers) and its two files."""
        return (self.pin_path, self.path, self.path / BUNDLE_FILE, self.path / PROMPTS_FILE)

    def take(self, n: int | None) -> Sequence[PromptRecord]:
        if n is None:
            return self.prompts
        if n < 1 or n > len(self.prompts):
            raise InputError(
                f"--n-prompts {n}: the bundle has {len(self.prompts)} prompts; "
                f"choose 1..{len(self.prompts)}"
            )
        return self.prompts[:n]


def _parse_prompts(data: bytes, source: Path) -> Iterator[PromptRecord]:
    if not data:
        raise BundleError(f"{source}: empty bundle: no prompts")
    if not data.endswith(b"\n"):
        raise BundleError(f"{source}: no final newline (truncated?)")
    seen: set[str] = set()
    for number, raw in enumerate(data.split(b"\n")[:-1], start=1):
        where = f"{source}:{number}"
        try:
            text = raw.decode("utf-8")
            value = json.loads(text)
        except UnicodeDecodeError as exc:
            raise BundleError(f"{where}: invalid UTF-8 at byte {exc.start}") from exc
        except json.JSONDecodeError as exc:
            raise BundleError(f"{where}: invalid JSON: {exc.msg}") from exc
        except (ValueError, RecursionError) as exc:
            # json raises these for a number of over 4300 digits or very deep nesting.
            raise BundleError(f"{where}: invalid JSON: {exc}") from exc
        overrides = sorted(TEMPLATE_OVERRIDES & set(value)) if isinstance(value, dict) else []
        if overrides:
            raise BundleError(
                f"{where}: {', '.join(overrides)} refused: the chat template is the pinned "
                "snapshot's, never supplied or configured by a bundle line"
            )
        try:
            record = PromptRecord.model_validate(value)
        except ValidationError as exc:
            raise BundleError(
                f"{where}: invalid prompt record",
                details=format_validation_error(exc, whole="(record)"),
            ) from exc
        # One form per request: the record's canonical line, absent fields left out (a null
        # field is another spelling of the same request). The bounds make it exact in RFC 8785.
        if canonical_json(record.line_value()) != text:
            raise BundleError(
                f"{where}: not canonical JSON (RFC 8785: sorted keys, no spaces, no null fields)"
            )
        if record.id in seen:
            raise BundleError(f"{where}: duplicate prompt id {record.id!r}")
        seen.add(record.id)
        yield record


def load_bundle(bundle_dir: Path, pin_manifest: Path) -> PromptBundle:
    """Verify a bundle against its pin, then parse it. Nothing is read before the hash matches."""
    pin = load_manifest(pin_manifest)
    if set(pin.manifest.digests) != {BUNDLE_FILE, PROMPTS_FILE}:
        raise BundleError(
            f"{pin_manifest}: a bundle pin must list exactly {BUNDLE_FILE} and {PROMPTS_FILE}"
        )
    try:
        verify_snapshot(bundle_dir, pin_manifest, workers=1)
    except SnapshotMismatch as exc:
        raise SnapshotMismatch(
            f"prompt bundle {bundle_dir} does not match its pinned hash {pin.sha256}",
            details=exc.details,
            hint="the prompts changed (or were reordered) since they were pinned; do not sample",
        ) from exc
    # The bytes parsed are the bytes hashed: read once, checked against the pin again.
    info_bytes = _read_pinned(bundle_dir, BUNDLE_FILE, pin.manifest.digests, MAX_BUNDLE_INFO_BYTES)
    prompts_bytes = _read_pinned(bundle_dir, PROMPTS_FILE, pin.manifest.digests, MAX_PROMPTS_BYTES)
    try:
        info = BundleInfo.model_validate_json(info_bytes)
    except ValidationError as exc:
        raise BundleError(
            f"{bundle_dir / BUNDLE_FILE}: invalid",
            details=format_validation_error(exc, whole="(bundle.json)"),
        ) from exc
    prompts = tuple(_parse_prompts(prompts_bytes, bundle_dir / PROMPTS_FILE))
    if len(prompts) != info.n_prompts:
        raise BundleError(
            f"{bundle_dir}: bundle.json says {info.n_prompts} prompts, found {len(prompts)}"
        )
    return PromptBundle(
        info=info, prompts=prompts, sha256=pin.sha256, path=bundle_dir, pin_path=pin_manifest
    )


def _read_pinned(bundle_dir: Path, name: str, digests: Mapping[str, str], cap: int) -> bytes:
    path = bundle_dir / name
    data = read_input(path, what="prompt bundle file", cap=cap, error=BundleError)
    actual = hashlib.sha256(data).hexdigest()
    if actual != digests[name]:
        raise SnapshotMismatch(
            f"prompt bundle file {path} changed after it was verified",
            details=[f"expected {digests[name]}", f"actual   {actual}"],
            hint="something is writing the bundle; stop it, then run again",
        )
    return data


# --- making a bundle (an explicit, human-run step) ----------------------------------------------


def pinned_tokenizer_files(loaded: LoadedProfile) -> tuple[dict[str, str], dict[str, bytes]]:
    """The model's tokenizer files (chat template included), checked against the model's
    manifest: their hashes, and the bytes that were hashed (to build the tokenizer and read the
    template from, not a second read).

    Refuses unless every tokenizer file in the snapshot is in the manifest with the same hash, so
    prompts are measured with exactly the tokenizer and template the pinned model serves.
    """
    manifest = load_manifest(loaded.manifest_path).manifest.digests
    snapshot = loaded.snapshot_dir
    present = [name for name in TOKENIZER_FILES if os.path.lexists(snapshot / name)]
    if "tokenizer.json" not in present:
        raise InputError(f"{snapshot}: no tokenizer.json; detserve needs a fast tokenizer")
    files: dict[str, str] = {}
    contents: dict[str, bytes] = {}
    mismatches = []
    for name in present:
        content = read_input(snapshot / name, what="tokenizer file", cap=MAX_TOKENIZER_BYTES)
        contents[name] = content
        actual = hashlib.sha256(content).hexdigest()
        expected = manifest.get(name)
        if expected != actual:
            mismatches.append(f"{name}: manifest {expected or '(absent)'} actual {actual}")
        files[name] = actual
    if mismatches:
        raise SnapshotMismatch(
            f"tokenizer files of {snapshot} do not match the model's manifest "
            f"{loaded.manifest_path}",
            details=mismatches,
        )
    return files, contents


class PromptCounter:
    """Counts a request's prompt tokens as the server will: a completion's text with the
    tokenizer's special tokens added, a chat rendered by the pinned template and tokenized as is."""

    def __init__(self, contents: dict[str, bytes]) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_buffer(contents["tokenizer.json"])
        self._contents = contents
        self._template: str | None = None

    def count(self, request: dict[str, Any]) -> int:
        if "messages" not in request:
            return len(self._tokenizer.encode(request["prompt"]).ids)
        if self._template is None:
            self._template = pinned_chat_template(self._contents)
        text = render_chat(self._template, request["messages"], special_tokens(self._contents))
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)


DatasetFormat = Literal["jsonl", "text", "requests"]
#: what a ``requests`` dataset line may hold: a bundle line without its id and token count
REQUEST_KEYS = frozenset({"prompt", "messages", "stop", "constraint"})


def _dataset_request(value: Any, where: str, fmt: DatasetFormat, field: str) -> dict[str, Any]:
    """The request a parsed dataset line asks for: ``{"prompt"}``, ``{"messages"}``, or (format
    ``requests``) the line itself, with stop strings and a constraint."""
    if not isinstance(value, dict):
        raise BundleError(f"{where}: not a JSON object")
    if fmt == "requests":
        overrides = sorted(TEMPLATE_OVERRIDES & set(value))
        if overrides:
            raise BundleError(
                f"{where}: {', '.join(overrides)} refused: the chat template is the pinned "
                "snapshot's, never supplied or configured by a dataset"
            )
        unknown = sorted(set(value) - REQUEST_KEYS)
        if unknown:
            shown = ", ".join(bounded(repr(key), 80) for key in unknown[:5])
            raise BundleError(
                f"{where}: unknown key(s) {shown}; a request holds prompt or "
                "messages, and optionally stop and constraint"
            )
        return dict(value)
    content = value.get(field)
    if isinstance(content, str):
        return {"prompt": content}
    if isinstance(content, list):
        # A conversation: a chat request of its messages, rendered by the pinned template.
        return {"messages": content}
    raise BundleError(
        f"{where}: no string (a prompt) or list (a conversation) field {bounded(repr(field))}"
    )


def _read_dataset(
    data: bytes, path: Path, fmt: DatasetFormat, field: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The requests of a dataset file's bytes (those whose hash was checked; ``path`` names it),
    each with where it is."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path}: invalid UTF-8 at byte {exc.start}") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        if fmt == "text":
            yield where, {"prompt": line}
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BundleError(f"{where}: invalid JSON: {exc.msg} at column {exc.colno}") from exc
        except (ValueError, RecursionError) as exc:
            raise BundleError(f"{where}: invalid JSON: {exc}") from exc
        duplicates = duplicate_keys(line)
        if duplicates:
            # Which of two equal keys is "the" prompt depends on the parser: refused, as profiles.
            shown = ", ".join(bounded(repr(key), 80) for key in duplicates[:5])
            raise BundleError(f"{where}: duplicate key(s) {shown} (ambiguous; keep one)")
        request = _dataset_request(value, where, fmt, field)
        if fmt == "requests":
            request = _schema_as_written(request, line, where)
        try:
            json.dumps(request, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            # A \ud800 escape decodes to a lone surrogate, which no UTF-8 file can hold.
            raise BundleError(
                f"{where}: field {bounded(repr(field), 80)} holds a lone surrogate "
                f"(a \\ud800-\\udfff escape): not text"
            ) from None
        yield where, request


def _schema_as_written(request: dict[str, Any], line: str, where: str) -> dict[str, Any]:
    """A request whose constraint holds a JSON Schema, the schema as its author wrote it: JSON
    text, compact, its keys in their order and its numbers as spelled (an author may give the
    schema as an object or as its text)."""
    constraint = request.get("constraint")
    if not isinstance(constraint, dict) or "json_schema" not in constraint:
        return request
    try:
        schema = spelled_json.loads(line)["constraint"]["json_schema"]
        if isinstance(schema, str):
            schema = spelled_json.loads(schema)
        text = spelled_json.dumps(schema)
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{where}: constraint.json_schema: not JSON: {exc}") from None
    return {**request, "constraint": {**constraint, "json_schema": text}}


def download_hf_dataset_file(
    repo_id: str, revision: str, filename: str, endpoint: str | None
) -> Path:
    """Fetch one file of a Hugging Face dataset at a pinned commit."""
    if not COMMIT_RE.fullmatch(revision):
        raise InputError(f"--dataset-revision must be a full 40-hex commit, found {revision!r}")
    from huggingface_hub import hf_hub_download

    with hub_call(endpoint, f"dataset {repo_id}@{revision}/{filename}"):
        path = hf_hub_download(
            repo_id, filename, repo_type="dataset", revision=revision, endpoint=endpoint
        )
    return Path(path)


@dataclass(frozen=True)
class BootstrapRequest:
    dataset_path: Path
    source: DatasetSource
    fmt: DatasetFormat
    n_prompts: int
    max_prompt_tokens: int
    name: str = "reference_prompts"


def build_bundle(
    loaded: LoadedProfile, request: BootstrapRequest, output_dir: Path, *, force: bool
) -> tuple[BundleInfo, list[PromptRecord]]:
    """Build a bundle from a dataset file: the first ``n_prompts`` requests that fit."""
    if not 1 <= request.max_prompt_tokens <= MAX_EXACT_INTEGER:
        # Refused before any work: bundle.json (RFC 8785) could not hold it.
        raise InputError(
            f"--max-prompt-tokens {request.max_prompt_tokens}: choose 1..{MAX_EXACT_INTEGER}"
        )
    inputs = (loaded.path, loaded.manifest_path, loaded.snapshot_dir, request.dataset_path)
    outputs = (output_dir / PROMPTS_FILE, output_dir / BUNDLE_FILE)
    check_outputs(outputs, force=force, inputs=inputs)
    check_output_dir(output_dir, force=force, inputs=inputs)
    # Read once: the bytes whose hash is checked are the bytes parsed.
    data = read_input(
        request.dataset_path, what="dataset file", cap=MAX_DATASET_BYTES, error=BundleError
    )
    actual = hashlib.sha256(data).hexdigest()
    if actual != request.source.file_sha256:
        raise SnapshotMismatch(
            f"dataset file {request.dataset_path} does not match the given sha256",
            details=[f"expected {request.source.file_sha256}", f"actual   {actual}"],
        )
    files, contents = pinned_tokenizer_files(loaded)
    counter = PromptCounter(contents)
    records: list[PromptRecord] = []
    field = request.source.field or "text"
    for where, asked in _read_dataset(data, request.dataset_path, request.fmt, field):
        record_id = f"p{len(records):05d}"
        try:
            # Validated before counting, so the template only ever sees valid messages.
            PromptRecord.model_validate({**asked, "id": record_id, "n_tokens": 1})
        except ValidationError as exc:
            raise BundleError(
                f"{where}: invalid request",
                details=format_validation_error(exc, whole="(request)"),
            ) from exc
        count = counter.count(asked)
        if 1 <= count <= request.max_prompt_tokens:
            records.append(
                PromptRecord.model_validate({**asked, "id": record_id, "n_tokens": count})
            )
        if len(records) == request.n_prompts:
            break
    if len(records) < request.n_prompts:
        raise BundleError(
            f"{request.dataset_path}: only {len(records)} prompts of at most "
            f"{request.max_prompt_tokens} tokens; {request.n_prompts} requested"
        )
    info = BundleInfo(
        format="detserve-prompt-bundle",
        format_version=1,
        name=request.name,
        source=request.source,
        tokenizer=TokenizerPin(
            model_id=loaded.profile.model.id, model_revision=loaded.revision, files=files
        ),
        n_prompts=len(records),
        max_prompt_tokens=request.max_prompt_tokens,
    )
    atomic_write_bytes(
        outputs[0], b"".join(canonical_bytes(r.line_value()) for r in records), force=force
    )
    atomic_write_bytes(outputs[1], canonical_bytes(info.model_dump()), force=force)
    return info, records
