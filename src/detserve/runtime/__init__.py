"""The runtime: the pinned vLLM container, the engine that runs it and the server inside it.

* :mod:`~detserve.runtime.container_spec` turns a pinned profile into the exact container
  configuration sent to the engine (pure: it talks to nothing).
* :mod:`~detserve.runtime.docker_engine` is the container engine (the Docker SDK);
  :mod:`~detserve.runtime.docker_host` checks an engine's address and says whether it is this
  host's.
* :mod:`~detserve.runtime.binding` says whether a running container is the one the pins make;
  :mod:`~detserve.runtime.reach` where its server is reached from this host.
* :mod:`~detserve.runtime.inspection` is what the engine reports: images, containers, mounts.
* :mod:`~detserve.runtime.vllm_client` is the vLLM OpenAI-compatible HTTP server.
* :mod:`~detserve.runtime.lifecycle` composes them: start, wait, smoke, stop, run, status, logs.
* :mod:`~detserve.runtime.secrets` reads a strict ``.env`` secrets file.
"""
