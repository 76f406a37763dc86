"""Replaying a gateway transcript: every exchange sent again, one at a time, and compared.

The claim (one transcript segment) is validated completely and its pins and seed compared with
the verifier's own profile before anything runs (other pins:
:class:`~detserve.replay_plan.NotAReplay`, exit 1). Then the server is verified as the gateway
verifies it (:func:`~detserve.gateway.verification.verify_for_serving`), each exchange's
canonical request is sent as the bytes the gateway sent it
(:func:`~detserve.gateway.upstream_body.upstream_request`; whole, never streamed: only
``stream`` differs from a streamed exchange's body), and the answers are written as a
transcript with the claim's names (its transcript id, segment, previous segment's hash,
exchange ids, deliveries and footer reason: none of them an input of a token), so that a
faithful replay is the same bytes.

The rule for what is incomplete (:mod:`~detserve.evaluation.transcript_pair` judges it):

* an *incomplete exchange* (a stream that ended early, ``n`` tokens recorded) is replayed with
  ``max_tokens`` ``max(n, 1)``: greedy decoding makes the replay's first ``n`` tokens the
  claim's. Its line holds the replay's first ``n`` tokens and the replay's text cut where the
  claim's ended when the claim's text is where the replay's begins (the stream may end inside
  a character not yet decoded); otherwise the replay's whole text, which then diverges. A chat
  stream cut after its opening role chunk recorded no token: its replay is the empty prefix, its
  prompt tokens compared. The comparison is INCOMPLETE when all of it repeats, never IDENTICAL;
* a *cut claim* (no footer: the gateway crashed) is replayed up to its last whole line and the
  replay's transcript is left cut at the same place (no footer), so that the two compare line
  for line; the comparison is CUT (exit 1) even when every line repeats.

An output longer than its line holds (:mod:`~detserve.gateway.line_budget`) was never recorded
by the gateway: it cut such a stream at the chunk that crossed the budget (recorded incomplete,
``engine_failed``, so replayed as its recorded start, above) and refused such a whole answer
(no line). So a replay's output past the budget, the request's own, is not the claim's: it
raises :class:`~detserve.errors.Divergence` (exit 1) naming the exchange, since it has no line
to be compared in, unless it is the claim's output exactly (a transcript written before the
budget, whose line had room: it is written as the claim's was).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from detserve.errors import Divergence, ServerError
from detserve.evaluation.pair import DeterminismReport
from detserve.evaluation.transcript_pair import evaluate_transcripts
from detserve.gateway.line_budget import OutputTooLong, Usage, output_budget
from detserve.gateway.upstream import Output
from detserve.gateway.upstream_body import upstream_request
from detserve.gateway.verification import verify_for_serving
from detserve.identity_watch import IdentityWatch
from detserve.pins import profile_pins
from detserve.profile import LoadedProfile
from detserve.replay_plan import NotAReplay
from detserve.runlog.models import TranscriptExchange, TranscriptHeader
from detserve.runlog.transcript import (
    TranscriptWriter,
    canonical_request,
    read_exchanges,
    validate_transcript,
)
from detserve.runtime.container_spec import manifest_sha256
from detserve.runtime.docker_engine import ContainerEngine
from detserve.snapshot_state import PinnedManifest, lifetime_of, verify_in_lifetime

REPLAY_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class TranscriptPlan:
    """A claim that can be replayed under a profile."""

    claim: Path
    header: TranscriptHeader
    n_exchanges: int
    #: the sha256 of the claim that was validated: the comparison must read these bytes
    sha256: str
    #: the claim has no footer (the gateway did not stop cleanly)
    cut: bool = False


def plan_transcript_replay(claim: Path, loaded: LoadedProfile) -> TranscriptPlan:
    """Validate the claim completely and refuse unless the local pins are the claim's."""
    summary = validate_transcript(claim, allow_cut=True)
    header = summary.header
    local = profile_pins(loaded, manifest_sha256=manifest_sha256(loaded))
    ours = {
        name: value
        for name, value in local.run_pins(
            prompt_bundle_sha256="0" * 64, vllm_version=header.pins.vllm_version
        )
        .model_dump(mode="json")
        .items()
        if name != "prompt_bundle_sha256"
    }
    theirs = header.pins.model_dump(mode="json")
    differences = [
        f"{name}: claim {theirs.get(name)!r}, local {ours[name]!r}"
        for name in sorted(ours)
        if theirs.get(name) != ours[name]
    ]
    if header.seed != loaded.profile.sampling.seed:
        differences.append(f"seed: claim {header.seed!r}, local {loaded.profile.sampling.seed!r}")
    if differences:
        raise NotAReplay(
            f"{claim} was answered under other pins than {loaded.path}: not a replay",
            details=differences,
            hint="replay with the claim's profile, manifest and image",
        )
    return TranscriptPlan(
        claim=claim,
        header=header,
        n_exchanges=summary.n_exchanges,
        cut=summary.cut,
        sha256=summary.sha256,
    )


