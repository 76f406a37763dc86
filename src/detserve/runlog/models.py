"""The run-log records: what each line may hold, within which bounds, and their JSON Schema.

Invariants:

* every record is frozen, forbids unknown fields and validates strictly; every field has a
  docstring, which becomes its description in the schema;
* every integer field is bounded within ±(2**53 - 1), what JCS writes exactly
  (:data:`~detserve.canonical.MAX_EXACT_INTEGER`), and every array and string has a maximum
  length, so validation also bounds memory;
* :class:`RunLogSample` declares its fields in sorted order, the order canonical JSON writes
  them in (:mod:`detserve.runlog.lines` relies on it);
* the JSON Schema committed at ``src/detserve/schemas/run-log.schema.json`` is generated from
  these models (:mod:`detserve.runlog.schema`).
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field, TypeAdapter

from detserve.canonical import MAX_EXACT_INTEGER
from detserve.imageref import DIGEST_REF_PATTERN

# re-exported: a transcript's exchange holds a request (its own module), every record the base
from detserve.runlog.exchange_request import ChatMessage as ChatMessage
from detserve.runlog.exchange_request import ExchangeRequest as ExchangeRequest
from detserve.runlog.layout import LayoutPins
from detserve.runlog.record_base import MAX_TEXT_CHARS as MAX_TEXT_CHARS
from detserve.runlog.record_base import MAX_TOKENS as MAX_TOKENS
from detserve.runlog.record_base import Record as _Record

FORMAT: Final = "detserve-run-log"
#: 5: an exchange's request records its constraint field as sent to the engine, the JSON text of
#: ``response_format`` or ``structured_outputs`` (key order and number spellings kept), not a
#: canonical ``constraint`` object whose RFC 8785 form reordered a schema's properties; an
#: exchange records its ``delivery``, and ``incomplete`` names more causes (a stopped gateway).
#: 4: a transcript's exchange records ``constraint_check``, the gateway's check of the output
#: against the request's constraint, and a request may carry a ``json_object`` constraint.
#: 3: the header holds no ``sampling.concurrency`` (how many requests were in flight is not an
#: input of the tokens a certified server generates, so a log sampled at a certified concurrency
#: is byte-identical to the concurrency-1 log; the concurrency goes to the sidecar), and each
#: sample records its request kind, constraint and request hash.
#: 2: RFC 8785 (JCS) lines and integers within ±(2**53 - 1); 1 was Python's ``json.dumps`` form.
FORMAT_VERSION: Final = 5

#: The longest line read, newline included; a longer one is refused before it is parsed. Parsing
#: takes a multiple of a line's size in memory (docs/performance.md), so this is what bounds the
#: reader's memory. A sample of 1M prompt and 1M output tokens with logprobs fits.
MAX_LINE_BYTES: Final = 8 * 1024 * 1024
#: The most samples in one log.
MAX_SAMPLES: Final = 10**9

# Patterns are ECMA-262 and Python compatible; each fixed-length one is paired with its length.
_SHA256_PATTERN: Final = r"^[0-9a-f]{64}$"
_COMMIT_PATTERN: Final = r"^[0-9a-f]{40}$"
_MODEL_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"
_FINISH_REASON_PATTERN: Final = r"^[a-z_]+$"
#: why generation stopped (``length``, ``stop``, ...), as a sample's or an exchange's line holds it
FinishReason = Annotated[str, Field(min_length=1, max_length=32, pattern=_FINISH_REASON_PATTERN)]

Sha256Hex = Annotated[str, Field(min_length=64, max_length=64, pattern=_SHA256_PATTERN)]
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]
TokenIds = Annotated[tuple[TokenId, ...], Field(max_length=MAX_TOKENS)]
Logprob = Annotated[float, Field(allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=256)]


_ENV_NAME_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]*$"
EnvName = Annotated[str, Field(min_length=1, max_length=128, pattern=_ENV_NAME_PATTERN)]


class DevicePins(_Record):
    """What the server ran on, as far as it is the same on every host that replays it."""

    gpus: Annotated[int, Field(ge=0, le=1024)]
    """The number of GPUs requested (0 on a CPU). Which GPUs, by id, is the host's business."""

    kind: Literal["cpu", "nvidia"]
    """The device the engine ran on."""


