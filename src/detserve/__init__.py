"""detserve: pinned, replayable, byte-for-byte verifiable vLLM runs."""

__version__ = "0.1.0"
