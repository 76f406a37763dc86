"""One error hierarchy for detserve.

Every failure the core can report is a :class:`DetserveError`. The CLI catches that one base
class, prints :meth:`DetserveError.diagnostics` and exits with :attr:`DetserveError.exit_code`.
Third-party exceptions are converted where they are caught (``raise ManifestError(...) from exc``)
so that nothing raw reaches a user.

Exit codes (the same for every command):

* 0 ok
* 1 verification failed: a mismatch or a divergence (:class:`VerificationError`)
* 2 bad input: usage, invalid profile, manifest, bundle or log (:class:`InputError`)
* 3 environment: engine, registry or hub unreachable, container failed (:class:`EnvironmentFault`)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Final

from detserve.printable import printable

EXIT_OK = 0
EXIT_VERIFICATION = 1
EXIT_INPUT = 2
EXIT_ENVIRONMENT = 3

#: The longest line of an error message, in characters; a longer one is cut and says so. Bounds
#: what user-supplied content (a path, a value) can put on a terminal: a pin (at most 512
#: characters) fits whole, a 20 MiB path does not.
MAX_LINE_CHARS: Final = 2000
#: The most detail lines of one error; the rest are counted, not shown.
MAX_DETAIL_LINES: Final = 100


def bounded(text: str, limit: int = MAX_LINE_CHARS) -> str:
    """``text`` as one line of at most about ``limit`` characters, :func:`printable`.

    The one way an excerpt of user-supplied content enters a message: a cut line says how much
    was cut, so that two long values that differ past the cut never read as equal. Control,
    format and separator characters would let a file name or a value rewrite the terminal (or
    the line a reader trusts): they are shown escaped, never executed.
    """
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit} more characters not shown)"
    return printable(text)


def bounded_lines(lines: Sequence[str], limit: int = MAX_DETAIL_LINES) -> tuple[str, ...]:
    """At most ``limit`` lines, each :func:`bounded`; the lines left out are counted."""
    shown = tuple(bounded(line) for line in lines[:limit])
    if len(lines) > limit:
        shown += (f"... and {len(lines) - limit} more not shown",)
    return shown


class DetserveError(Exception):
    """Base class of every error detserve reports to a user."""

    exit_code: ClassVar[int] = EXIT_INPUT
    #: short machine-readable kind, used by ``--json`` error output
    kind: ClassVar[str] = "error"

    def __init__(
        self,
        message: str,
        *,
        details: Sequence[str] = (),
        hint: str | None = None,
    ) -> None:
        super().__init__(bounded(message))
        self.message: str = message
        self.details: tuple[str, ...] = tuple(details)
        self.hint: str | None = hint

    def __setattr__(self, name: str, value: object) -> None:
        # Every message reaches people and machines through these fields, so they are bounded
        # whenever they are set: here, and where a caller adds a hint to an error it caught.
        # The message is one line: a newline in it can only come from a value it quotes (a
        # server's answer, a file name), where it must be shown, not obeyed; several lines are
        # details.
        if name in ("message", "hint") and isinstance(value, str):
            value = bounded(value)
        elif name == "details" and isinstance(value, tuple | list):
            value = bounded_lines(value)
        super().__setattr__(name, value)

    def diagnostics(self) -> str:
        """A human text: what failed, the items that failed, and what to do next."""
        lines = [self.message]
        lines.extend(f"  {detail}" for detail in self.details)
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)

    def as_json(self) -> dict[str, object]:
        return {
            "error": self.kind,
            "exit_code": self.exit_code,
            "message": self.message,
            "details": list(self.details),
            "hint": self.hint,
        }


# --- exit 1: verification failed ---------------------------------------------------------------


class VerificationError(DetserveError):
    """Something was checked and did not match what was pinned or claimed."""

    exit_code = EXIT_VERIFICATION
    kind = "verification-failed"


class SnapshotMismatch(VerificationError):
    """The files of a snapshot do not match its manifest."""

    kind = "snapshot-mismatch"


class SnapshotChanged(SnapshotMismatch):
    """Files of a snapshot vanished or changed type while detserve read them (a race).

    Exit 1, whether verifying or hashing: what was read is not a stable snapshot, so nothing can
    be vouched for; running again once nothing writes the snapshot is the remedy.
    """

    kind = "snapshot-changed"


class SignatureMismatch(SnapshotMismatch):
    """A snapshot or its manifest does not match a verified model signature: a file the signature
    does not cover, a signed file that is missing, or a digest that is not the signed one."""

    kind = "signature-mismatch"


class SignatureInvalid(VerificationError):
    """A publisher's model signature does not verify with the given trust root: signed by another
    key, a certificate outside the given chain or not for signing, or signed bytes changed."""

    kind = "signature-invalid"


class EvidenceChanged(VerificationError):
    """A file read as evidence (a run log, a transcript) was not the same bytes each time it was
    read: what was verified is not what would be acted on (a race, or a swap)."""

    kind = "evidence-changed"


class PinMismatch(VerificationError):
    """A running container, server or artifact is not the pinned one."""

    kind = "pin-mismatch"


class BundleModelMismatch(VerificationError):
    """A prompt bundle measured with another tokenizer (model id, revision or tokenizer files)
    than the profile's verified snapshot serves: its token counts are another model's."""

    kind = "bundle-model-mismatch"


class ConstraintViolated(VerificationError):
    """The engine returned an output its constraint forbids (and not cut short by max_tokens)."""

    kind = "constraint-violated"


class ChainBroken(VerificationError):
    """The segments of a gateway transcript do not form the hash chain the gateway wrote: one is
    missing, reordered, renamed or substituted."""

    kind = "chain-broken"


class Divergence(VerificationError):
    """Two runs that should be identical are not."""

    kind = "divergence"


# --- exit 2: bad input -------------------------------------------------------------------------


class InputError(DetserveError):
    """The user's input (options, profile, manifest, bundle, log) is invalid."""

    exit_code = EXIT_INPUT
    kind = "bad-input"


