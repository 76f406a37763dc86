"""The building blocks of the run-log specification's test vectors (docs/spec/run-log.md).

Records are built as plain dicts and written with ``rfc8785``, never through detserve, so that a
vector says what the specification says and detserve's reader is tested against it. Every
near-miss is a valid file with exactly one defect.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import rfc8785

FORMAT: Final = "detserve-run-log"
FORMAT_VERSION: Final = 5
MAX_EXACT_INTEGER: Final = 2**53 - 1

Record = dict[str, Any]


def jcs(value: Any) -> bytes:
    """RFC 8785 bytes of ``value``, no newline."""
    return rfc8785.dumps(value)


def line(value: Any) -> bytes:
    """One canonical line: JCS then LF."""
    return jcs(value) + b"\n"


def sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    """``data`` with its one occurrence of ``old`` replaced; an error unless there is one."""
    count = data.count(old)
    if count != 1:
        raise ValueError(f"{old!r} occurs {count} times, not once")
    return data.replace(old, new)


@dataclass
class VectorSet:
    """The files of the vectors (by path relative to the manifest) and their manifest entries."""

    files: dict[str, bytes] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list)

    def file(self, path: str, data: bytes) -> str:
        if path in self.files and self.files[path] != data:
            raise ValueError(f"{path} written twice with other bytes")
        self.files[path] = data
        return path

    def add(
        self,
        name: str,
        kind: str,
        files: dict[str, str],
        *,
        verdict: str,
        exit_code: int,
        rule: str | None,
        section: str,
        description: str,
        options: dict[str, Any] | None = None,
        keyid: str | None = None,
    ) -> None:
        if any(entry["name"] == name for entry in self.entries):
            raise ValueError(f"vector {name} twice")
        expect: dict[str, Any] = {"verdict": verdict, "exit": exit_code, "rule": rule}
        if keyid is not None:
            expect["keyid"] = keyid
        self.entries.append(
            {
                "name": name,
                "kind": kind,
                "files": files,
                "options": options or {},
                "expect": expect,
                "section": section,
                "description": description,
            }
        )


# --- the pins and a small prompt bundle --------------------------------------------------------

ENGINE_PINS: Final[Record] = {
    "device": {"gpus": 0, "kind": "cpu"},
    "engine_args": ["--seed", "0", "--max-model-len", "512", "--no-enable-prefix-caching"],
    "entrypoint": None,
    "environment": {"HF_HOME": "/hf-home", "HF_HUB_OFFLINE": "1", "VLLM_BATCH_INVARIANT": "1"},
    "image": "localhost:5000/detserve/vllm-cpu@sha256:" + sha("image"),
    "manifest_sha256": sha("snapshot manifest"),
    "model_id": "detserve/tiny-llama",
    "model_revision": "0123456789abcdef0123456789abcdef01234567",
    "served_model_name": "tiny",
    "vllm_version": "0.6.3",
}
RUN_PINS: Final[Record] = {**ENGINE_PINS, "prompt_bundle_sha256": sha("prompt bundle manifest")}

#: bundle lines as a prompt bundle holds them (``n_tokens`` left out: it is not hashed)
BUNDLE: Final[tuple[Record, ...]] = (
    {"id": "p0000", "prompt": "The capital of France is"},
    {"id": "p0001", "messages": [{"content": "Say hi, «politely».", "role": "user"}]},
    {"id": "p0002", "prompt": "A number:", "constraint": {"regex": "[0-9]+"}},
    {
        "id": "p0003",
        "prompt": "JSON:",
        "stop": ["\n\n"],
        # a schema as its author's text: its members in the author's order
        "constraint": {"json_schema": '{"type":"object","properties":{"a":{"type":"integer"}}}'},
    },
)

#: logprobs whose RFC 8785 forms are the interesting ones: -0 is 0, 1e-6 is positional, 1e-7 not
TRICKY_LOGPROBS: Final = (-0.0, -0.000001234, -1.5e-7, -2.5, -123.456, -1e-6, -0.1, -7.0)


def run_header(n_samples: int, *, logprobs: int | None = None, seed: int = 0) -> Record:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "n_samples": n_samples,
        "pins": copy.deepcopy(RUN_PINS),
        "record": "header",
        "sampling": {"logprobs": logprobs, "max_tokens": 8, "seed": seed, "temperature": 0},
    }


def bundle_sample(index: int, *, logprobs: bool = False) -> Record:
    """The sample of bundle line ``index % 4``, with hashes computed as section 3.4 says."""
    entry = BUNDLE[index % len(BUNDLE)]
    request = {k: v for k, v in entry.items() if k not in {"id", "n_tokens"}}
    prompt_sha256 = sha(entry["prompt"]) if "prompt" in entry else sha(jcs(entry["messages"]))
    constraint = entry.get("constraint")
    output = [(index * 37 + 11 * i) % 1000 for i in range(6 if index % 4 else 8)]
    texts = ("Paris.\n\tIt is “big” \\ 🙂", "Hi!\u0001", "1234", '{"a": 1}')
    finish = ("length", "stop", "length", "stop")[index % 4]
    satisfied = (None, None, False, True)[index % 4]
    return {
        "constraint": None if constraint is None else next(iter(constraint)),
        "constraint_satisfied": satisfied,
        "constraint_sha256": None if constraint is None else sha(jcs(constraint)),
        "finish_reason": finish,
        "index": index,
        "kind": "completion" if "prompt" in entry else "chat",
        "logprobs": (
            [TRICKY_LOGPROBS[(index + i) % len(TRICKY_LOGPROBS)] for i in range(len(output))]
            if logprobs
            else None
        ),
        "output_token_ids": output,
        "prompt_id": entry["id"],
        "prompt_sha256": prompt_sha256,
        "prompt_token_ids": [1, 100 + index, 200 + index, 3],
        "record": "sample",
        "request_sha256": sha(jcs(request)),
        "text": texts[index % 4],
    }


def run_footer(lines: list[bytes], n_samples: int | None = None) -> Record:
    """The footer that matches ``lines`` (the header and the sample lines); ``n_samples`` is
    their count unless given."""
    return {
        "header_sha256": sha(lines[0]),
        "n_samples": len(lines) - 1 if n_samples is None else n_samples,
        "record": "footer",
        "samples_sha256": sha(b"".join(lines[1:])),
    }


def run_log_lines(header: Record, samples: list[Record]) -> list[bytes]:
    """Header, samples and a matching footer, each a canonical line."""
    lines = [line(header), *(line(s) for s in samples)]
    return [*lines, line(run_footer(lines))]


def valid_run_log(n_samples: int = 4, *, logprobs: bool = False, seed: int = 0) -> list[bytes]:
    header = run_header(n_samples, logprobs=1 if logprobs else None, seed=seed)
    return run_log_lines(header, [bundle_sample(i, logprobs=logprobs) for i in range(n_samples)])


def refooted(lines: list[bytes], n_samples: int | None = None) -> list[bytes]:
    """``lines`` (header, samples, old footer) with the footer's hashes recomputed over the
    changed lines, so that a vector holds one defect only."""
    body = lines[:-1]
    return [*body, line(run_footer(body, n_samples))]


# --- run-log vectors: one file, one defect ------------------------------------------------------

Lines = list[bytes]


def log_vector(
    vs: VectorSet, name: str, data: bytes | Lines, rule: str | None, section: str, what: str
) -> None:
    blob = data if isinstance(data, bytes) else b"".join(data)
    path = vs.file(f"run-log/{name}.runlog.jsonl", blob)
    verdict, code = ("valid", 0) if rule is None else ("invalid", 2)
    vs.add(
        f"run-log/{name}",
        "run-log",
        {"log": path},
        verdict=verdict,
        exit_code=code,
        rule=rule,
        section=section,
        description=what,
    )


def edited(lines: Lines, at: int, old: bytes, new: bytes, *, refoot: bool = True) -> Lines:
    """``lines`` with one byte string of line ``at`` replaced; the footer recomputed over the
    result unless ``refoot`` is false (so that the edit is the only defect)."""
    changed = [*lines]
    changed[at] = replace_once(changed[at], old, new)
    return refooted(changed) if refoot else changed


def with_sample(lines: Lines, at: int, change: Callable[[Record], None]) -> Lines:
    """``lines`` with sample line ``at`` rebuilt canonically after ``change``; footer refooted."""
    record = json.loads(lines[at])
    change(record)
    changed = [*lines]
    changed[at] = line(record)
    return refooted(changed)


def with_header(lines: Lines, change: Callable[[Record], None], *, refoot: bool = True) -> Lines:
    record = json.loads(lines[0])
    change(record)
    changed = [line(record), *lines[1:]]
    return refooted(changed) if refoot else changed
