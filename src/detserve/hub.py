"""Calls to the Hugging Face hub, with its failures converted where they are caught."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import requests
from huggingface_hub import errors as hub_errors

from detserve.errors import HubError, InputError

DEFAULT_HUB = "https://huggingface.co"

# huggingface_hub 1.x raises requests' errors, 2.x its transport's (exported as errors.HTTPError).
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    httpx.HTTPError,
    requests.RequestException,
    OSError,
) + ((hub_errors.HTTPError,) if hasattr(hub_errors, "HTTPError") else ())


def hub_endpoint(endpoint: str | None) -> str:
    """The hub to ask: ``endpoint``, else huggingface_hub's own (``HF_ENDPOINT``, else
    huggingface.co), without a trailing slash; an address that is not http(s) is refused."""
    from huggingface_hub import constants

    address = (endpoint if endpoint is not None else constants.ENDPOINT).rstrip("/")
    if not address.startswith(("http://", "https://")) or address.endswith("://"):
        raise InputError(
            f"not a hub address: {address!r}", hint="give --endpoint as http(s)://HOST[:PORT]"
        )
    return address


def _configured_hub() -> str:
    """The hub huggingface_hub asks when given no endpoint: ``HF_ENDPOINT``, else
    huggingface.co (read when huggingface_hub is imported)."""
    from huggingface_hub import constants

    return str(constants.ENDPOINT or DEFAULT_HUB).rstrip("/")


@contextmanager
def hub_call(endpoint: str | None, what: str) -> Iterator[str]:
    """Run a hub call; not-found is bad input (exit 2), anything else unreachable (exit 3).

    Yields the address named in every message: ``endpoint``, else the hub huggingface_hub
    asks without one, so that a mirror set by ``HF_ENDPOINT`` is never reported as
    huggingface.co."""
    address = endpoint or _configured_hub()
    try:
        yield address
    except hub_errors.LocalEntryNotFoundError as exc:
        # huggingface_hub's "the hub could not be asked, and no copy is cached": a file not
        # found, by its class, but a hub that did not answer.
        cause = exc.__cause__ or exc
        raise HubError(
            f"cannot reach the Hugging Face hub at {address} for {what}: "
            f"{cause.__class__.__name__}: {cause}",
            hint="check the network, or pass --endpoint for a mirror",
        ) from exc
    except (
        hub_errors.RepositoryNotFoundError,
        hub_errors.RevisionNotFoundError,
        hub_errors.EntryNotFoundError,
    ) as exc:
        raise InputError(
            f"{address}: {what} not found",
            hint="check the id, revision and file name (a gated repository also needs HF_TOKEN)",
        ) from exc
    except hub_errors.HfHubHTTPError as exc:
        raise HubError(f"{address}: the hub refused {what}: {exc}") from exc
    except hub_errors.HFValidationError as exc:
        raise InputError(
            f"{what}: refused by huggingface_hub before asking {address}: {exc}"
        ) from exc
    except (ValueError, KeyError, TypeError) as exc:
        # huggingface_hub parses the answer without checking it: HTML from a proxy, or JSON
        # without the fields it expects, surfaces as these.
        raise HubError(
            f"{address}: the answer for {what} is not what the hub sends: "
            f"{exc.__class__.__name__}: {exc}",
            hint="is --endpoint a Hugging Face hub (or a mirror of its API)?",
        ) from exc
    except _TRANSPORT_ERRORS as exc:
        raise HubError(
            f"cannot reach the Hugging Face hub at {address} for {what}: "
            f"{exc.__class__.__name__}: {exc}",
            hint="check the network, or pass --endpoint for a mirror",
        ) from exc