class EnginePins(LayoutPins):
    """What fixes the server: every pin of a run but the prompt bundle.

    Only what decides the tokens: a profile's file name or directory, the host and the container's
    id are not pins (they go to the sidecar), so a verifier who names things differently still
    replays the claim. A gateway transcript's header holds these (its requests are its own lines).
    """

    device: DevicePins
    """The device request: CPU, or how many GPUs."""

    engine_args: Annotated[
        tuple[Annotated[str, Field(max_length=4096)], ...], Field(max_length=1024)
    ]
    """The engine arguments the container runs, in order."""

    entrypoint: (
        Annotated[tuple[Annotated[str, Field(max_length=4096)], ...], Field(max_length=16)] | None
    )
    """The container's entrypoint when the profile sets one; null for the image's own."""

    environment: Annotated[
        dict[EnvName, Annotated[str, Field(max_length=4096)]],
        Field(max_length=256, json_schema_extra={"additionalProperties": False}),
    ]
    """The container's environment as detserve sets it (secrets excluded), by name."""

    image: Annotated[str, Field(max_length=512, pattern=DIGEST_REF_PATTERN)]
    """The runtime image, ``REPO@sha256:<64 hex>``."""

    manifest_sha256: Sha256Hex
    """sha256 of the snapshot manifest the snapshot verified against, before and after sampling."""

    model_id: Annotated[str, Field(min_length=3, max_length=256, pattern=_MODEL_ID_PATTERN)]
    """Hugging Face model id, ``ORG/NAME``."""

    model_revision: Annotated[str, Field(min_length=40, max_length=40, pattern=_COMMIT_PATTERN)]
    """The model repository commit, 40 hex digits."""

    served_model_name: Name
    """The model name the server serves and requests name."""

    vllm_version: Annotated[str, Field(min_length=1, max_length=128)]
    """The version the server reported."""


class RunPins(EnginePins):
    """Everything a replay of a sampled run must hold fixed to be a replay, and nothing else."""

    prompt_bundle_sha256: Sha256Hex
    """sha256 of the prompt bundle."""


class SamplingParams(_Record):
    """How every prompt was sampled."""

    temperature: Annotated[float, Field(ge=0, le=0)]
    """Always 0: greedy decoding."""

    seed: Annotated[int, Field(ge=0, le=MAX_EXACT_INTEGER)]
    """The seed of the engine and of every request; at most 2**53 - 1, what JCS writes exactly."""

    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)]
    """Maximum output tokens per prompt."""

    logprobs: Annotated[int, Field(ge=0, le=1024)] | None
    """The ``logprobs`` request parameter, or null when logprobs were not requested."""


class RunLogHeader(_Record):
    """Line 1 of a run log."""

    record: Literal["header"] = "header"
    """Record type."""

    format: Literal["detserve-run-log"] = FORMAT
    """File format name."""

    format_version: Literal[5] = FORMAT_VERSION
    """File format version."""

    pins: RunPins
    """The pinned inputs."""

    sampling: SamplingParams
    """The sampling parameters."""

    n_samples: Annotated[int, Field(ge=1, le=MAX_SAMPLES)]
    """The number of sample lines that follow."""


class RunLogSample(_Record):
    """One prompt and what the server generated for it.

    The fields are declared in sorted order, the order canonical JSON writes them in, so that
    pydantic's own serialiser can stand in for it (see :func:`_fast_sample_line`).
    """

    constraint: Literal["json_schema", "regex", "choice", "grammar", "json_object"] | None
    """The kind of the request's structured-output constraint; null when unconstrained
    (``json_object`` only for a gateway exchange compared as a sample)."""

    constraint_satisfied: bool | None
    """Whether the output satisfies the constraint, as detserve checked it after sampling (a JSON
    Schema, a full regex match, a choice, a Lark grammar); false only with ``finish_reason``
    ``length``; null when unconstrained."""

    constraint_sha256: Sha256Hex | None
    """sha256 of the constraint's canonical JSON (the constraint itself is in the prompt
    bundle); null when unconstrained."""

    finish_reason: FinishReason
    """Why generation stopped: ``length``, ``stop``, ..."""

    index: Annotated[int, Field(ge=0, lt=MAX_SAMPLES)]
    """Position in the log, from 0."""

    kind: Literal["completion", "chat"]
    """The request kind: a completion of ``prompt``, or a chat of ``messages`` rendered by the
    pinned chat template."""

    logprobs: Annotated[tuple[Logprob, ...], Field(max_length=MAX_TOKENS)] | None
    """The logprob of each generated token, or null when the header's ``logprobs`` is null."""

    output_token_ids: TokenIds
    """The generated tokens."""

    prompt_id: Name
    """The prompt's id in the prompt bundle."""

    prompt_sha256: Sha256Hex
    """sha256 of the prompt: of its UTF-8 text for a completion, of the canonical JSON of its
    messages for a chat."""

    prompt_token_ids: Annotated[tuple[TokenId, ...], Field(min_length=1, max_length=MAX_TOKENS)]
    """The prompt as the server tokenized it."""

    record: Literal["sample"] = "sample"
    """Record type."""

    request_sha256: Sha256Hex
    """sha256 of the request as the bundle line holds it, without ``id`` and ``n_tokens``:
    prompt or messages, stop strings and constraint, in canonical JSON."""

    text: Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
    """The generated text, as the server decoded it."""


