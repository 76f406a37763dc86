"""The gateway's watch over a served snapshot: the record at every check, every byte at a pace.

A fake clock stands for time: each check advances the paced full pass by the rate times the
seconds since the last one.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from detserve import snapshot_state, snapshot_watch
from detserve.errors import PinMismatch, SnapshotMismatch
from detserve.snapshot import build_manifest
from detserve.snapshot_identity import file_system_types, fingerprint
from detserve.snapshot_state import Lifetime, PinnedManifest, RecordStore, verify_in_lifetime
from detserve.snapshot_watch import CHUNK_BYTES, SnapshotWatch

from .committed import TinyWorkspace
from .test_snapshot_state import move_the_blobs_out_and_link_them_back

LIFETIME = Lifetime(container_id="c" * 64, started_at="2026-12-01T00:00:00Z", restart_count=0)
RATE = 256 * 1024  # bytes a second: the tiny model (1.7 MB) in about 7 s of the fake clock


def run_for(watch: SnapshotWatch, clock: Clock, seconds: float, step: float = 1.0) -> None:
    """Checks every ``step`` seconds of the fake clock, for ``seconds``."""
    for _ in range(round(seconds / step)):
        clock.now += step
        watch.check()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def settled(tiny_workspace: TinyWorkspace, monkeypatch: pytest.MonkeyPatch) -> TinyWorkspace:
    monkeypatch.setattr(snapshot_state, "RACY_MARGIN_NS", 50_000_000)
    time.sleep(0.1)
    return tiny_workspace


@pytest.fixture
def ws(tiny_workspace: TinyWorkspace, monkeypatch: pytest.MonkeyPatch) -> TinyWorkspace:
    return settled(tiny_workspace, monkeypatch)


def watch_of(ws: TinyWorkspace, clock: Clock) -> SnapshotWatch:
    manifest = PinnedManifest.read(ws.manifest)
    first = verify_in_lifetime(ws.snapshot, manifest, LIFETIME)  # what serve does before serving
    assert "record written" in (first.record or ""), first.record
    return SnapshotWatch(
        ws.snapshot, ws.manifest, manifest.sha256, LIFETIME, bytes_per_s=RATE, clock=clock
    )


@pytest.fixture
def tmpfs_snapshot(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A three-chunk snapshot on tmpfs, where no record can be kept, and its manifest."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or file_system_types().get(shm.stat().st_dev) != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm here")
    snapshot = shm / f"detserve-watch-{id(tmp_path)}"
    try:
        snapshot.mkdir()
        (snapshot / "weights.bin").write_bytes(b"w" * (3 * CHUNK_BYTES))
        manifest = tmp_path / "m.sha256"
        manifest.write_bytes(build_manifest(snapshot).to_bytes())
        yield snapshot, manifest
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)


def unrecorded_watch(snapshot: Path, manifest: Path, clock: Clock) -> SnapshotWatch:
    """A watch of the tmpfs snapshot: no record, a pass paced at one chunk a second."""
    return SnapshotWatch(
        snapshot,
        manifest,
        PinnedManifest.read(manifest).sha256,
        LIFETIME,
        bytes_per_s=CHUNK_BYTES,
        clock=clock,
    )


def test_every_check_goes_through_the_record(ws: TinyWorkspace) -> None:
    clock = Clock()
    watch = watch_of(ws, clock)
    run_for(watch, clock, 3)
    assert watch.first_pass is None  # serve's own pass before serving left the record
    assert watch.record_checks == 2  # the first check starts the watch; the others check
    watch.close()


def test_a_watch_started_without_a_record_makes_one_full_pass_then_keeps_to_the_record(
    ws: TinyWorkspace,
) -> None:
    clock = Clock()
    manifest = PinnedManifest.read(ws.manifest)
    watch = SnapshotWatch(
        ws.snapshot, ws.manifest, manifest.sha256, LIFETIME, bytes_per_s=RATE, clock=clock
    )
    run_for(watch, clock, 3)
    assert watch.first_pass is not None
    assert watch.first_pass.verified_by == "full pass"
    assert watch.unrecorded is None
    assert watch.record_checks == 2
    watch.close()


def started_just_after_a_change(ws: TinyWorkspace, clock: Clock) -> SnapshotWatch:
    """``serve`` started within the racy margin of a change: neither its pass nor the watch's
    first one can write a record."""
    ws.blob_of("config.json").chmod(0o600)
    manifest = PinnedManifest.read(ws.manifest)
    verify_in_lifetime(ws.snapshot, manifest, LIFETIME)
    watch = SnapshotWatch(
        ws.snapshot, ws.manifest, manifest.sha256, LIFETIME, bytes_per_s=RATE, clock=clock
    )
    watch.check()
    assert watch.first_pass is not None
    assert "changed within" in (watch.first_pass.record or "")
    return watch


def test_a_watch_started_just_after_a_change_keeps_to_the_record_past_the_margin(
    ws: TinyWorkspace,
) -> None:
    """Left without a record, the watch saw later changes only when its paced pass came round."""
    clock = Clock()
    watch = started_just_after_a_change(ws, clock)
    time.sleep(0.1)  # past the margin of the first check's pass
    clock.now += 1
    watch.check()  # a full pass again, which leaves a record
    assert watch.unrecorded is None
    flip_last_byte(ws.blob_of("model.safetensors"))
    clock.now += 0.001  # far less than the paced pass needs to reach it
    with pytest.raises(SnapshotMismatch, match="changed through the file system"):
        watch.check()
    watch.close()


def test_a_snapshot_changed_while_the_record_is_made_again_fails_the_check(
    ws: TinyWorkspace,
) -> None:
    """The second pass began past the first one's margin: a change within its own was made
    while serving, which fails the check as it does where the record holds."""
    clock = Clock()
    watch = started_just_after_a_change(ws, clock)
    time.sleep(0.1)
    ws.blob_of("config.json").chmod(0o640)
    clock.now += 1
    with pytest.raises(SnapshotMismatch, match="changed through the file system while serving"):
        watch.check()
    watch.close()


def test_where_no_record_can_be_written_the_paced_pass_alone_runs(ws: TinyWorkspace) -> None:
    clock = Clock()
    state = RecordStore().directory
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o777)  # a state directory others may write is never used
    try:
        manifest = PinnedManifest.read(ws.manifest)
        watch = SnapshotWatch(
            ws.snapshot, ws.manifest, manifest.sha256, LIFETIME, bytes_per_s=RATE, clock=clock
        )
        time.sleep(0.1)
        run_for(watch, clock, 3)
    finally:
        state.chmod(0o700)
    assert "has mode 777" in (watch.unrecorded or "")
    assert watch.record_checks == 0
    watch.close()


def test_a_record_gone_while_serving_fails_the_check(ws: TinyWorkspace) -> None:
    clock = Clock()
    watch = watch_of(ws, clock)
    watch.check()
    RecordStore().path_for(ws.snapshot).unlink()
    clock.now += 1
    with pytest.raises(SnapshotMismatch, match="changed through the file system while serving"):
        watch.check()
    watch.close()


def test_the_paced_pass_reads_at_its_rate_and_goes_round(ws: TinyWorkspace) -> None:
    clock = Clock()
    watch = watch_of(ws, clock)
    watch.check()
    paced = watch.paced
    assert paced is not None
    assert paced.bytes_read == 0  # no time has passed
    clock.now += 2
    watch.check()
    assert 2 * RATE <= paced.bytes_read < 2 * RATE + CHUNK_BYTES
    assert watch.pass_seconds == pytest.approx(paced.total_bytes / RATE)
    for _ in range(10):  # the catch-up is bounded: ten seconds at most a check
        clock.now += 10
        watch.check()
    assert paced.passes >= 2
    assert paced.completed_at is not None
    watch.close()


def test_a_change_through_the_file_system_is_caught_at_the_next_check(ws: TinyWorkspace) -> None:
    clock = Clock()
    watch = watch_of(ws, clock)
    watch.check()
    flip_last_byte(ws.blob_of("model.safetensors"))
    clock.now += 0.001  # far less than the paced pass needs to reach it
    with pytest.raises(SnapshotMismatch, match="changed through the file system") as caught:
        watch.check()
    assert caught.value.details[0].startswith("changed: ./model.safetensors (file: ")
    watch.close()


def add_a_file_to_the_directory_linked_to(ws: TinyWorkspace) -> None:
    (ws.snapshot.resolve() / "extra.py").write_bytes(b"import os\n")


@pytest.mark.parametrize(
    "change",
    [add_a_file_to_the_directory_linked_to, move_the_blobs_out_and_link_them_back],
    ids=["file-added-where-the-snapshot-link-points", "blobs-moved-out-and-linked-back"],
)
def test_what_a_full_pass_would_refuse_is_caught_at_the_next_check(
    tiny_workspace: TinyWorkspace, monkeypatch: pytest.MonkeyPatch, change: Callable[..., None]
) -> None:
    """The snapshot is served through a link to its directory; no file's identity changes."""
    link = tiny_workspace.root / "snapshot-link"
    link.symlink_to(tiny_workspace.snapshot)
    given = dataclasses.replace(tiny_workspace, snapshot=link)
    clock = Clock()
    watch = watch_of(settled(given, monkeypatch), clock)
    watch.check()
    change(given)
    clock.now += 0.001  # far less than the paced pass needs to reach anything
    with pytest.raises(SnapshotMismatch, match="changed through the file system"):
        watch.check()
    watch.close()


