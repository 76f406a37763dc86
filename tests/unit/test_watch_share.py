"""The snapshot watch keeps its share of one core whatever the snapshot's shape.

A fake clock stands for wall time and a fake CPU timer for the watch's CPU time: a check of the
record, or a file the paced pass opens, costs what the test says, so the spacing is exact.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from detserve import snapshot_state, snapshot_watch
from detserve.errors import SnapshotMismatch
from detserve.snapshot import build_manifest
from detserve.snapshot_state import Lifetime, PinnedManifest, verify_in_lifetime
from detserve.snapshot_watch import PacedPass, SnapshotWatch
from detserve.watch_share import WatchShare

from .committed import TinyWorkspace

LIFETIME = Lifetime(container_id="d" * 64, started_at="2026-12-06T00:00:00Z", restart_count=0)
SHARE = 0.04  # of one core; checks of the record may take half
INTERVAL = 2.0


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record_checks_cost(monkeypatch: pytest.MonkeyPatch, cpu: Clock, seconds: float) -> None:
    real = snapshot_watch.check_record

    def costly(*args: object, **kwargs: object) -> list[str]:
        cpu.now += seconds
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshot_watch, "check_record", costly)


def files_cost(monkeypatch: pytest.MonkeyPatch, cpu: Clock, seconds: float) -> list[str]:
    """Each file the paced pass opens costs ``seconds``; the names opened, in order."""
    real = PacedPass._open
    opened: list[str] = []

    def costly(self: PacedPass, path: Path) -> None:
        cpu.now += seconds
        opened.append(path.name)
        real(self, path)

    monkeypatch.setattr(PacedPass, "_open", costly)
    return opened


def watch_of(
    snapshot: Path, manifest_path: Path, clock: Clock, cpu: Clock, rate: int
) -> SnapshotWatch:
    manifest = PinnedManifest.read(manifest_path)
    first = verify_in_lifetime(snapshot, manifest, LIFETIME)  # what serve does before serving
    assert "record written" in (first.record or ""), first.record
    return SnapshotWatch(
        snapshot,
        manifest_path,
        manifest.sha256,
        LIFETIME,
        bytes_per_s=rate,
        clock=clock,
        cpu_share=SHARE,
        cpu_clock=cpu,
        interval_s=INTERVAL,
    )


@pytest.fixture
def ws(tiny_workspace: TinyWorkspace, monkeypatch: pytest.MonkeyPatch) -> TinyWorkspace:
    monkeypatch.setattr(snapshot_state, "RACY_MARGIN_NS", 50_000_000)
    time.sleep(0.1)
    return tiny_workspace


def calls(watch: SnapshotWatch, clock: Clock, seconds: float) -> None:
    """What the gateway does: a check every interval."""
    for _ in range(round(seconds / INTERVAL)):
        clock.now += INTERVAL
        watch.check()


def test_a_cheap_check_of_the_record_runs_at_every_interval(
    ws: TinyWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, cpu = Clock(), Clock(0.0)
    record_checks_cost(monkeypatch, cpu, 0.002)  # a few files: well under its share of 2 s
    watch = watch_of(ws.snapshot, ws.manifest, clock, cpu, rate=1)
    calls(watch, clock, 20)
    assert watch.record_checks == 9  # the first call starts the watch; every other one checks
    assert watch.record_bound_s == INTERVAL
    watch.close()


def test_a_costly_check_of_the_record_is_spaced_to_its_share(
    ws: TinyWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, cpu = Clock(), Clock(0.0)
    record_checks_cost(monkeypatch, cpu, 0.5)  # some 12,000 files at 40 us
    watch = watch_of(ws.snapshot, ws.manifest, clock, cpu, rate=1)
    calls(watch, clock, 200)
    # 0.5 s over half of 4 %: 25 s, so every 13th call of 2 s; checked at 4, 30, ..., 186 s
    assert watch.record_checks == 8
    assert watch.record_bound_s == 26.0
    assert watch.share.record_cpu_total_s <= (SHARE / 2) * 200 + 0.5
    watch.close()


def test_a_change_is_caught_within_the_stated_bound(
    ws: TinyWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, cpu = Clock(), Clock(0.0)
    record_checks_cost(monkeypatch, cpu, 0.5)
    watch = watch_of(ws.snapshot, ws.manifest, clock, cpu, rate=1)
    # the paced pass reads nothing here: what catches the change is the record's check
    monkeypatch.setattr(PacedPass, "advance", lambda *_args: None)
    calls(watch, clock, 4)
    assert watch.record_checks == 1
    bound = watch.record_bound_s
    assert bound == 26.0
    weights = ws.blob_of("model.safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))  # just after a check: the worst case
    changed_at = clock.now
    with pytest.raises(SnapshotMismatch, match="changed through the file system"):
        calls(watch, clock, 10 * bound)
    assert clock.now - changed_at == bound
    watch.close()


def many_files(root: Path, count: int, size: int) -> tuple[Path, Path]:
    """A snapshot of ``count`` files of ``size`` bytes, and its manifest."""
    snapshot = root / "many"
    snapshot.mkdir()
    for index in range(count):
        (snapshot / f"part-{index:05d}.txt").write_bytes(index.to_bytes(4, "big") * (size // 4))
    manifest = root / "many.sha256"
    manifest.write_bytes(build_manifest(snapshot).to_bytes())
    time.sleep(0.1)  # past the (shortened) racy margin, so that the record is written
    return snapshot, manifest


def test_the_paced_pass_pays_for_each_file_it_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many tiny files: their bytes are nothing to the rate, their opens are what costs."""
    monkeypatch.setattr(snapshot_state, "RACY_MARGIN_NS", 50_000_000)
    snapshot, manifest = many_files(tmp_path, 200, 4096)
    clock, cpu = Clock(), Clock(0.0)
    watch = watch_of(snapshot, manifest, clock, cpu, rate=32 * 1024 * 1024)
    opened = files_cost(monkeypatch, cpu, 0.01)
    calls(watch, clock, 40)
    paced = watch.paced
    assert paced is not None
    # 4 % of 40 s is 1.6 s of CPU: 160 opens, not the 20 passes over 200 files the rate allows
    assert 150 <= len(opened) <= 161
    assert paced.passes == 0
    assert watch.share.paced_cpu_total_s <= SHARE * 40 + 0.01
    # stated: at least the 2 s of CPU a pass needs over the 2 % left to it when records cost
    estimate = watch.pass_seconds
    assert estimate is not None
    assert estimate >= 200 * 0.01 / SHARE
    calls(watch, clock, 40)
    assert paced.passes == 1
    assert watch.last_pass_s is not None
    assert watch.last_pass_s <= estimate
    watch.close()


