"""The gateway launched: its options checked, the profile verified for serving, the ASGI
application built (:func:`build_gateway`) and served until stopped (:func:`serve_gateway`).

Order matters and is kept: the options first, then the bind (another address than loopback only
with an API key), then the transcript directory (refused where others may enter) and the earlier
segments (read and checked completely, their exchanges indexed), then a certificate's signature
and trace, and only then the engine: the pins, snapshot, bound container and served model
(:func:`~detserve.gateway.verification.verify_for_serving`), and the certificate's coverage of
them. Whatever ends the serving, the transcript is closed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from detserve.errors import UsageError
from detserve.fileio import check_output_dir

if TYPE_CHECKING:
    from detserve.gateway.app import Gateway
    from detserve.profile import LoadedProfile
    from detserve.runtime.docker_engine import ContainerEngine


def build_gateway(
    config: LoadedProfile | Path | str,
    *,
    transcript_dir: Path | str,
    api_key: str | None = None,
    concurrency: int = 1,
    certificate: Path | str | None = None,
    certificate_key: Path | str | None = None,
    queue_size: int = 32,
    reverify_interval_s: float,
    identity_interval_s: float = 2.0,
    rotate_exchanges: int | None = None,
    allowed_hosts: Sequence[str] = (),
    engine: ContainerEngine | None = None,
    full_verify: bool = False,
    reverify_bytes_per_s: int | None = None,
    docker_host: str | None = None,
) -> Gateway:
    """The verified gateway's ASGI application, its transcript opened
    (:func:`detserve.api.build_gateway`)."""
    from detserve.certificate import check_certificate_options, verify_certificate
    from detserve.gateway.app import Gateway, GatewaySettings
    from detserve.gateway.guards import checked_hosts
    from detserve.gateway.transcript_segments import index_earlier
    from detserve.gateway.verification import require_gateway_coverage, verify_for_serving
    from detserve.profile import load_profile
    from detserve.runtime.connect import engine_for
    from detserve.sampling_session import lay_out

    if concurrency < 1 or queue_size < 0:
        raise UsageError("--concurrency must be at least 1 and --queue-size at least 0")
    check_certificate_options(
        concurrency,
        certificate,
        certificate_key,
        sequential="the gateway sends one request at a time",
    )
    if reverify_interval_s <= 0 or identity_interval_s <= 0:
        raise UsageError("re-verification intervals must be positive")
    if reverify_bytes_per_s is not None and reverify_bytes_per_s <= 0:
        raise UsageError("the re-verification rate must be positive")
    if rotate_exchanges is not None and rotate_exchanges < 1:
        raise UsageError("--rotate-exchanges must be at least 1")
    hosts = checked_hosts(allowed_hosts)
    loaded = load_profile(config)
    loaded.require_pins()
    inputs: tuple[Path, ...] = (loaded.path, loaded.manifest_path, loaded.snapshot_dir)
    if certificate is not None:
        inputs += (Path(certificate),)
    # where segments are written: not an input, nor inside one (earlier segments may be there)
    check_output_dir(Path(transcript_dir), force=True, inputs=inputs)
    # the earlier runs' segments are input: checked before anything is verified or served
    earlier = index_earlier(Path(transcript_dir))
    # signature and trace before the engine is asked; the pins it covers after
    checked = None
    if certificate is not None and certificate_key is not None:
        checked = verify_certificate(Path(certificate), Path(certificate_key))
    engine = engine_for(engine, docker_host)
    verified = verify_for_serving(loaded, engine, full_verify=full_verify)
    if checked is not None:
        require_gateway_coverage(checked, verified, concurrency)
    lay_out(loaded, engine, concurrency, what="serve")
    settings = GatewaySettings(
        transcript_dir=Path(transcript_dir),
        api_key=api_key,
        concurrency=concurrency,
        queue_size=queue_size,
        identity_interval_s=identity_interval_s,
        reverify_interval_s=reverify_interval_s,
        rotate_exchanges=rotate_exchanges,
        allowed_hosts=hosts,
    )
    if reverify_bytes_per_s is not None:
        settings = replace(settings, reverify_bytes_per_s=reverify_bytes_per_s)
    return Gateway(verified, engine, settings, earlier=earlier)


@dataclass(frozen=True)
class ServeResult:
    """What a gateway run left: its transcript segments (path, sha256), in order."""

    url: str
    segments: tuple[tuple[Path, str], ...]

    def as_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "url": self.url,
            "transcripts": [{"path": str(path), "sha256": sha} for path, sha in self.segments],
        }


def serve_gateway(
    config: LoadedProfile | Path | str,
    *,
    transcript_dir: Path | str,
    host: str = "127.0.0.1",
    port: int,
    secrets_file: Path | str | None = None,
    concurrency: int = 1,
    certificate: Path | str | None = None,
    certificate_key: Path | str | None = None,
    queue_size: int = 32,
    reverify_interval_s: float,
    rotate_exchanges: int | None = None,
    allowed_hosts: Sequence[str] = (),
    on_ready: Callable[[str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    engine: ContainerEngine | None = None,
    full_verify: bool = False,
    reverify_bytes_per_s: int | None = None,
    docker_host: str | None = None,
) -> ServeResult:
    """Serve the verified gateway until stopped (:func:`detserve.api.serve`)."""
    from detserve.gateway.listener import GatewayServer, api_key_from, check_bind

    api_key = api_key_from(Path(secrets_file) if secrets_file is not None else None)
    check_bind(host, api_key)  # before anything is verified or opened
    gateway = build_gateway(
        config,
        transcript_dir=transcript_dir,
        api_key=api_key,
        concurrency=concurrency,
        certificate=certificate,
        certificate_key=certificate_key,
        queue_size=queue_size,
        reverify_interval_s=reverify_interval_s,
        rotate_exchanges=rotate_exchanges,
        allowed_hosts=allowed_hosts,
        engine=engine,
        full_verify=full_verify,
        reverify_bytes_per_s=reverify_bytes_per_s,
        docker_host=docker_host,
    )
    for ignored in gateway.transcript.earlier.ignored:
        if on_warning is not None:
            on_warning(
                f"ignored {ignored}: an empty segment file (its header was never written, as "
                "when the disk was full at a rotation); it claims nothing"
            )
    try:
        server = GatewayServer(gateway, host, port)
    except BaseException:
        gateway.transcript.close("stopped")
        raise
    if on_ready is not None:
        on_ready(server.url)  # the socket listens: connections wait until uvicorn accepts them
    server.run()
    segments = gateway.transcript.close("stopped")
    return ServeResult(url=server.url, segments=tuple(segments))
