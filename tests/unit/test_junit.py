"""``--junit-xml``: the JUnit report CI systems display, read back by a JUnit consumer.

The reports are read with ``junitparser``, the library GitHub's most used JUnit publisher
(EnricoMi/publish-unit-test-result-action) reads them with, and with the standard library's
expat parser, which refuses every character XML 1.0 forbids. No JUnit XSD is vendored: the
common ones live in other projects' repositories, whose files this project does not copy.

Each report must say what the exit code says (a pass only for exit 0; a failure for exit 1; an
error for 2 and 3), be written for failures too, leave the exit code unchanged, and go through
the output checks of every detserve output.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import junitparser
import pytest
import typer

from detserve.cli.junit_option import JunitXmlOption, junit_xml_report, record_outcome
from detserve.errors import EXIT_INPUT, EXIT_OK, EXIT_VERIFICATION, Divergence, UsageError
from detserve.junit import JunitCase, Outcome, junit_document

from .committed import BUNDLE_DIR, BUNDLE_PIN, TINY_CONFIG, CliRunner
from .conftest import TinyWorkspace
from .runlog_builders import make_sample, write_log
from .test_check import check_command, varying_rig
from .test_sampling_faults import Rig

#: every character class XML 1.0 forbids or a reader's screen would act on, with XML's own
#: specials: C0 controls but tab/newline/CR, DEL and C1, lone surrogates (an undecodable file
#: name), the noncharacters U+FFFE/U+FFFF, a bidi override, and markup
HOSTILE = (
    "".join(chr(code) for code in range(0x20) if chr(code) not in "\t\n\r")
    + "\x7f\x85\x9b\udcff\ud800\ufffe\uffff\u202e"
    + "<tag attr=\"v\">&amp; ]]> 'q'"
)


def _report(path: Path) -> junitparser.TestSuite:
    """The one suite of a report, read by junitparser after a strict parse by expat."""
    ET.fromstring(path.read_bytes())  # expat: refuses any character XML 1.0 forbids
    xml = junitparser.JUnitXml.fromfile(str(path))
    suites = list(xml)
    assert len(suites) == 1
    suite = suites[0]
    assert isinstance(suite, junitparser.TestSuite)
    return suite


def _only_case(path: Path) -> junitparser.TestCase:
    cases = list(_report(path))
    assert len(cases) == 1
    return cases[0]


def _agrees(code: int, case: junitparser.TestCase) -> None:
    """The case says what the exit code says: pass 0, failure 1, error 2 or 3."""
    assert case.is_passed == (code == EXIT_OK)
    assert case.is_failure == (code == EXIT_VERIFICATION)
    assert case.is_error == (code > EXIT_VERIFICATION)


def _logs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Run logs A, a byte-identical copy, and one whose sample 1 diverges."""
    run_a = write_log(tmp_path / "a.runlog.jsonl", 3)
    same = tmp_path / "same.runlog.jsonl"
    same.write_bytes(run_a.read_bytes())
    samples = [make_sample(i) for i in range(3)]
    samples[1]["output_token_ids"][3] += 1
    divergent = write_log(tmp_path / "b.runlog.jsonl", 3, samples=samples)
    return run_a, same, divergent


# --- the document ---------------------------------------------------------------------------


def test_hostile_text_is_escaped_and_the_document_parses(tmp_path: Path) -> None:
    case = JunitCase(
        classname="detserve." + HOSTILE,
        name=HOSTILE,
        seconds=0.5,
        outcome=Outcome.FAILURE,
        exit_code=EXIT_VERIFICATION,
        kind=HOSTILE,
        message=HOSTILE,
        details=f"first line {HOSTILE}\nsecond line",
        output=HOSTILE,
    )
    document = junit_document(HOSTILE, [case], hostname=HOSTILE)
    path = tmp_path / "hostile.xml"
    path.write_bytes(document)
    text = document.decode("utf-8")  # no lone surrogate could be encoded
    forbidden = [c for c in text if ord(c) < 0x20 and c not in "\t\n\r"]
    forbidden += [c for c in text if c in "\x7f\x85\x9b\ufffe\uffff\u202e"]
    assert forbidden == []
    suite = _report(path)
    read = next(iter(suite))
    assert read.name is not None
    assert "\\x1b" in read.name
    assert "\\udcff" in read.name
    assert "\\u202e" in read.name
    # XML's own specials survive as the text they are, escaped by the writer, read back equal
    assert "<tag attr=\"v\">&amp; ]]> 'q'" in read.name
    [failure] = read.result
    assert isinstance(failure, junitparser.Failure)
    assert failure.message is not None
    assert "\\x00" in failure.message
    assert failure.text is not None
    assert failure.text.endswith("\nsecond line")
    assert read.system_out is not None
    assert "\\x08" in read.system_out
    assert suite.hostname is not None
    assert "\\x01" in suite.hostname