class RunLogFooter(_Record):
    """The last line of a run log."""

    record: Literal["footer"] = "footer"
    """Record type."""

    n_samples: Annotated[int, Field(ge=1, le=MAX_SAMPLES)]
    """The number of sample lines, as in the header."""

    header_sha256: Sha256Hex
    """sha256 of the exact bytes of the header line, newline included."""

    samples_sha256: Sha256Hex
    """sha256 of the exact bytes of all sample lines, newlines included."""


# --- gateway transcripts: the same family of lines, for exchanges a client asked for ---------

_EXCHANGE_ID_PATTERN: Final = r"^[0-9a-f]{32}$"
ExchangeId = Annotated[str, Field(min_length=32, max_length=32, pattern=_EXCHANGE_ID_PATTERN)]
#: The gateway's check of an output against its constraint (:mod:`detserve.gateway.output_check`).
ConstraintCheck = Literal["satisfied", "violated", "cut", "not_checked"]
Delivery = Literal["delivered", "partial", "undelivered", "withheld"]
Incomplete = Literal[
    "client_disconnected", "client_stalled", "engine_failed", "gateway_failed", "gateway_stopped"
]


class TranscriptHeader(_Record):
    """Line 1 of a gateway transcript: the pins every exchange below was answered under."""

    record: Literal["transcript"] = "transcript"
    """Record type."""

    format: Literal["detserve-run-log"] = FORMAT
    """File format name."""

    format_version: Literal[5] = FORMAT_VERSION
    """File format version."""

    pins: EnginePins
    """The pinned inputs of the server."""

    previous_sha256: Sha256Hex | None
    """sha256 of the previous segment of this transcript (rotation); null for segment 0."""

    seed: Annotated[int, Field(ge=0, le=MAX_EXACT_INTEGER)]
    """The seed of the engine and of every request; every request was greedy."""

    segment: Annotated[int, Field(ge=0, le=MAX_SAMPLES)]
    """The segment's number, from 0; a transcript is rotated into segments."""

    transcript_id: ExchangeId
    """Names the gateway run the segments belong to (random; not an input of any token)."""


class TranscriptExchange(_Record):
    """One exchange: a client's canonical request and what the engine answered."""

    constraint_check: ConstraintCheck | None
    """The output checked against the request's constraint: ``satisfied``, ``violated`` (the
    client was refused the output), ``cut`` (unsatisfied, but cut by ``max_tokens`` or a stream
    that ended early) or ``not_checked`` (a constraint detserve cannot check); null when
    unconstrained. A function of the request and the output, so a faithful replay repeats it."""

    delivery: Delivery
    """What the client was sent of the output: ``delivered`` (all: the client was connected when
    the line was synced, then the answer was sent), ``partial`` (a stream's first tokens),
    ``undelivered`` (no token: the client had gone, or a constrained stream's tokens waited for
    the check) or ``withheld`` (it violates its constraint). A replay repeats the claim's."""

    finish_reason: FinishReason | None
    """Why generation stopped (``length``, ``stop``, ...); null when the exchange is incomplete."""

    id: ExchangeId
    """The exchange's provenance id, as the answer named it (random; not an input)."""

    incomplete: Incomplete | None
    """Why a stream ended early (the output is what the engine had sent): the client went away,
    stalled (read nothing for long: dropped), the engine failed, the gateway failed or was
    stopped; null when the exchange completed."""

    index: Annotated[int, Field(ge=0, lt=MAX_SAMPLES)]
    """Position in the segment, from 0."""

    output_token_ids: TokenIds
    """The generated tokens."""

    prompt_token_ids: Annotated[tuple[TokenId, ...], Field(min_length=1, max_length=MAX_TOKENS)]
    """The prompt as the server tokenized it (for a chat: as the pinned template rendered it)."""

    record: Literal["exchange"] = "exchange"
    """Record type."""

    request: ExchangeRequest
    """The request, in canonical form."""

    text: Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
    """The generated text, as the server decoded it."""


class TranscriptFooter(_Record):
    """The last line of a transcript segment that was closed (rotated, or the server stopped).

    A segment without one was cut: the gateway did not stop cleanly; every line before the cut
    is still valid, each having been synced to disk before its answer finished.
    """

    record: Literal["transcript-end"] = "transcript-end"
    """Record type."""

    n_exchanges: Annotated[int, Field(ge=0, le=MAX_SAMPLES)]
    """The number of exchange lines."""

    header_sha256: Sha256Hex
    """sha256 of the exact bytes of the header line, newline included."""

    exchanges_sha256: Sha256Hex
    """sha256 of the exact bytes of all exchange lines, newlines included."""

    reason: Literal["rotated", "stopped"]
    """Why the segment was closed."""


AnyRecord = (
    RunLogHeader
    | RunLogSample
    | RunLogFooter
    | TranscriptHeader
    | TranscriptExchange
    | TranscriptFooter
)
RunLogRecord = Annotated[AnyRecord, Field(discriminator="record")]
#: Validates one line's JSON as whichever record its ``record`` field names.
RECORD_ADAPTER: TypeAdapter[AnyRecord] = TypeAdapter(RunLogRecord)
