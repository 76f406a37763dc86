"""Determinism diagnosis: tiers, batch variance, verdicts, traces and repro packs.

``detserve check`` measures, against the running pinned server, whether its tokens (and, at tier
2, logprobs) depend on the run or on the batch; a passing check issues a concurrency certificate
(:mod:`detserve.certificate`: evidence about pins, so it lives beside them) that lets
``detserve sample`` keep many requests in flight and still write the concurrency-1 bytes. One
module a concept:

* :mod:`~detserve.diagnosis.measure`: the passes (concurrency x run x order) and what each
  request returned;
* :mod:`~detserve.diagnosis.verdict`: comparisons with the concurrency-1 baseline, first
  divergences and the verdict (pure);
* :mod:`~detserve.diagnosis.check`: the check against the pinned server, with sampling's own
  pre-flight checks and identity watch;
* :mod:`~detserve.diagnosis.trace`: the trace of every request, written and read back;
* :mod:`~detserve.diagnosis.repropack`: the files of a repro pack;
* :mod:`~detserve.diagnosis.report_html`: the self-contained HTML report.
"""
