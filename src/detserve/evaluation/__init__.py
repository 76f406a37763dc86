"""Determinism evaluation: are two run logs the same run, and where do they part?

Three questions, each answered by reading the logs once, in bounded memory whatever their length:

* :func:`evaluate` (:mod:`~detserve.evaluation.pair`): is run B a faithful replay of run A?
* :func:`check_expected_hash` (:mod:`~detserve.evaluation.expected_hash`): is this log the one
  whose sha256 was published?
* :func:`compare_many` (:mod:`~detserve.evaluation.majority`): given one log per node, which
  agree with the majority?

What differs between two samples or two headers is :mod:`~detserve.evaluation.compare`; what
every report shares is :mod:`~detserve.evaluation.report`.

Every log is fully validated (:mod:`detserve.runlog`) before a verdict is given: an invalid log
is a :class:`RunLogError` (exit 2), never a verdict. The functions return reports, whatever the
verdict, because a failed comparison is still a result someone must read; each report's
:meth:`error` is the :class:`VerificationError` to raise when it is not ok (exit 1).
"""

from detserve.evaluation.compare import (
    TEXT_WINDOW,
    TOKEN_WINDOW,
    FieldDifference,
    LogprobDifference,
    PromptMismatch,
    SampleDivergence,
    TextWindow,
    Thresholds,
    TokenWindow,
    header_differences,
)
from detserve.evaluation.expected_hash import (
    HashCheckReport,
    check_expected_hash,
    normalise_sha256,
)
from detserve.evaluation.majority import HashGroup, MajorityReport, compare_many
from detserve.evaluation.pair import (
    DEFAULT_MAX_REPORTED,
    PROGRESS_EVERY,
    DeterminismReport,
    EvalProgress,
    Verdict,
    evaluate,
)
from detserve.evaluation.report import REPORT_FORMAT, REPORT_VERSION, LogRef
from detserve.first_difference import first_difference

__all__ = [
    "DEFAULT_MAX_REPORTED",
    "PROGRESS_EVERY",
    "REPORT_FORMAT",
    "REPORT_VERSION",
    "TEXT_WINDOW",
    "TOKEN_WINDOW",
    "DeterminismReport",
    "EvalProgress",
    "FieldDifference",
    "HashCheckReport",
    "HashGroup",
    "LogRef",
    "LogprobDifference",
    "MajorityReport",
    "PromptMismatch",
    "SampleDivergence",
    "TextWindow",
    "Thresholds",
    "TokenWindow",
    "Verdict",
    "check_expected_hash",
    "compare_many",
    "evaluate",
    "first_difference",
    "header_differences",
    "normalise_sha256",
]