def _replayed(client: httpx.Client, exchange: TranscriptExchange, model: str, seed: int) -> Output:
    request = exchange.request
    if exchange.incomplete is not None:
        request = request.model_copy(update={"max_tokens": max(1, len(exchange.output_token_ids))})
    path, body = upstream_request(request, model=model, seed=seed, stream=False)
    try:
        response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    except httpx.HTTPError as exc:
        raise ServerError(f"exchange {exchange.index}: POST {path} failed: {exc}") from exc
    if response.status_code != 200:
        raise ServerError(
            f"exchange {exchange.index}: POST {path}: HTTP {response.status_code}",
            details=[response.text[:300]],
        )
    output = Output(request.kind)  # its line budget checked once it is cut as the claim's was
    try:
        output.add_answer(response.json())
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise ServerError(f"exchange {exchange.index}: the answer is not vLLM's") from exc
    if exchange.incomplete is not None:
        output.token_ids = output.token_ids[: len(exchange.output_token_ids)]
        text = "".join(output.text)
        if text.startswith(exchange.text):
            output.text = [exchange.text]  # the replay's text, cut where the claim's ended
    _check_fits(exchange, output)
    return output


def _check_fits(exchange: TranscriptExchange, output: Output) -> None:
    """Raise :class:`~detserve.errors.Divergence` for a replay's output (cut as the claim's
    was) that the gateway would not have recorded: past the request's line budget, the budget
    the gateway held the claim's output to; the claim's own output passes."""
    text = "".join(output.text)
    budget = output_budget(len(canonical_request(exchange.request)))
    try:
        Usage.of(text, output.token_ids, output.prompt_token_ids).check(budget)
    except OutputTooLong as exc:
        claimed = (exchange.prompt_token_ids, exchange.output_token_ids, exchange.text)
        if (tuple(output.prompt_token_ids), tuple(output.token_ids), text) == claimed:
            return  # the claim's line holds it: so will the replay's
        raise Divergence(
            f"exchange {exchange.index}: the replay's output is not the claim's: {exc} (the "
            "gateway records no such output: it cuts a stream, refuses a whole answer)"
        ) from exc


def _delivery(exchange: TranscriptExchange, check: str | None) -> str:
    """The claim's delivery, unless the replay's output makes it impossible (it diverged: a
    violation where the claim's output was delivered, or the reverse)."""
    if exchange.delivery == "delivered" and check == "violated":
        return "withheld"
    if exchange.delivery == "withheld" and check != "violated":
        return "delivered"
    return exchange.delivery


def replay_transcript(
    plan: TranscriptPlan,
    loaded: LoadedProfile,
    output: Path,
    *,
    engine: ContainerEngine,
    full_verify: bool = False,
) -> DeterminismReport:
    """Send every exchange of the claim again, write ``output``, and compare it with the claim.

    The server must be running and bound to the pins; the container's identity and the snapshot
    are checked again before the replay's transcript is closed (for the container's lifetime:
    :mod:`detserve.snapshot_state`; ``full_verify`` hashes every byte both times).
    """
    verified = verify_for_serving(loaded, engine, full_verify=full_verify)
    watch = IdentityWatch(engine, verified.container)
    header = plan.header.model_copy(update={"pins": verified.pins})
    model = verified.pins.served_model_name
    writer = TranscriptWriter(output, header)
    footer = validate_transcript(plan.claim, allow_cut=True).footer
    try:
        with httpx.Client(
            base_url=verified.base_url,
            timeout=httpx.Timeout(REPLAY_TIMEOUT_S, connect=5.0),
            trust_env=False,
        ) as client:
            for exchange in read_exchanges(plan.claim, allow_cut=True):
                answer = _replayed(client, exchange, model, verified.seed)
                fields = answer.fields(exchange.request, exchange.incomplete)
                writer.append(
                    fields
                    | {
                        "delivery": _delivery(exchange, fields["constraint_check"]),
                        "id": exchange.id,
                        "request": exchange.request.model_dump(mode="json"),
                    }
                )
                watch.check()
        watch.check(force=True)
        final = verify_in_lifetime(
            loaded.snapshot_dir,
            PinnedManifest.read(loaded.manifest_path),
            lifetime_of(verified.container),
            full=full_verify,
        )
        if final.manifest_sha256 != verified.manifest_sha256:
            raise NotAReplay(f"the manifest {loaded.manifest_path} changed during the replay")
    except BaseException:
        # A partial replay is no replay: nothing is left that could pass for one.
        writer.close("stopped")
        output.unlink(missing_ok=True)
        raise
    # a cut claim is replayed cut, as the claim is: the two compare line for line
    written = writer.leave_cut() if footer is None else writer.close(footer.reason)
    # the claim as it was planned, the replay as it was written: a file swapped since is refused
    return evaluate_transcripts(plan.claim, output, expected_sha256=(plan.sha256, written))