class UsageError(InputError):
    kind = "usage"


class ProfileError(InputError):
    kind = "invalid-profile"


class UnpinnedError(ProfileError):
    """A profile still has a pin to fill in before it may be used for this command."""

    kind = "unpinned"


class ManifestError(InputError):
    kind = "invalid-manifest"


class ModelSignatureError(InputError):
    """A model signature file that is not a well-formed signature detserve supports, or whose
    authentic content is not a model manifest detserve can use."""

    kind = "invalid-model-signature"


class SignatureTrustError(InputError):
    """A public key or certificate chain given to verify a model signature cannot be used."""

    kind = "invalid-signature-trust"


class BundleError(InputError):
    kind = "invalid-bundle"


class RunLogError(InputError):
    kind = "invalid-run-log"


class OutputExistsError(InputError):
    kind = "output-exists"


class CanonicalJSONError(InputError):
    """A value canonical JSON (RFC 8785) cannot write: an integer beyond ±(2**53 - 1), NaN or an
    infinity, a lone surrogate, a key that is not a string."""

    kind = "not-canonical-json"


class UnsafeOutputError(InputError):
    """An output that must not be written even with ``--force``: not a regular file, an input."""

    kind = "unsafe-output"


# --- exit 3: environment ------------------------------------------------------------------------


class EnvironmentFault(DetserveError):
    """Something outside detserve failed: engine, registry, hub, container or server."""

    exit_code = EXIT_ENVIRONMENT
    kind = "environment"


class EngineError(EnvironmentFault):
    kind = "engine"


class RegistryError(EnvironmentFault):
    kind = "registry"


class HubError(EnvironmentFault):
    kind = "hub"


class DiskSpaceError(EnvironmentFault):
    """Not enough free space for what a command must write (named with both numbers)."""

    kind = "disk-space"


class ContainerError(EnvironmentFault):
    kind = "container"


class ServerError(EnvironmentFault):
    kind = "server"


class RequestRefused(ServerError):
    """The server answered a request with HTTP 4xx: the request is wrong, retrying cannot help."""

    kind = "request-refused"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        engine_message: str,
        details: Sequence[str] = (),
        hint: str | None = None,
    ) -> None:
        super().__init__(message, details=details, hint=hint)
        self.status = status
        #: the server's own error text (``error.message`` of vLLM's JSON body, else the body)
        self.engine_message = bounded(engine_message)


class Interrupted(EnvironmentFault):
    kind = "interrupted"


class OutputClosed(EnvironmentFault):
    """stdout was closed before the result was written: a reader that went away is not a
    verdict (exit 3, never 1)."""

    kind = "output-closed"
