"""The runtime: the pinned vLLM container, the engine that runs it and the server inside it.

* :mod:`~detserve.runtime.container_spec` turns a pinned profile into the exact container
  configuration sent to the engine (pure: it talks to nothing).
* :mod:`~detserve.runtime.engine` is the container engine (the Docker SDK).
* :mod:`~detserve.runtime.inspection` is what the engine reports: images, containers, mounts.
* :mod:`~detserve.runtime.server` is the vLLM OpenAI-compatible HTTP server.
* :mod:`~detserve.runtime.lifecycle` composes them: start, wait, smoke, stop, run, status, logs.
* :mod:`~detserve.runtime.secrets` reads a strict ``.env`` secrets file.
"""
