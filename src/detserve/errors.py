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
from typing import ClassVar

EXIT_OK = 0
EXIT_VERIFICATION = 1
EXIT_INPUT = 2
EXIT_ENVIRONMENT = 3


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
        super().__init__(message)
        self.message = message
        self.details: tuple[str, ...] = tuple(details)
        self.hint = hint

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


class PinMismatch(VerificationError):
    """A running container, server or artifact is not the pinned one."""

    kind = "pin-mismatch"


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


class ContainerError(EnvironmentFault):
    kind = "container"


class ServerError(EnvironmentFault):
    kind = "server"


class Interrupted(EnvironmentFault):
    kind = "interrupted"
