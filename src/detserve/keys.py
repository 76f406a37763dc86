"""Signing keys: made by ``detserve keygen``, read as strictly as their standards, never printed.

Ed25519 (the default) or ECDSA P-256, as PKCS#8 PEM (private, mode 0600) and SubjectPublicKeyInfo
PEM (public), through ``cryptography`` and securesystemslib's signer. Signed claims
(:mod:`detserve.attestation`) and concurrency certificates (:mod:`detserve.certificate`) use them.

Invariants:

* A key file is exactly one PEM block in RFC 7468's strict form (LF line ends, base64 lines of
  64 characters, the last one shorter) and nothing before or after it: ``PUBLIC KEY`` for a public
  key, ``PRIVATE KEY`` (unencrypted PKCS#8) for a private one. Junk around the block, a second
  block or another label is refused: what a reader sees must be what is used.
* An Ed25519 public key is the canonical encoding of a point of the prime-order subgroup
  (libsodium's ``crypto_core_ed25519_is_valid_point``, through PyNaCl). The identity, the other
  small-order points (with which a signature that holds for every message can be made, so that
  anyone could publish such a key and disown every claim), a point with a small-order component
  and a non-canonical encoding are refused. An EC key's point is on P-256 (``cryptography``
  refuses another when the key is loaded; P-256's cofactor is 1).
* A private key is used only when it is a regular file owned by the user running detserve that
  no one else may read or write, in a directory no one else may write, under ancestors owned by
  that user or root that others may write only with the sticky bit set: as ssh's
  ``StrictModes`` refuses a key that someone else could read or replace. What is checked is the
  descriptor that is read (``fstat``), not a second look at the path.
* A key id is computed from the key (securesystemslib's: the sha256 of its canonical form); an id
  written in a document is never taken for who signed it.
* No key's bytes ever appear in a message.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_private_key,
    load_der_public_key,
)
from nacl.bindings import crypto_core_ed25519_is_valid_point

# securesystemslib.signer's public names, re-exported without __all__ (mypy's strict view).
from securesystemslib.signer import (  # type: ignore[attr-defined]
    CryptoSigner,
    SSlibKey,
)

from detserve.errors import InputError, UsageError, bounded
from detserve.fileio import (
    NotRegularFile,
    atomic_writer,
    check_outputs,
    describe_mode,
    open_regular,
    read_input,
)

#: The largest envelope, sidecar or key file read; real ones are a few kB.
MAX_DOCUMENT_BYTES: Final = 4 * 1024 * 1024
#: The longest ``keygen --name``: room for the suffixes within any file system's name limit.
MAX_KEY_NAME_CHARS: Final = 64

Algorithm = Literal["ed25519", "ecdsa-p256"]
ALGORITHMS: Final[tuple[Algorithm, ...]] = ("ed25519", "ecdsa-p256")

#: a plain file name: no separator, no leading dot (no ``..``, no hidden file), printable ASCII
_KEY_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_BASE64_LINE: Final = 64
_BASE64_TEXT: Final = re.compile(r"[A-Za-z0-9+/]+={0,2}")


class AttestationKeyError(InputError):
    """A key file that cannot be used (exit 2)."""

    kind = "bad-key"


# --- public keys --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicKey:
    """A validated Ed25519 or P-256 public key, and its key id computed from it."""

    crypto: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
    algorithm: Algorithm
    keyid: str

    def verifies(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` over ``data`` is this key's (Ed25519 raw, ECDSA DER SHA-256)."""
        try:
            if isinstance(self.crypto, ed25519.Ed25519PublicKey):
                self.crypto.verify(signature, data)
            else:
                self.crypto.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True

    def pem(self) -> bytes:
        """The SubjectPublicKeyInfo PEM of the key."""
        return self.crypto.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def public_key_of(crypto: object, source: str) -> PublicKey:
    """A :class:`PublicKey` of a ``cryptography`` public key; refused unless Ed25519 on its
    prime-order subgroup or ECDSA on P-256."""
    if isinstance(crypto, ed25519.Ed25519PublicKey):
        if not crypto_core_ed25519_is_valid_point(crypto.public_bytes_raw()):
            raise AttestationKeyError(
                f"{source}: not a valid Ed25519 public key: a small-order point, a point outside "
                "the prime-order subgroup or a non-canonical encoding",
                hint="such a key verifies signatures nobody made; use a key `detserve keygen` "
                "wrote",
            )
        return PublicKey(crypto, "ed25519", SSlibKey.from_crypto(crypto).keyid)
    if isinstance(crypto, ec.EllipticCurvePublicKey) and isinstance(crypto.curve, ec.SECP256R1):
        return PublicKey(crypto, "ecdsa-p256", SSlibKey.from_crypto(crypto).keyid)
    raise AttestationKeyError(
        f"{source}: a {type(crypto).__name__.lstrip('_')} key; detserve signs and verifies with "
        "Ed25519 or ECDSA P-256 only"
    )


