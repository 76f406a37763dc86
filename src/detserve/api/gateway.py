"""The face's gateway verbs: build and serve the verified, OpenAI-compatible gateway, and
replay one of its transcripts.

Wrappers only over :mod:`detserve.gateway.launch` and :mod:`detserve.claim_replay`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from detserve.api._common import ProfileLike, StageSink

if TYPE_CHECKING:
    from detserve.claim_replay import TranscriptReplayResult
    from detserve.gateway.app import Gateway
    from detserve.gateway.launch import ServeResult
    from detserve.runtime.docker_engine import ContainerEngine


#: where ``serve`` listens unless told otherwise
DEFAULT_GATEWAY_PORT = 8088
#: how often ``serve`` checks the snapshot's record and advances its paced full pass
#: (:mod:`detserve.snapshot_watch`); a change through the file system is caught within it
DEFAULT_REVERIFY_INTERVAL_S = 2.0


def build_gateway(
    config: ProfileLike,
    *,
    transcript_dir: Path | str,
    api_key: str | None = None,
    concurrency: int = 1,
    certificate: Path | str | None = None,
    certificate_key: Path | str | None = None,
    queue_size: int = 32,
    reverify_interval_s: float = DEFAULT_REVERIFY_INTERVAL_S,
    identity_interval_s: float = 2.0,
    rotate_exchanges: int | None = None,
    allowed_hosts: Sequence[str] = (),
    engine: ContainerEngine | None = None,
    full_verify: bool = False,
    reverify_bytes_per_s: int | None = None,
    docker_host: str | None = None,
) -> Gateway:
    """Verify as :func:`sample` does (pins, snapshot, the bound container, the served model) and
    return the gateway's ASGI application object (``gateway.app``), its transcript opened.

    The segments already in ``transcript_dir`` (earlier gateway runs) are read and checked
    completely first, and their exchanges indexed, so that their provenance ids resolve: a
    segment that does not validate raises :class:`~detserve.errors.RunLogError` (exit 2), a
    broken chain :class:`~detserve.errors.ChainBroken` (exit 1), each naming the segment; an
    empty segment file is skipped (``gateway.transcript.earlier.ignored``). A ``transcript_dir``
    others may enter is refused (exit 2); a new one is made ``0700``.

    Above one request in flight only with a ``certificate`` covering these pins and that level,
    verified with the public key ``certificate_key`` (:func:`verify_certificate`).
    The application answers only the ``Host`` values of its bind (``gateway.allow_hosts(host,
    port)``, which :class:`~detserve.gateway.listener.GatewayServer` calls) and ``allowed_hosts``.
    While serving, the snapshot's record is checked every ``reverify_interval_s`` and every byte
    is read again at ``reverify_bytes_per_s`` (default
    :data:`~detserve.snapshot_watch.DEFAULT_BYTES_PER_S`; :mod:`detserve.snapshot_watch`).
    ``full_verify`` hashes every byte before serving even where a record vouches for them.
    """
    from detserve.gateway.launch import build_gateway as build

    return build(
        config,
        transcript_dir=transcript_dir,
        api_key=api_key,
        concurrency=concurrency,
        certificate=certificate,
        certificate_key=certificate_key,
        queue_size=queue_size,
        reverify_interval_s=reverify_interval_s,
        identity_interval_s=identity_interval_s,
        rotate_exchanges=rotate_exchanges,
        allowed_hosts=allowed_hosts,
        engine=engine,
        full_verify=full_verify,
        reverify_bytes_per_s=reverify_bytes_per_s,
        docker_host=docker_host,
    )


def serve(
    config: ProfileLike,
    *,
    transcript_dir: Path | str,
    host: str = "127.0.0.1",
    port: int = DEFAULT_GATEWAY_PORT,
    secrets_file: Path | str | None = None,
    concurrency: int = 1,
    certificate: Path | str | None = None,
    certificate_key: Path | str | None = None,
    queue_size: int = 32,
    reverify_interval_s: float = DEFAULT_REVERIFY_INTERVAL_S,
    rotate_exchanges: int | None = None,
    allowed_hosts: Sequence[str] = (),
    on_ready: Callable[[str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    engine: ContainerEngine | None = None,
    full_verify: bool = False,
    reverify_bytes_per_s: int | None = None,
    docker_host: str | None = None,
) -> ServeResult:
    """Serve the verified, OpenAI-compatible gateway until stopped (Ctrl-C or SIGTERM).

    Binds loopback by default; another address only with an API key (``DETSERVE_API_KEY`` in
    ``secrets_file``). Answers the ``Host`` values of its bind and ``allowed_hosts``; a request
    from a web page of another origin is refused. Every answer is recorded in a transcript under
    ``transcript_dir`` before it is given; ``on_ready`` is called with the gateway's URL once its
    socket listens, ``on_warning`` with what was skipped at start (an empty segment file).
    """
    from detserve.gateway.launch import serve_gateway

    return serve_gateway(
        config,
        transcript_dir=transcript_dir,
        host=host,
        port=port,
        secrets_file=secrets_file,
        concurrency=concurrency,
        certificate=certificate,
        certificate_key=certificate_key,
        queue_size=queue_size,
        reverify_interval_s=reverify_interval_s,
        rotate_exchanges=rotate_exchanges,
        allowed_hosts=allowed_hosts,
        on_ready=on_ready,
        on_warning=on_warning,
        engine=engine,
        full_verify=full_verify,
        reverify_bytes_per_s=reverify_bytes_per_s,
        docker_host=docker_host,
    )


def replay_transcript(
    claim: Path | str,
    config: ProfileLike,
    *,
    output_dir: Path | str,
    stop_after: bool = False,
    force: bool = False,
    on_stage: StageSink | None = None,
    engine: ContainerEngine | None = None,
    full_verify: bool = False,
    docker_host: str | None = None,
) -> TranscriptReplayResult:
    """Re-send every exchange of a gateway transcript (one segment) under your own pinned
    profile, and compare, in one step.

    The claim is validated and its pins compared with the profile's before anything starts
    (other pins: :class:`~detserve.replay_plan.NotAReplay`, exit 1). Then the server is run
    (start, wait with verification, smoke), every exchange is sent again, one at a time, into
    ``output_dir/replay.transcript.jsonl``, and the two are compared into
    ``output_dir/report.json``. Returns the result whatever the verdict: INCOMPLETE (ok) when
    exchanges that ended early repeat their recorded start, CUT (not ok) for a segment cut by a
    crash, replayed up to its last whole line.

    ``full_verify`` hashes every byte of the snapshot even where the record of a full pass in
    the container's lifetime vouches for it (:mod:`detserve.snapshot_state`).
    """
    from detserve.claim_replay import replay_transcript_claim

    return replay_transcript_claim(
        claim,
        config,
        output_dir=output_dir,
        stop_after=stop_after,
        force=force,
        on_stage=on_stage,
        engine=engine,
        full_verify=full_verify,
        docker_host=docker_host,
    )