def test_the_paced_pass_catches_what_the_record_does_not_see(ws: TinyWorkspace) -> None:
    """A change the identities do not show (below the file system, or a record rewritten by
    root): made here by changing a byte, then rewriting the record with the new identities."""
    clock = Clock()
    watch = watch_of(ws, clock)
    watch.check()
    flip_last_byte(ws.blob_of("model.safetensors"))
    store = RecordStore()
    path = store.path_for(ws.snapshot)
    record = snapshot_state.SnapshotRecord.model_validate_json(path.read_bytes())
    entries = fingerprint(ws.snapshot, [k[5:] for k in record.entries if k.startswith("file:")])
    path.write_bytes(record.model_copy(update={"entries": entries}).model_dump_json().encode())
    clock.now += 1
    watch.check()  # the record holds: nothing is seen yet
    assert watch.record_checks == 1
    with pytest.raises(SnapshotMismatch, match="paced full pass") as caught:
        run_for(watch, clock, 100, step=10)
    assert caught.value.details[0].startswith("changed: ./model.safetensors expected ")
    watch.close()


def test_the_paced_pass_reads_the_device_where_it_can(ws: TinyWorkspace) -> None:
    if file_system_types().get(ws.snapshot.stat().st_dev) != "ext4":
        pytest.skip("O_DIRECT is checked on ext4 here")
    clock = Clock()
    watch = watch_of(ws, clock)
    watch.check()
    clock.now += 1
    watch.check()
    assert watch.paced is not None
    assert watch.paced.direct
    watch.close()


