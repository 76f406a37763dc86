"""Signing keys for claims: made by ``detserve keygen``, never printed, never world-readable.

Ed25519 (the default) or ECDSA P-256, as PKCS#8 PEM (private, mode 0600) and SubjectPublicKeyInfo
PEM (public), through ``cryptography`` and securesystemslib's signer. A private key that group
or others can read is refused, as ssh refuses one; no key's bytes ever appear in a message.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

# securesystemslib.signer's public names, re-exported without __all__ (mypy's strict view).
from securesystemslib.signer import (  # type: ignore[attr-defined]
    CryptoSigner,
    SSlibKey,
)

from detserve.errors import InputError, UsageError
from detserve.fileio import atomic_writer, check_outputs, read_input

#: The largest envelope, sidecar or key file read; real ones are a few kB.
MAX_DOCUMENT_BYTES: Final = 4 * 1024 * 1024

Algorithm = Literal["ed25519", "ecdsa-p256"]
ALGORITHMS: Final[tuple[Algorithm, ...]] = ("ed25519", "ecdsa-p256")


class AttestationKeyError(InputError):
    """A key file that cannot be used."""

    kind = "bad-key"


# --- keys ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    """Where ``keygen`` wrote a key pair (the private key's bytes are never held here)."""

    private_key: Path
    public_key: Path
    algorithm: Algorithm
    keyid: str

    def as_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "private_key": str(self.private_key),
            "public_key": str(self.public_key),
            "algorithm": self.algorithm,
            "keyid": self.keyid,
        }


def algorithm_of(key: SSlibKey) -> Algorithm:
    return "ed25519" if key.keytype == "ed25519" else "ecdsa-p256"


def _sslib_key(public: Any, source: str) -> SSlibKey:
    if isinstance(public, ed25519.Ed25519PublicKey):
        return SSlibKey.from_crypto(public)
    if isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1):
        return SSlibKey.from_crypto(public)
    raise AttestationKeyError(
        f"{source}: a {type(public).__name__.lstrip('_')} key; detserve signs and verifies with "
        "Ed25519 or ECDSA P-256 only"
    )


def generate_key_pair(
    output_dir: Path, *, algorithm: Algorithm = "ed25519", name: str = "detserve"
) -> KeyPair:
    """Write ``NAME.key`` (private, PKCS#8 PEM, 0600) and ``NAME.pub`` (PEM) in ``output_dir``.

    Refuses when either exists: a signing key is never replaced by accident.
    """
    if algorithm not in ALGORITHMS:
        raise UsageError(f"unknown algorithm {algorithm!r}; choose {', '.join(ALGORITHMS)}")
    private_path = Path(output_dir) / f"{name}.key"
    public_path = Path(output_dir) / f"{name}.pub"
    check_outputs([private_path, public_path], force=False)
    signer = CryptoSigner.generate_ed25519() if algorithm == "ed25519" else _generate_ecdsa()
    public_pem = signer.public_key._crypto_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
    )
    with atomic_writer(private_path, force=False, mode=0o600) as handle:
        handle.write(signer.private_bytes)
    try:
        with atomic_writer(public_path, force=False, mode=0o644) as handle:
            handle.write(public_pem)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    return KeyPair(private_path, public_path, algorithm, signer.public_key.keyid)


def _generate_ecdsa() -> CryptoSigner:
    return CryptoSigner.generate_ecdsa(scheme="ecdsa-sha2-nistp256")


def read_limited(path: Path, what: str) -> bytes:
    # a regular file under the cap, checked before it is read (fileio)
    return read_input(Path(path), what=what, cap=MAX_DOCUMENT_BYTES)


def load_public_key(path: Path) -> SSlibKey:
    """The Ed25519 or ECDSA P-256 public key of a PEM file; :class:`InputError` otherwise."""
    data = read_limited(path, "public key")
    try:
        public = load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise AttestationKeyError(
            f"{path}: not a PEM public key",
            hint="pass the .pub file `detserve keygen` wrote (never the private key)",
        ) from exc
    return _sslib_key(public, str(path))


def load_signer(path: Path) -> CryptoSigner:
    """A signer for the unencrypted PKCS#8 PEM private key at ``path``.

    Refused when group or others may read it, as ssh refuses such a key: a signing key others
    can read signs for them too. The key's bytes never appear in a message.
    """
    # A regular file under the cap first (a FIFO or a device is bad input whatever its mode).
    data = read_limited(path, "private key")
    try:
        mode = Path(path).stat().st_mode
    except OSError as exc:
        raise AttestationKeyError(f"cannot read private key {path}: {exc.strerror or exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AttestationKeyError(
            f"private key {path} is readable by others (mode {stat.S_IMODE(mode):04o})",
            hint=f"chmod 600 {path}",
        )
    try:
        private = load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # The library's message can quote the input; say only what kind of failure it was.
        raise AttestationKeyError(
            f"{path}: not an unencrypted PEM private key",
            hint="pass the .key file `detserve keygen` wrote",
        ) from exc
    key = _sslib_key(private.public_key(), str(path))
    return CryptoSigner(private, key)


def public_key_pem(key: SSlibKey) -> str:
    """The SubjectPublicKeyInfo PEM of ``key``."""
    pem: bytes = key._crypto_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    return pem.decode("ascii")