def test_counts_are_computed_from_the_cases() -> None:
    cases = [
        JunitCase.of("detserve.x", "pass", 1.0, lines=["ok"]),
        JunitCase.of("detserve.x", "fail", 1.0, error=Divergence("differs")),
        JunitCase.of("detserve.x", "bad", 1.0, error=UsageError("no")),
        JunitCase.of("detserve.x", "bug", 1.0, error=ValueError("oops")),
    ]
    assert [case.outcome for case in cases] == [
        Outcome.PASSED,
        Outcome.FAILURE,
        Outcome.ERROR,
        Outcome.ERROR,
    ]
    assert [case.exit_code for case in cases] == [0, 1, 2, 3]
    root = ET.fromstring(junit_document("detserve x", cases))
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "1", "2")
    assert cases[3].kind == "internal-error"


# --- eval-determinism -----------------------------------------------------------------------


@pytest.mark.parametrize("json_mode", [False, True])
def test_each_verdict_is_reported_and_the_exit_code_is_unchanged(
    tmp_path: Path, cli: CliRunner, json_mode: bool
) -> None:
    run_a, same, divergent = _logs(tmp_path)
    extra = ["--json"] if json_mode else []
    outcomes = {}
    for label, run_b in (
        ("identical", same),
        ("divergent", divergent),
        ("missing", tmp_path / "absent.jsonl"),
    ):
        args = ["eval-determinism", "--run-a", run_a, "--run-b", run_b, *extra]
        bare = cli(*args)
        report = tmp_path / f"{label}.xml"
        reported = cli(*args, "--junit-xml", report)
        assert reported.code == bare.code, reported.text
        assert reported.out == bare.out
        outcomes[label] = (reported.code, _only_case(report))
    code, case = outcomes["identical"]
    assert code == EXIT_OK
    assert case.is_passed
    assert "IDENTICAL" in (case.system_out or "")
    assert case.classname == "detserve.eval-determinism"
    assert case.name == f"eval-determinism {same} against {run_a}"
    code, case = outcomes["divergent"]
    assert code == EXIT_VERIFICATION
    assert case.is_failure
    assert not case.is_passed
    [failure] = case.result
    assert failure.type == "divergence"
    assert "1 of 3 samples differ" in (failure.message or "")
    assert "output token 3 differs" in (failure.text or "")
    code, case = outcomes["missing"]
    assert code == EXIT_INPUT
    assert case.is_error
    [error] = case.result
    assert error.type == "invalid-run-log"


def test_a_usage_error_in_the_command_is_reported_as_an_error(
    tmp_path: Path, cli: CliRunner
) -> None:
    run_a, same, _ = _logs(tmp_path)
    report = tmp_path / "usage.xml"
    done = cli(
        "eval-determinism", "--run-a", run_a, "--expected-hash", "0" * 64, "--run-b", same,
        "--junit-xml", report,
    )  # fmt: skip
    assert done.code == EXIT_INPUT
    case = _only_case(report)
    assert case.is_error
    assert case.result[0].type == "usage"
    suite = _report(report)
    assert suite.errors == 1
    assert suite.failures == 0
    assert suite.tests == 1


def test_a_hostile_file_name_reaches_the_report_escaped(tmp_path: Path, cli: CliRunner) -> None:
    run_a, _, divergent = _logs(tmp_path)
    name = os.fsdecode(b"b\x1b[2J\x01\xff\xe2\x80\xae.runlog.jsonl")  # \xff: a lone surrogate
    hostile = tmp_path / name
    divergent.rename(hostile)
    report = tmp_path / "hostile.xml"
    done = cli("eval-determinism", "--run-a", run_a, "--run-b", hostile, "--junit-xml", report)
    assert done.code == EXIT_VERIFICATION
    case = _only_case(report)
    assert case.name is not None
    assert "b\\x1b[2J\\x01\\udcff\\u202e.runlog.jsonl" in case.name
    assert "\x1b" not in report.read_bytes().decode("utf-8")