def test_a_changed_manifest_is_refused(ws: TinyWorkspace) -> None:
    clock = Clock()
    watch = watch_of(ws, clock)
    ws.manifest.write_bytes(ws.manifest.read_bytes())  # the same bytes: still fine
    watch.check()
    ws.manifest.write_bytes(ws.manifest.read_bytes() + b"\n")
    with pytest.raises(PinMismatch, match="changed while serving"):
        watch.check()
    watch.close()


def test_where_no_record_can_be_kept_the_paced_pass_alone_runs(
    tmpfs_snapshot: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot, manifest = tmpfs_snapshot
    clock = Clock()
    watch = unrecorded_watch(snapshot, manifest, clock)

    def no_full_pass(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a full pass at every check")

    monkeypatch.setattr(snapshot_watch, "verify_in_lifetime", no_full_pass)
    watch.check()
    assert "is on tmpfs" in (watch.unrecorded or "")
    flip_last_byte(snapshot / "weights.bin")
    with pytest.raises(SnapshotMismatch, match="paced full pass"):
        run_for(watch, clock, 5)
    (snapshot / "weights.bin").unlink()  # what the record would have seen at once
    with pytest.raises(SnapshotMismatch, match=r"cannot read .*weights\.bin"):
        run_for(watch, clock, 1)
    watch.close()


def test_a_check_through_the_record_vouches_for_the_whole_snapshot_as_of_itself(
    ws: TinyWorkspace,
) -> None:
    clock = Clock()
    watch = watch_of(ws, clock)
    before = time.time()
    watch.check()  # the record held when the watch started
    assert watch.verified_whole_at is not None
    assert watch.verified_whole_at >= before
    later = time.time()
    clock.now += 1
    watch.check()
    assert watch.verified_whole_at >= later
    watch.close()


def test_where_no_record_is_kept_the_whole_snapshot_verified_when_a_paced_pass_began(
    tmpfs_snapshot: tuple[Path, Path],
) -> None:
    # a check there reads a slice: the gateway's verification age must not restart at each one
    snapshot, manifest = tmpfs_snapshot
    clock = Clock()
    started = time.time()
    watch = unrecorded_watch(snapshot, manifest, clock)
    watch.check()
    assert watch.unrecorded is not None
    assert watch.verified_whole_at is None  # nothing read whole yet
    run_for(watch, clock, 2)
    assert watch.verified_whole_at is None  # two of three chunks
    passed = time.time()
    run_for(watch, clock, 2)
    paced = watch.paced
    assert paced is not None
    assert paced.passes == 1
    assert watch.verified_whole_at is not None
    assert started <= watch.verified_whole_at <= passed  # the pass's start, not its end
    watch.close()
