"""A prompt bundle belongs to its model: which bundle a command samples, and that the bundle was
measured with the tokenizer the profile's snapshot serves.

Which bundle (:func:`bundle_paths`): ``--bundle`` and ``--bundle-pin`` when given, each for its
own field, else the profile's ``prompts.bundle`` and ``prompts.manifest``
(:mod:`detserve.profile_prompts`). A profile that names none, and no flag, is
:class:`~detserve.errors.UnpinnedError` (exit 2) naming the field and the commands that make a
bundle; so is a pin the profile names that does not exist yet.

Which tokenizer (:func:`require_bundle_tokenizer`): ``bundle.json`` records the identity the
prompts were measured with (:class:`~detserve.prompts.TokenizerPin`): a model id, a revision and
the sha256 of each tokenizer file the snapshot held, chat template included. The profile's
identity is its ``model.id``, its ``model.revision`` and, for the same file names, the sha256 of
the files in its snapshot. The names compared are every name of
:data:`~detserve.prompts.TOKENIZER_FILES` (what ``prompts bootstrap`` records when present) and
every other name ``bundle.json`` lists; a name on one side only is a difference, as is another
hash. Any difference is :class:`~detserve.errors.BundleModelMismatch` (exit 1), naming both
identities and each difference, sorted: model id, revision, then missing, extra, changed files.
Without this, a bundle measured on another model is only caught by the first prompt whose token
count the server disagrees with, after the server was started and asked.

It is checked twice, both before the first request: by :func:`load_profile_bundle` against the
profile's manifest, before any snapshot is verified or any container asked or started (a replay
starts no server for a bundle it cannot use), and by the sampler and ``check`` against the
manifest bytes they verify the snapshot against next (read once:
:class:`~detserve.snapshot_state.PinnedManifest`), before they ask the engine: the snapshot
passes only with exactly those digests, so the identity compared is the verified one even if
the manifest file changed in between.

Whether the bundle fits the profile's server (:func:`prompts_within_budget`): every prompt taken,
with the tokens asked, within ``max_model_len``, and a constrained prompt only with a pinned
structured-outputs backend; ``sample`` and ``check`` both ask it before any work.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from detserve.canonical import canonical_bytes
from detserve.errors import BundleModelMismatch, UnpinnedError, UsageError, bounded
from detserve.manifest import load_manifest
from detserve.profile import LoadedProfile
from detserve.prompts import PROMPTS_FILE, TOKENIZER_FILES, PromptBundle, TokenizerPin, load_bundle
from detserve.request_kinds import PromptRecord

#: a bundle-side value (from bundle.json, not validated) is shown at most this long
_SHOWN = 200


def bundle_paths(
    loaded: LoadedProfile, bundle: Path | str | None, bundle_pin: Path | str | None
) -> tuple[Path, Path]:
    """The bundle directory and its pin: each flag that is given, else the profile's field."""
    spec = loaded.profile.prompts
    if spec is None and (bundle is None or bundle_pin is None):
        unset = [
            f"{field}: unset (or pass {flag})"
            for field, flag, value in (
                ("prompts.bundle", "--bundle DIR", bundle),
                ("prompts.manifest", "--bundle-pin FILE", bundle_pin),
            )
            if value is None
        ]
        raise UnpinnedError(
            f"profile {loaded.path} names no prompt bundle",
            details=unset,
            hint=_bootstrap_hint(loaded, "BUNDLE_DIR", "BUNDLE_PIN"),
        )
    if bundle is not None and bundle_pin is not None:
        return Path(bundle), Path(bundle_pin)
    assert spec is not None  # refused above unless both flags are given
    directory = Path(bundle) if bundle is not None else loaded.resolve_path(spec.bundle)
    if bundle_pin is not None:
        return directory, Path(bundle_pin)
    pin = loaded.resolve_path(spec.manifest)
    try:
        present = pin.exists()
    except OSError:
        present = True  # a name too long, say: loading it says why
    if not present:
        raise UnpinnedError(
            f"the prompt bundle profile {loaded.path} names is not pinned yet: no {pin}",
            details=[f"prompts.manifest: {spec.manifest} (not found)"],
            hint=_bootstrap_hint(loaded, str(directory), str(pin)),
        )
    return directory, pin


def _bootstrap_hint(loaded: LoadedProfile, directory: str, pin: str) -> str:
    return (
        f"build a bundle measured on this model with `detserve prompts bootstrap --config "
        f"{loaded.path} --dataset-file FILE --dataset-sha256 SHA256 --n-prompts N "
        f"--output-dir {directory}`, pin it with `detserve hash --snapshot {directory} "
        f"--manifest-output {pin}`, review both, and name them in prompts.bundle and "
        "prompts.manifest"
    )


def load_profile_bundle(
    loaded: LoadedProfile,
    bundle: Path | str | None = None,
    bundle_pin: Path | str | None = None,
) -> PromptBundle:
    """The bundle a command samples (:func:`bundle_paths`), verified against its pin, and refused
    unless it was measured with the tokenizer the profile's manifest pins."""
    directory, pin = bundle_paths(loaded, bundle, bundle_pin)
    prompts = load_bundle(directory, pin)
    manifest = load_manifest(loaded.manifest_path)
    require_bundle_tokenizer(prompts, loaded, manifest.manifest.digests)
    return prompts


