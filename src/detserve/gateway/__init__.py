"""The gateway: an OpenAI-compatible server in front of the pinned one, whose every answer is
recorded in a transcript of the run-log family before it is given.

* :mod:`~detserve.gateway.admission`: which requests are answered, and their canonical form;
* :mod:`~detserve.gateway.verification`: what is verified before serving and while serving;
* :mod:`~detserve.gateway.upstream`: the engine's answers, read into an exchange's output;
* :mod:`~detserve.gateway.transcript_segments`: the transcript's segments and the provenance index;
* :mod:`~detserve.gateway.app`: the ASGI application; :mod:`~detserve.gateway.listener`: uvicorn
  and the bind policy; :mod:`~detserve.gateway.metrics`: ``/metrics`` (Prometheus);
* :mod:`~detserve.gateway.replay`: a transcript replayed, exchange by exchange.
"""