# --- the path: checked as every output is ----------------------------------------------------


def test_the_report_path_is_checked_as_every_output_is(tmp_path: Path, cli: CliRunner) -> None:
    run_a, same, _ = _logs(tmp_path)
    before = run_a.read_bytes()
    args = ["eval-determinism", "--run-a", run_a, "--run-b", same]
    as_input = cli(*args, "--junit-xml", run_a, "--force")
    assert as_input.code == EXIT_INPUT
    assert "it is the input" in as_input.err
    assert run_a.read_bytes() == before
    report_json = tmp_path / "r.json"
    as_report = cli(*args, "--report-output", report_json, "--junit-xml", report_json)
    assert as_report.code == EXIT_INPUT
    assert "are the same file" in as_report.err
    assert not report_json.exists()
    link = tmp_path / "link.xml"
    link.symlink_to(tmp_path / "elsewhere.xml")
    as_link = cli(*args, "--junit-xml", link, "--force")
    assert as_link.code == EXIT_INPUT
    assert "symbolic link" in as_link.err
    assert not (tmp_path / "elsewhere.xml").exists()
    fifo = tmp_path / "fifo.xml"
    os.mkfifo(fifo)
    as_fifo = cli(*args, "--junit-xml", fifo, "--force")
    assert as_fifo.code == EXIT_INPUT
    assert "FIFO" in as_fifo.err
    existing = tmp_path / "existing.xml"
    existing.write_text("kept", encoding="utf-8")
    refused = cli(*args, "--junit-xml", existing)
    assert refused.code == EXIT_INPUT
    assert "refusing to overwrite" in refused.err
    assert existing.read_text(encoding="utf-8") == "kept"
    forced = cli(*args, "--junit-xml", existing, "--force")
    assert forced.code == EXIT_OK
    assert _only_case(existing).is_passed


def test_verify_refuses_a_report_inside_the_snapshot_store(
    tiny_workspace: TinyWorkspace, cli: CliRunner, tmp_path: Path
) -> None:
    inside = tiny_workspace.model_dir / "report.xml"
    refused = cli("verify", "--config", tiny_workspace.config, "--junit-xml", inside)
    assert refused.code == EXIT_INPUT
    assert "inside the input" in refused.err
    assert not inside.exists()
    manifest = tiny_workspace.manifest
    before = manifest.read_bytes()
    forced = cli(
        "check", "--config", tiny_workspace.config, "--output-dir", tmp_path / "pack",
        "--junit-xml", manifest, "--force",
    )  # fmt: skip
    assert forced.code == EXIT_INPUT
    assert "it is the input" in forced.err
    assert manifest.read_bytes() == before
    report = tmp_path / "verify.xml"
    done = cli("verify", "--config", tiny_workspace.config, "--junit-xml", report)
    assert done.code == EXIT_OK, done.text
    case = _only_case(report)
    assert case.is_passed
    assert "OK: 6 files" in (case.system_out or "")


def test_a_changed_snapshot_file_is_a_failure(
    tiny_workspace: TinyWorkspace, cli: CliRunner, tmp_path: Path
) -> None:
    blob = tiny_workspace.blob_of("config.json")
    blob.write_bytes(blob.read_bytes() + b" ")
    report = tmp_path / "verify.xml"
    done = cli("verify", "--config", tiny_workspace.config, "--junit-xml", report)
    assert done.code == EXIT_VERIFICATION
    case = _only_case(report)
    assert case.is_failure
    assert "config.json" in (case.result[0].text or "")