def test_costly_records_leave_the_paced_pass_its_half_and_the_whole_its_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot_state, "RACY_MARGIN_NS", 50_000_000)
    snapshot, manifest = many_files(tmp_path, 100, 4096)
    clock, cpu = Clock(), Clock(0.0)
    watch = watch_of(snapshot, manifest, clock, cpu, rate=32 * 1024 * 1024)
    record_checks_cost(monkeypatch, cpu, 0.5)
    files_cost(monkeypatch, cpu, 0.01)
    calls(watch, clock, 260)
    share = watch.share
    assert watch.record_checks == 10  # at 4, 30, ..., 238 s
    assert share.record_cpu_total_s + share.paced_cpu_total_s <= SHARE * 260 + 0.5 + 0.01
    assert share.paced_cpu_total_s >= (SHARE / 2) * 260 - 0.5
    watch.close()


def test_the_share_is_the_calling_threads_cpu_time() -> None:
    # the gateway's event loop answers requests in another thread: not the watch's cost
    share = WatchShare()
    assert share._cpu is time.thread_time
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        WatchShare(0.0)


def test_the_watchs_start_is_charged_and_its_full_pass_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot_state, "RACY_MARGIN_NS", 50_000_000)
    snapshot, manifest_path = many_files(tmp_path, 50, 4096)
    clock, cpu = Clock(), Clock(0.0)
    watch = watch_of(snapshot, manifest_path, clock, cpu, rate=32 * 1024 * 1024)
    record_checks_cost(monkeypatch, cpu, 0.5)  # its first check of the record: O(files)
    opened = files_cost(monkeypatch, cpu, 0.01)
    calls(watch, clock, INTERVAL)
    assert opened == []  # 0.5 s owed against 0.08 s of credit
    watch.close()

    # started without a record, the watch makes a full pass: what serve does once, at full speed
    snapshot_state.RecordStore().path_for(snapshot).unlink()
    monkeypatch.setattr(snapshot_watch, "check_record", snapshot_state.check_record)
    real_pass = snapshot_watch.verify_in_lifetime

    def costly_pass(*args: object, **kwargs: object) -> object:
        cpu.now += 5.0
        return real_pass(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshot_watch, "verify_in_lifetime", costly_pass)
    manifest = PinnedManifest.read(manifest_path)
    again = SnapshotWatch(
        snapshot,
        manifest_path,
        manifest.sha256,
        LIFETIME,
        clock=clock,
        cpu_share=SHARE,
        cpu_clock=cpu,
        interval_s=INTERVAL,
    )
    opened.clear()
    calls(again, clock, INTERVAL)
    assert again.first_pass is not None
    assert 8 <= len(opened) <= 9  # 0.08 s of credit, 0.01 s a file (the last may straddle it)
    again.close()


def test_a_check_of_the_record_that_raised_is_made_again_at_the_next_call(
    ws: TinyWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway lifts a check's doubt at the next check that completes: a spaced check that
    skipped the record would lift it without knowing."""
    clock, cpu = Clock(), Clock(0.0)
    record_checks_cost(monkeypatch, cpu, 0.5)
    watch = watch_of(ws.snapshot, ws.manifest, clock, cpu, rate=1)
    calls(watch, clock, 4)
    assert watch.record_checks == 1
    costly = snapshot_watch.check_record

    def broken(*args: object, **kwargs: object) -> list[str]:
        cpu.now += 0.5
        raise PermissionError("an unexpected fault")

    monkeypatch.setattr(snapshot_watch, "check_record", broken)
    clock.now += 26.0  # the spacing has passed: checked, and it raises
    with pytest.raises(PermissionError):
        watch.check()
    monkeypatch.setattr(snapshot_watch, "check_record", costly)
    calls(watch, clock, INTERVAL)  # well within the spacing
    assert watch.record_checks == 2
    watch.close()
