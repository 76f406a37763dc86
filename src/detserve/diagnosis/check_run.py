"""``detserve check`` as a command drives it: the options checked, the outputs cleared, the
engine and probe chosen, the plan measured (:func:`~detserve.diagnosis.check.run_check`) and the
repro pack written (:mod:`detserve.diagnosis.repropack`).

Before anything else can fail, a certificate already in the output directory is removed: a check
that fails or is interrupted leaves none. A signing key that cannot sign is refused before any
work. With the default engine the environment is fingerprinted before and after (a change is
ENV_CHANGED). The outcome is returned whatever the verdict; :meth:`CheckOutcome.error` is the
error to raise when it is not a pass (exit 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from detserve.errors import DetserveError, Divergence, UsageError

if TYPE_CHECKING:
    from detserve.diagnosis.check import CheckResult
    from detserve.diagnosis.measure import PassKey
    from detserve.diagnosis.repropack import ReproPack
    from detserve.fingerprint import FingerprintEngine
    from detserve.profile import LoadedProfile
    from detserve.runtime.docker_engine import ContainerEngine


@dataclass(frozen=True)
class CheckOutcome:
    """What :func:`check` measured, its verdict, and the repro pack it wrote."""

    result: CheckResult
    pack: ReproPack

    @property
    def verdict(self) -> str:
        return self.result.diagnosis.verdict.value

    @property
    def passed(self) -> bool:
        """A pass at the requested tier (tier 0 promises no equality; ENV_CHANGED never passes)."""
        return self.result.passed

    @property
    def certificate(self) -> Path | None:
        return self.pack.certificate_path

    def error(self) -> DetserveError | None:
        """The error to raise when this is not a pass at the tier (exit 1); None when it is."""
        if self.passed:
            return None
        return Divergence(
            f"{self.verdict} at tier {self.result.plan.tier}: {self.result.diagnosis.reason}",
            hint=f"the repro pack is in {self.pack.directory} (report.txt, report.html)",
        )

    def as_json(self) -> dict[str, object]:
        return {
            "ok": self.passed,
            "verdict": self.verdict,
            "output_dir": str(self.pack.directory),
            "files": [str(path) for path in self.pack.files],
            "certificate": str(self.certificate) if self.certificate is not None else None,
            "certificate_sha256": (
                self.pack.certificate.sha256 if self.pack.certificate is not None else None
            ),
            "certificate_signed_by": self.pack.signed_by,
            "report": self.pack.report,
        }


def check_profile(
    config: LoadedProfile | Path | str,
    *,
    output_dir: Path | str,
    tier: int = 1,
    runs: int = 3,
    concurrency: Sequence[int],
    n_prompts: int | None = None,
    max_tokens: int | None = None,
    logprobs: int | None = None,
    shuffle: bool = True,
    shuffle_seed: int = 0,
    bundle: Path | str | None = None,
    bundle_pin: Path | str | None = None,
    force: bool = False,
    signing_key: Path | str | None = None,
    on_pass: Callable[[PassKey], None] | None = None,
    engine: ContainerEngine | None = None,
    probe: FingerprintEngine | None = None,
    full_verify: bool = False,
    docker_host: str | None = None,
) -> CheckOutcome:
    """Measure ``config``'s running, verified server and write the repro pack
    (:func:`detserve.api.check`)."""
    from detserve.bundle_binding import load_profile_bundle
    from detserve.diagnosis.check import run_check
    from detserve.diagnosis.measure import CheckPlan, levels_with_baseline
    from detserve.diagnosis.repropack import (
        check_pack_outputs,
        clear_certificate,
        write_repro_pack,
    )
    from detserve.profile import load_profile
    from detserve.runtime.connect import cluster_engines
    from detserve.sampling_session import lay_out

    if tier not in (0, 1, 2):
        raise UsageError(f"--tier {tier}: expected 0, 1 or 2")
    if runs < 1 or any(level < 1 for level in concurrency):
        raise UsageError("--runs and every --concurrency level must be at least 1")
    loaded = load_profile(config)
    loaded.require_pins()
    prompts = load_profile_bundle(loaded, bundle, bundle_pin)
    directory = Path(output_dir)
    key_files = (Path(signing_key),) if signing_key is not None else ()
    inputs = (loaded.path, loaded.manifest_path, loaded.snapshot_dir, *prompts.files, *key_files)
    check_pack_outputs(directory, force=force, inputs=inputs)
    # Before anything else can fail: no earlier certificate outlives a check that does not pass.
    clear_certificate(directory)
    signer = None
    if signing_key is not None:
        from detserve.keys import load_signer

        signer = load_signer(Path(signing_key))  # a key that cannot sign refuses before any work
    plan = CheckPlan(
        tier=tier,  # type: ignore[arg-type]  # checked above
        runs=runs,
        levels=levels_with_baseline(concurrency),
        n_prompts=n_prompts or len(prompts.prompts),
        max_tokens=max_tokens or loaded.profile.sampling.max_tokens,
        logprobs=logprobs if logprobs is not None or tier < 2 else 1,
        shuffle=shuffle,
        shuffle_seed=shuffle_seed,
    )
    nodes = None
    if loaded.profile.cluster is not None:
        nodes = cluster_engines(loaded, engine, docker_host)
        engine = nodes[loaded.profile.cluster.nodes[0].name]
    if engine is None:
        from detserve.runtime.probe import DockerProbe

        docker_probe = (
            DockerProbe.from_env() if docker_host is None else DockerProbe.from_env(docker_host)
        )
        engine, probe = docker_probe.engine, probe or docker_probe
    elif docker_host is not None:
        raise UsageError("give an engine or a docker_host, not both")
    if nodes is None:
        lay_out(loaded, engine, max(plan.levels), what="check")
    result = run_check(
        loaded,
        prompts,
        plan,
        engine=engine,
        probe=probe,
        on_pass=on_pass,
        full_verify=full_verify,
        nodes=nodes,
    )
    pack = write_repro_pack(loaded, result, directory, force=force, signer=signer)
    return CheckOutcome(result=result, pack=pack)