def test_config_validate_and_prompts_verify_report(tmp_path: Path, cli: CliRunner) -> None:
    unpinned = cli("config", "validate", "--config", TINY_CONFIG, "--junit-xml", tmp_path / "c.xml")
    assert unpinned.code == EXIT_INPUT
    assert _only_case(tmp_path / "c.xml").result[0].type == "unpinned"
    allowed = cli(
        "config", "validate", "--config", TINY_CONFIG, "--allow-unpinned",
        "--junit-xml", tmp_path / "a.xml", "--json",
    )  # fmt: skip
    assert allowed.code == EXIT_OK
    assert "unpinned: runtime.image" in (_only_case(tmp_path / "a.xml").system_out or "")
    bundle = cli(
        "prompts", "verify", "--bundle", BUNDLE_DIR, "--bundle-pin", BUNDLE_PIN,
        "--junit-xml", tmp_path / "p.xml",
    )  # fmt: skip
    assert bundle.code == EXIT_OK
    assert _only_case(tmp_path / "p.xml").is_passed
    wrong_pin = cli(
        "prompts", "verify", "--bundle", BUNDLE_DIR, "--bundle-pin", TINY_CONFIG,
        "--junit-xml", tmp_path / "w.xml",
    )  # fmt: skip
    assert wrong_pin.code != EXIT_OK
    _agrees(wrong_pin.code, _only_case(tmp_path / "w.xml"))


# --- fail closed: what the decorator reports for a command that misbehaves -------------------


def _command(tmp_path: Path, body: str) -> tuple[Path, int]:
    """A decorated command whose body does one odd thing; its report and exit code."""
    app = typer.Typer()

    @app.command()
    @junit_xml_report("probe", subject=lambda options: "thing")
    def probe(junit_xml: JunitXmlOption = None) -> None:
        if body == "records-nothing":
            return
        if body == "passes-then-exits-1":
            record_outcome(["looked fine"], None)
            raise typer.Exit(1)
        if body == "bug":
            raise ValueError("a bug")
        if body == "interrupted":
            raise KeyboardInterrupt
        record_outcome(["fine"], None)

    report = tmp_path / f"{body}.xml"
    try:
        app(["--junit-xml", str(report)], standalone_mode=False)
        code = 0
    except typer.Exit as ended:
        code = ended.exit_code
    except (ValueError, KeyboardInterrupt):
        code = 3
    return report, code


@pytest.mark.parametrize("body", ["records-nothing", "passes-then-exits-1", "bug"])
def test_nothing_but_a_recorded_pass_that_returns_is_a_pass(tmp_path: Path, body: str) -> None:
    report, _ = _command(tmp_path, body)
    case = _only_case(report)
    assert case.is_error
    assert not case.is_passed
    assert case.result[0].type == "internal-error"


def test_a_recorded_pass_is_a_pass(tmp_path: Path) -> None:
    report, code = _command(tmp_path, "passes")
    assert code == 0
    assert _only_case(report).is_passed


def test_ctrl_c_writes_no_report(tmp_path: Path) -> None:
    report, _ = _command(tmp_path, "interrupted")
    assert not report.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left either


# --- check, against a fake vLLM that varies on purpose ---------------------------------------


@pytest.fixture
def varying(
    tiny_workspace: TinyWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Rig]:
    """test_check's rig: the tiny workspace in front of a fake vLLM that varies on request."""
    yield from varying_rig(tiny_workspace, tmp_path, monkeypatch)


def test_check_reports_a_pass_and_batch_variance(
    varying: Rig, cli: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    args = check_command(varying, monkeypatch)
    inside = varying.out / "ok" / "check.xml"
    refused = cli(*args, "--output-dir", varying.out / "ok", "--junit-xml", inside)
    assert refused.code == EXIT_INPUT
    assert "inside the output directory" in refused.err
    assert not (varying.out / "ok").exists()  # refused before any work
    passed = cli(*args, "--output-dir", varying.out / "ok", "--junit-xml", tmp_path / "ok.xml")
    assert passed.code == EXIT_OK, passed.text
    case = _only_case(tmp_path / "ok.xml")
    assert case.is_passed
    assert "PASS" in (case.system_out or "")
    varying.fake.mode = "batch"  # type: ignore[attr-defined]
    failed = cli(*args, "--output-dir", varying.out / "bad", "--junit-xml", tmp_path / "bad.xml")
    assert failed.code == EXIT_VERIFICATION
    case = _only_case(tmp_path / "bad.xml")
    assert case.is_failure
    assert case.result[0].type == "divergence"
    assert "BATCH_VARIANCE at tier 1" in (case.result[0].message or "")