def pem_der(data: bytes, label: str, source: str, hint: str) -> bytes:
    """The DER of the one ``label`` PEM block that is the whole of ``data`` (RFC 7468's strict
    form, base64 in its one spelling); :class:`AttestationKeyError` otherwise."""
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise AttestationKeyError(f"{source}: not a PEM file (bytes that are not ASCII)") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final line end
    body = lines[1:-1]
    blocks = sum(line.startswith("-----BEGIN ") for line in lines)
    if blocks != 1 or len(lines) < 3 or lines[0] != begin or lines[-1] != end:
        raise AttestationKeyError(
            f"{source}: not exactly one {label} PEM block: the file must hold the block alone, "
            f"from {begin} to {end}, nothing before or after it",
            hint=hint,
        )
    if (
        any(len(line) != _BASE64_LINE for line in body[:-1])
        or not 0 < len(body[-1]) <= _BASE64_LINE
        or not all(_BASE64_TEXT.fullmatch(line) for line in body)
    ):
        raise AttestationKeyError(
            f"{source}: not a strict {label} PEM block (RFC 7468: base64 lines of 64 characters, "
            "LF line ends, one block)",
            hint=hint,
        )
    text = "".join(body)
    try:
        der = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise AttestationKeyError(f"{source}: the {label} block is not base64", hint=hint) from None
    if base64.b64encode(der).decode("ascii") != text:
        raise AttestationKeyError(
            f"{source}: the {label} block is not base64 in its one spelling (pad bits set)",
            hint=hint,
        )
    return der


def load_public_key(path: Path) -> PublicKey:
    """The Ed25519 or ECDSA P-256 public key of a PEM file; :class:`AttestationKeyError` (exit
    2) for anything else, an invalid point included."""
    hint = "pass the .pub file `detserve keygen` wrote (never the private key)"
    source = bounded(str(path))
    data = read_input(Path(path), what="public key", cap=MAX_DOCUMENT_BYTES)
    der = pem_der(data, "PUBLIC KEY", source, hint)
    try:
        crypto = load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # An EC point off the curve is refused here; the library's message is not shown.
        raise AttestationKeyError(
            f"{source}: not a valid public key (SubjectPublicKeyInfo)", hint=hint
        ) from exc
    return public_key_of(crypto, source)


# --- private keys -------------------------------------------------------------------------------


def _unsafe_directory(directory: Path, uid: int, *, immediate: bool) -> str | None:
    """Why another user could replace what ``directory`` holds, or None."""
    try:
        info = directory.stat()
    except OSError as exc:
        return f"cannot check directory {bounded(str(directory))}: {exc.strerror}"
    if info.st_uid not in (uid, 0):
        return f"directory {bounded(str(directory))} is owned by user id {info.st_uid}"
    writable = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and (immediate or not info.st_mode & stat.S_ISVTX):
        return (
            f"directory {bounded(str(directory))} is writable by others "
            f"(mode {stat.S_IMODE(info.st_mode):04o})"
        )
    return None


def check_key_directories(path: Path) -> None:
    """Refuse a key location another user could change: the directory ``path`` names, and that
    of its target when ``path`` is a link (see the module docstring); ``path`` need not exist."""
    uid = os.geteuid()
    # normalised without following links: the directories the path names, then its target's
    absolute = Path(os.path.abspath(path))  # noqa: PTH100
    folders = [absolute.parent]
    resolved = absolute.resolve()
    if resolved.parent != absolute.parent:
        folders.append(resolved.parent)
    seen: set[Path] = set()
    for folder in folders:
        for index, directory in enumerate((folder, *folder.parents)):
            if directory in seen:
                continue
            seen.add(directory)
            why = _unsafe_directory(directory, uid, immediate=index == 0)
            if why is not None:
                raise AttestationKeyError(
                    f"private key {bounded(str(path))} is not in a safe place: {why}",
                    hint="keep signing keys in a directory only you can write (chmod 700), as "
                    "ssh requires",
                )