def snapshot_tokenizer(
    loaded: LoadedProfile, digests: Mapping[str, str], names: frozenset[str]
) -> TokenizerPin:
    """The profile's tokenizer identity: its model id and revision, and the sha256 in
    ``digests`` (the snapshot's, by relative path) of each of ``names`` the snapshot holds."""
    files = {name: digests[name] for name in sorted(names) if name in digests}
    return TokenizerPin(
        model_id=loaded.profile.model.id, model_revision=loaded.revision, files=files
    )


def _describe(pin: TokenizerPin) -> str:
    files = hashlib.sha256(canonical_bytes(pin.files)).hexdigest()
    return (
        f"{bounded(pin.model_id, _SHOWN)} at revision {bounded(pin.model_revision, _SHOWN)} "
        f"({len(pin.files)} tokenizer files, sha256 of their hashes {files})"
    )


def tokenizer_differences(bundle: TokenizerPin, profile: TokenizerPin) -> list[str]:
    """What differs between the bundle's tokenizer and the profile's, sorted: model id,
    revision, then missing, extra and changed files."""
    lines = []
    if bundle.model_id != profile.model_id:
        lines.append(
            f"model id: bundle {bounded(repr(bundle.model_id), _SHOWN)}, "
            f"profile {profile.model_id!r}"
        )
    if bundle.model_revision != profile.model_revision:
        lines.append(
            f"model revision: bundle {bounded(repr(bundle.model_revision), _SHOWN)}, "
            f"profile {profile.model_revision!r}"
        )
    theirs, ours = bundle.files, profile.files
    for name in sorted(set(theirs) - set(ours)):
        lines.append(
            f"missing: {bounded(repr(name), _SHOWN)} (the bundle was measured with sha256 "
            f"{bounded(theirs[name], _SHOWN)}; the snapshot has no such file)"
        )
    for name in sorted(set(ours) - set(theirs)):
        lines.append(
            f"extra: {name!r} (sha256 {ours[name]} in the snapshot; the bundle was measured "
            "without it)"
        )
    for name in sorted(set(theirs) & set(ours)):
        if theirs[name] != ours[name]:
            lines.append(
                f"changed: {name!r} bundle {bounded(theirs[name], _SHOWN)}, snapshot {ours[name]}"
            )
    return lines


def require_bundle_tokenizer(
    prompts: PromptBundle, loaded: LoadedProfile, digests: Mapping[str, str]
) -> None:
    """Raise :class:`BundleModelMismatch` unless ``prompts`` was measured with the tokenizer of
    the profile's snapshot, whose files hash to ``digests`` (by relative path)."""
    recorded = prompts.info.tokenizer
    names = frozenset(TOKENIZER_FILES) | frozenset(recorded.files)
    served = snapshot_tokenizer(loaded, digests, names)
    differences = tokenizer_differences(recorded, served)
    if differences:
        raise BundleModelMismatch(
            f"prompt bundle {prompts.path} was measured on another model than profile "
            f"{loaded.path} serves\n"
            f"  bundle:  {_describe(recorded)}\n"
            f"  profile: {_describe(served)}",
            details=differences,
            hint="its token counts are another tokenizer's; sample a bundle bootstrapped on this "
            "model (`detserve prompts bootstrap --config ...`), or use the profile the bundle "
            "was measured on",
        )


def prompts_within_budget(
    loaded: LoadedProfile, bundle: PromptBundle, n_prompts: int | None, max_tokens: int
) -> Sequence[PromptRecord]:
    """The first ``n_prompts`` of the bundle; a usage error, naming the first five, when any of
    them with ``max_tokens`` more would not fit the server's ``max_model_len``, or naming the
    first constrained line when the profile pins no structured-outputs backend (vLLM would pick
    one per request: an unpinned input). ``sample`` and ``check`` both ask it."""
    prompts = bundle.take(n_prompts)
    limit = loaded.profile.vllm.max_model_len
    too_long = [p.id for p in prompts if p.n_tokens + max_tokens > limit]
    if too_long:
        raise UsageError(
            f"{len(too_long)} prompt(s) plus --max-tokens {max_tokens} exceed "
            f"max_model_len {limit}: {', '.join(too_long[:5])}"
        )
    constrained = [
        (line, prompt) for line, prompt in enumerate(prompts, start=1) if prompt.constraint
    ]
    if constrained and loaded.profile.vllm.structured_outputs is None:
        line, prompt = constrained[0]
        assert prompt.constraint is not None
        raise UsageError(
            f"{bundle.path / PROMPTS_FILE}:{line} ({prompt.id}): a {prompt.constraint.kind} "
            f"constraint needs a pinned structured-outputs backend; profile {loaded.path} sets "
            f"none ({len(constrained)} constrained line(s))",
            hint="set vllm.structured_outputs.backend (xgrammar, guidance or outlines); vLLM's "
            "'auto' picks a backend per request and is not a pin",
        )
    return prompts