def _read_private(path: Path) -> bytes:
    source = bounded(str(path))
    try:
        fd, info = open_regular(path)
    except NotRegularFile as exc:
        raise AttestationKeyError(
            f"cannot read private key {source}: it is {describe_mode(exc.mode)}, not a regular "
            "file (refused unread)"
        ) from exc
    except OSError as exc:
        raise AttestationKeyError(f"cannot read private key {source}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb", buffering=0) as handle:
        # The descriptor's own status: what is checked is what is read.
        if info.st_size > MAX_DOCUMENT_BYTES:
            raise AttestationKeyError(
                f"cannot read private key {source}: {info.st_size} bytes, over the limit of "
                f"{MAX_DOCUMENT_BYTES} (refused unread)"
            )
        if info.st_uid != os.geteuid():
            raise AttestationKeyError(
                f"private key {source} is owned by user id {info.st_uid}, not by you "
                f"({os.geteuid()})",
                hint="a key someone else owns can be read or replaced by them; use your own",
            )
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AttestationKeyError(
                f"private key {source} is readable by others "
                f"(mode {stat.S_IMODE(info.st_mode):04o})",
                hint=f"chmod 600 {source}",
            )
        data = handle.read(MAX_DOCUMENT_BYTES + 1)
    if len(data) > MAX_DOCUMENT_BYTES:
        raise AttestationKeyError(f"private key {source} grew past the limit while read")
    return data


def load_signer(path: Path) -> CryptoSigner:
    """A signer for the unencrypted PKCS#8 PEM private key at ``path``.

    Refused (exit 2) unless the key file and its directories are as the module docstring says:
    a signing key others can read signs for them too, and one they can replace signs for them
    instead. The key's bytes never appear in a message.
    """
    check_key_directories(Path(path))
    data = _read_private(Path(path))
    source = bounded(str(path))
    hint = "pass the .key file `detserve keygen` wrote (unencrypted PKCS#8)"
    der = pem_der(data, "PRIVATE KEY", source, hint)
    try:
        private = load_der_private_key(der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # The library's message can quote the input; say only what kind of failure it was.
        raise AttestationKeyError(
            f"{source}: not an unencrypted PKCS#8 private key", hint=hint
        ) from exc
    public = public_key_of(private.public_key(), source)
    return CryptoSigner(private, SSlibKey.from_crypto(public.crypto))


def signer_public_key(signer: CryptoSigner) -> PublicKey:
    """The validated public key of ``signer``, its id computed from it."""
    return public_key_of(signer.public_key._crypto_key(), "the signing key")


# --- keygen -------------------------------------------------------------------------------------


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


def check_key_name(name: str) -> None:
    """Refuse a ``keygen --name`` that is not a plain file name (exit 2)."""
    if not (len(name) <= MAX_KEY_NAME_CHARS and _KEY_NAME.fullmatch(name) and ".." not in name):
        raise UsageError(
            f"--name {bounded(name, 80)!r} is not a plain file name",
            hint=f"letters, digits, '.', '_' and '-', at most {MAX_KEY_NAME_CHARS} characters, "
            "starting with a letter or digit (no '/', no '..'); --output-dir says where",
        )


def generate_key_pair(
    output_dir: Path, *, algorithm: Algorithm = "ed25519", name: str = "detserve"
) -> KeyPair:
    """Write ``NAME.key`` (private, PKCS#8 PEM, 0600) and ``NAME.pub`` (PEM) in ``output_dir``.

    Refuses when either exists (a signing key is never replaced by accident), a name that is not
    a plain file name, and a directory :func:`load_signer` would refuse the key in (a missing
    one is made, mode 0700).
    """
    if algorithm not in ALGORITHMS:
        raise UsageError(f"unknown algorithm {algorithm!r}; choose {', '.join(ALGORITHMS)}")
    check_key_name(name)
    output_dir = Path(output_dir)
    private_path = output_dir / f"{name}.key"
    public_path = output_dir / f"{name}.pub"
    check_outputs([private_path, public_path], force=False)
    try:
        output_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise AttestationKeyError(
            f"cannot make {bounded(str(output_dir))}: {exc.strerror}"
        ) from exc
    check_key_directories(private_path)
    signer = CryptoSigner.generate_ed25519() if algorithm == "ed25519" else _generate_ecdsa()
    public = signer_public_key(signer)
    with atomic_writer(private_path, force=False, mode=0o600) as handle:
        handle.write(signer.private_bytes)
    try:
        with atomic_writer(public_path, force=False, mode=0o644) as handle:
            handle.write(public.pem())
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    return KeyPair(private_path, public_path, algorithm, public.keyid)


def _generate_ecdsa() -> CryptoSigner:
    return CryptoSigner.generate_ecdsa(scheme="ecdsa-sha2-nistp256")
