"""The record of a full pass: cheap when nothing changed, a full pass after any change.

Every change a process can make through the file system is made to a copy of the tiny model
after a full pass has recorded it, and the next check must not vouch for the bytes: it runs a
full pass, which fails on what changed. Each case names the field of the record that catches
it (docs/threat-model.md, "Weights changed after a full pass, when the next check reads no
byte").
"""

from __future__ import annotations

import ctypes
import dataclasses
import mmap
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from detserve import hashing, snapshot_identity, snapshot_state
from detserve import snapshot as snapshot_module
from detserve.errors import SnapshotMismatch
from detserve.snapshot import VerifyReport
from detserve.snapshot_identity import file_system_types, verity_measurement
from detserve.snapshot_state import Lifetime, PinnedManifest, RecordStore, verify_in_lifetime

from .committed import TinyWorkspace

LIFETIME = Lifetime(container_id="c" * 64, started_at="2026-12-01T00:00:00Z", restart_count=0)
#: the margin the tests use: above any clock tick, short enough to wait for
MARGIN_S = 0.05


@pytest.fixture
def ws(tiny_workspace: TinyWorkspace, monkeypatch: pytest.MonkeyPatch) -> TinyWorkspace:
    """The tiny model's copy, settled: its last change is older than the (shortened) margin."""
    monkeypatch.setattr(snapshot_state, "RACY_MARGIN_NS", int(MARGIN_S * 1e9))
    settle()
    return tiny_workspace


def settle() -> None:
    time.sleep(2 * MARGIN_S)


def check(ws: TinyWorkspace, lifetime: Lifetime = LIFETIME, *, full: bool = False) -> VerifyReport:
    return verify_in_lifetime(
        ws.snapshot, PinnedManifest.read(ws.manifest), lifetime, full=full, workers=2
    )


def recorded(ws: TinyWorkspace) -> VerifyReport:
    """A full pass that wrote its record."""
    report = check(ws)
    assert report.verified_by == "full pass"
    assert (report.record or "").endswith("record written"), report.record
    return report


def flip_last_byte(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 1]))


def tampered_copy(ws: TinyWorkspace, name: str) -> Path:
    """A tampered copy of a blob, made (and settled) before the pass, with the blob's times."""
    blob = ws.blob_of(name)
    copy = ws.blobs / "prepared"
    shutil.copy2(blob, copy)
    flip_last_byte(copy)
    info = blob.stat()
    os.utime(copy, ns=(info.st_atime_ns, info.st_mtime_ns))
    return copy


def keep_mtime(path: Path, change: Callable[[], None]) -> None:
    """``change``, then the file's mtime set back to what it was (``utimensat``)."""
    info = path.stat()
    change()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


# --- the record vouches for an unchanged snapshot, and only for it -----------------------------


def test_an_unchanged_snapshot_is_vouched_for_without_reading_a_byte(
    ws: TinyWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = recorded(ws)

    def no_read(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a file was read")

    monkeypatch.setattr(hashing, "sha256_opened", no_read)
    again = check(ws)
    assert again.verified_by == "record"
    assert again.hashed_bytes == 0
    assert (again.files, again.bytes, again.manifest_sha256) == (
        first.files,
        first.bytes,
        first.manifest_sha256,
    )
    assert again.as_json()["verified_by"] == "record"


def test_the_record_is_private_to_this_user(ws: TinyWorkspace) -> None:
    recorded(ws)
    store = RecordStore()
    path = store.path_for(ws.snapshot)
    assert path.stat().st_mode & 0o777 == 0o600
    assert store.directory.stat().st_mode & 0o777 == 0o700


def test_full_verify_hashes_every_byte_even_with_a_record(ws: TinyWorkspace) -> None:
    recorded(ws)
    report = check(ws, full=True)
    assert report.verified_by == "full pass"
    assert (report.record or "").startswith("full pass: a full pass was")


def test_a_record_that_holds_stays_while_a_full_pass_runs(ws: TinyWorkspace) -> None:
    """``sample --full-verify`` beside a running gateway: the gateway checks the record every
    interval, and what it vouches for is still so; removing it for the pass's length would fail
    the gateway though nothing changed."""
    recorded(ws)
    store = RecordStore()
    seen: list[bool] = []

    def during(_done: int) -> None:
        record, _ = store.load(ws.snapshot)
        seen.append(record is not None)

    verify_in_lifetime(
        ws.snapshot, PinnedManifest.read(ws.manifest), LIFETIME, full=True, progress=during
    )
    assert seen
    assert all(seen)
    assert check(ws).verified_by == "record"


def test_a_full_pass_that_fails_leaves_no_record_even_where_one_held(ws: TinyWorkspace) -> None:
    """The bytes changed below what the identities show (here: the record's entries edited to
    the changed file's, as a change no identity shows would leave them): the asked-for pass
    fails, and the record that held is gone, so no later check trusts it."""
    recorded(ws)
    blob = ws.blob_of("config.json")
    keep_mtime(blob, lambda: flip_last_byte(blob))
    store = RecordStore()
    record, _ = store.load(ws.snapshot)
    assert record is not None
    entries = dict(record.entries)
    for key in list(entries):
        if key.startswith(("file:", "entry:")) and key.endswith("config.json"):
            entries[key] = snapshot_identity.identity(
                (ws.snapshot / key.partition(":")[2]).stat()
                if key.startswith("file:")
                else os.lstat(ws.snapshot / key.partition(":")[2])
            )
    store.save(record.model_copy(update={"entries": entries}))
    assert check(ws).verified_by == "record"  # the identities say nothing changed
    with pytest.raises(SnapshotMismatch):
        check(ws, full=True)
    assert store.load(ws.snapshot)[0] is None
    with pytest.raises(SnapshotMismatch):
        check(ws)


def test_a_full_pass_that_writes_no_record_leaves_none_of_the_last(ws: TinyWorkspace) -> None:
    recorded(ws)
    ws.blob_of("config.json").chmod(0o640)  # within the margin of the pass that follows
    report = check(ws, full=True)
    assert "record not written" in (report.record or "")
    assert RecordStore().load(ws.snapshot)[0] is None


@pytest.mark.parametrize(
    "other",
    [
        Lifetime(container_id="d" * 64, started_at=LIFETIME.started_at, restart_count=0),
        Lifetime(
            container_id=LIFETIME.container_id, started_at="2026-12-02T00:00:00Z", restart_count=0
        ),
        Lifetime(
            container_id=LIFETIME.container_id, started_at=LIFETIME.started_at, restart_count=1
        ),
    ],
    ids=["another-container", "restarted-later", "restart-count"],
)
def test_another_container_lifetime_hashes_again(ws: TinyWorkspace, other: Lifetime) -> None:
    recorded(ws)
    report = check(ws, other)
    assert report.verified_by == "full pass"
    assert "another container lifetime" in (report.record or "")


def test_another_manifest_hashes_again(ws: TinyWorkspace) -> None:
    recorded(ws)
    other = PinnedManifest(ws.manifest, ws.manifest.read_bytes())
    other.sha256 = "0" * 64  # the same lines, but not the bytes the record was made for
    report = verify_in_lifetime(ws.snapshot, other, LIFETIME)
    assert report.verified_by == "full pass"
    assert "another manifest" in (report.record or "")


# --- every change a process can make through the file system -----------------------------------


def write_in_place(ws: TinyWorkspace) -> None:
    flip_last_byte(ws.blob_of("model.safetensors"))


def write_and_set_mtime_back(ws: TinyWorkspace) -> None:
    blob = ws.blob_of("model.safetensors")
    keep_mtime(blob, lambda: flip_last_byte(blob))


def truncate_and_regrow_with_mtime_back(ws: TinyWorkspace) -> None:
    blob = ws.blob_of("model.safetensors")
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1

    def regrow() -> None:
        os.truncate(blob, 0)
        blob.write_bytes(bytes(data))

    keep_mtime(blob, regrow)


def truncate(ws: TinyWorkspace) -> None:
    blob = ws.blob_of("config.json")
    os.truncate(blob, blob.stat().st_size - 1)


def replace_by_rename(ws: TinyWorkspace) -> None:
    copy = tampered_copy(ws, "model.safetensors")
    copy.replace(ws.blob_of("model.safetensors"))


def swap_two_names(ws: TinyWorkspace) -> None:
    # Two links exchanged: every file is still one of the snapshot's, under another name.
    a, b = ws.snapshot / "config.json", ws.snapshot / "generation_config.json"
    a.rename(ws.snapshot / "swap")
    b.rename(a)
    (ws.snapshot / "swap").rename(b)


def relink_hard_link(ws: TinyWorkspace) -> None:
    copy = tampered_copy(ws, "model.safetensors")
    blob = ws.blob_of("model.safetensors")
    blob.unlink()
    os.link(copy, blob)
    copy.unlink()


def repoint_symlink(ws: TinyWorkspace) -> None:
    copy = tampered_copy(ws, "model.safetensors")
    entry = ws.snapshot / "model.safetensors"
    entry.unlink()
    entry.symlink_to(os.path.relpath(copy, entry.parent))


def add_a_file_in_place_of_nothing(ws: TinyWorkspace) -> None:
    (ws.snapshot / "extra.bin").write_bytes(b"x")


def swap_the_snapshot_directory(ws: TinyWorkspace) -> None:
    # A whole other snapshot directory renamed into place, its weights linked to a tampered copy.
    copy = tampered_copy(ws, "model.safetensors")
    other = ws.snapshot.with_name("other")
    shutil.copytree(ws.snapshot, other, symlinks=True)
    (other / "model.safetensors").unlink()
    (other / "model.safetensors").symlink_to(os.path.relpath(copy, other))
    ws.snapshot.rename(ws.snapshot.with_name("original"))
    other.rename(ws.snapshot)


def write_with_o_direct(ws: TinyWorkspace) -> None:
    block = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT needs
    block.write(b"\1" * 4096)
    fd = os.open(ws.blob_of("model.safetensors"), os.O_WRONLY | os.O_DIRECT)
    try:
        os.pwritev(fd, [block], 0)
    finally:
        os.close(fd)


def copy_a_range_in(ws: TinyWorkspace) -> None:
    source = ws.root / "zeros"
    source.write_bytes(bytes(4096))
    with source.open("rb") as src, ws.blob_of("model.safetensors").open("r+b") as dst:
        os.copy_file_range(src.fileno(), dst.fileno(), 4096, 0, 0)


def punch_a_hole_and_set_mtime_back(ws: TinyWorkspace) -> None:
    blob = ws.blob_of("model.safetensors")

    def punch() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
        fd = os.open(blob, os.O_RDWR)
        try:
            # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE: the size stays, the bytes read as zeros
            assert libc.fallocate(fd, 0x02 | 0x01, 4096, 8192) == 0, os.strerror(ctypes.get_errno())
        finally:
            os.close(fd)

    keep_mtime(blob, punch)


def exchange_two_blobs(ws: TinyWorkspace) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    a, b = ws.blob_of("config.json"), ws.blob_of("generation_config.json")
    rename_exchange = 2  # RENAME_EXCHANGE: both names stay, atomically swapped
    assert libc.renameat2(-100, bytes(a), -100, bytes(b), rename_exchange) == 0


def add_a_fifo(ws: TinyWorkspace) -> None:
    os.mkfifo(ws.snapshot / "pipe")


def add_a_file_in_a_new_directory(ws: TinyWorkspace) -> None:
    (ws.snapshot / "code").mkdir()
    (ws.snapshot / "code" / "modeling.py").write_bytes(b"import os\n")


def move_the_blobs_out_and_link_them_back(ws: TinyWorkspace) -> None:
    # Every blob the same inode, reached through a link left in blobs/: a full pass refuses a
    # link resolving outside the snapshot and its blobs/; no identity of a file changed.
    elsewhere = ws.root / "elsewhere"
    ws.blobs.rename(elsewhere)
    ws.blobs.mkdir()
    for blob in elsewhere.iterdir():
        (ws.blobs / blob.name).symlink_to(blob)


def write_through_a_new_mapping(ws: TinyWorkspace) -> None:
    with ws.blob_of("model.safetensors").open("r+b") as handle:
        mapped = mmap.mmap(handle.fileno(), 0)
        try:
            mapped[-1] = mapped[-1] ^ 1
            mapped.flush()
        finally:
            mapped.close()


CHANGES: dict[str, Callable[[TinyWorkspace], None]] = {
    "content-written": write_in_place,
    "content-written-mtime-set-back": write_and_set_mtime_back,
    "truncated-and-regrown-mtime-set-back": truncate_and_regrow_with_mtime_back,
    "truncated": truncate,
    "replaced-by-rename": replace_by_rename,
    "renamed-two-names-swapped": swap_two_names,
    "hard-link-swapped": relink_hard_link,
    "symlink-re-pointed": repoint_symlink,
    "file-added": add_a_file_in_place_of_nothing,
    "snapshot-directory-swapped": swap_the_snapshot_directory,
    "blobs-moved-out-and-linked-back": move_the_blobs_out_and_link_them_back,
    "written-through-a-new-mapping": write_through_a_new_mapping,
    "written-with-o-direct": write_with_o_direct,
    "range-copied-in": copy_a_range_in,
    "hole-punched-mtime-set-back": punch_a_hole_and_set_mtime_back,
    "two-blobs-exchanged": exchange_two_blobs,
    "fifo-added": add_a_fifo,
    "file-added-in-a-new-directory": add_a_file_in_a_new_directory,
}


@pytest.mark.parametrize("change", list(CHANGES.values()), ids=list(CHANGES))
def test_every_change_through_the_file_system_is_caught(
    ws: TinyWorkspace, change: Callable[[TinyWorkspace], None]
) -> None:
    recorded(ws)
    change(ws)
    with pytest.raises(SnapshotMismatch) as failed:
        check(ws)
    assert failed.value.details, "the full pass names what differs"
    assert not RecordStore().path_for(ws.snapshot).exists(), "a failed pass leaves no record"


def test_a_snapshot_given_as_a_link_is_recorded_as_the_directory_it_names(
    ws: TinyWorkspace,
) -> None:
    """The record is of the directory the link resolves to: a file added there is seen (the
    link's own identity does not change)."""
    link = ws.root / "snapshot-link"
    link.symlink_to(ws.snapshot)
    given = dataclasses.replace(ws, snapshot=link)
    recorded(given)
    assert check(given).verified_by == "record"
    (ws.snapshot / "extra.py").write_bytes(b"import os\n")
    with pytest.raises(SnapshotMismatch) as failed:
        check(given)
    assert list(failed.value.details) == ["extra: ./extra.py"]


def test_links_resolving_where_they_did_through_changed_roots_are_seen(ws: TinyWorkspace) -> None:
    """The links name blobs2/ and blobs/ is a link to it, so blobs2/ is where links may resolve;
    blobs/ made a directory of its own leaves every link, its target and its resolution as they
    were, and the links now resolve outside: the roots are part of what the pass judged."""
    blobs2 = ws.model_dir / "blobs2"
    ws.blobs.rename(blobs2)
    ws.blobs.symlink_to("blobs2")
    for entry in ws.snapshot.iterdir():
        target = entry.readlink().name
        entry.unlink()
        entry.symlink_to(f"../../blobs2/{target}")
    settle()
    recorded(ws)
    ws.blobs.unlink()
    ws.blobs.mkdir()
    with pytest.raises(SnapshotMismatch) as failed:
        check(ws)
    assert all("symlink resolves outside the snapshot" in line for line in failed.value.details)


def test_where_a_link_resolves_is_what_realpath_says(tmp_path: Path) -> None:
    """The check's shortcut (each directory a link names resolved once) gives realpath's
    answer, which is the scan's: else no record could be written."""
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "b").write_bytes(b"b")
    (tmp_path / "aliased").symlink_to("blobs")
    links = tmp_path / "snap" / "sub"
    links.mkdir(parents=True)
    shapes = {
        "relative": "../../blobs/b",
        "absolute": str(tmp_path / "blobs" / "b"),
        "through-a-linked-directory": "../../aliased/b",
        "to-a-link": "relative",
        "dangling": "../../blobs/none",
        "dot-dot": "../..",
        "trailing-slash": "../../blobs/",
    }
    routes: dict[str, str] = {}
    for name, text in shapes.items():
        (links / name).symlink_to(text)
    for name in shapes:
        link = links / name
        assert snapshot_identity.link_resolution(link, routes) == os.path.realpath(link), name


def swap_snapshots_dir(ws: TinyWorkspace) -> None:
    """The snapshots/ directory renamed away and the other one renamed in its place (whichever
    is in place now)."""
    here, other = ws.model_dir / "snapshots", ws.model_dir / "snapshots-other"
    here.rename(ws.model_dir / "swapping")
    other.rename(here)
    (ws.model_dir / "swapping").rename(other)


@pytest.mark.parametrize("scan_saw", ["the-clean-tree", "the-tree-then-swapped"])
def test_a_tree_swapped_under_the_pass_leaves_no_record(
    ws: TinyWorkspace, monkeypatch: pytest.MonkeyPatch, scan_saw: str
) -> None:
    """Two trees, the same files linked to the same blobs, one with a file more: the pass must
    not record the one it did not scan. An attacker swaps a parent directory (not a link: the
    pass resolves the path once) while the scan runs, or just after it."""
    shutil.copytree(ws.model_dir / "snapshots", ws.model_dir / "snapshots-other", symlinks=True)
    tree_with_extra = (
        ws.snapshot
        if scan_saw == "the-clean-tree"
        else ws.model_dir / (f"snapshots-other/{ws.snapshot.name}")
    )
    (tree_with_extra / "extra.py").write_bytes(b"import os\n")
    settle()
    scan = snapshot_module.scan_snapshot

    def scan_then_swap(snapshot_dir: Path) -> snapshot_module.SnapshotScan:
        if scan_saw == "the-clean-tree":
            swap_snapshots_dir(ws)  # the scan sees the clean copy, then the tree is put back
            try:
                return scan(snapshot_dir)
            finally:
                swap_snapshots_dir(ws)
        seen = scan(snapshot_dir)
        swap_snapshots_dir(ws)  # the scan saw the clean tree; the hashing sees the other
        return seen

    monkeypatch.setattr(snapshot_module, "scan_snapshot", scan_then_swap)
    report = check(ws)
    assert "is not what the pass saw" in (report.record or ""), report.record
    monkeypatch.setattr(snapshot_module, "scan_snapshot", scan)
    settle()
    with pytest.raises(SnapshotMismatch) as failed:
        check(ws)
    assert list(failed.value.details) == ["extra: ./extra.py"]


def test_a_changed_but_equal_file_is_hashed_again_and_passes(ws: TinyWorkspace) -> None:
    """A mismatch is never a failure by itself: it is a full pass, which decides."""
    recorded(ws)
    blob = ws.blob_of("config.json")
    blob.chmod(0o600)
    report = check(ws)
    assert report.verified_by == "full pass"
    assert "since the last full pass, changed: ./config.json (file: mode, ctime)" in (
        report.record or ""
    )


def test_a_write_through_a_mapping_made_before_the_pass_is_caught(ws: TinyWorkspace) -> None:
    """A page dirtied through a shared mapping stays writable without a fault, so a later write
    to it changes no ctime, unless the pass wrote the page back first (``sync_first``)."""
    blob = ws.blob_of("model.safetensors")
    fd = os.open(blob, os.O_RDWR)
    try:
        mapped = mmap.mmap(fd, 0)
        try:
            mapped[0] = mapped[0]  # dirtied, content unchanged
            settle()
            recorded(ws)
            mapped[0] = mapped[0] ^ 1
            with pytest.raises(SnapshotMismatch):
                check(ws)
        finally:
            mapped.close()
    finally:
        os.close(fd)


def test_a_change_during_the_pass_leaves_no_record(ws: TinyWorkspace) -> None:
    blob = ws.blob_of("config.json")
    blob.chmod(0o640)  # within the margin of the pass that follows
    report = check(ws)
    assert "record not written" in (report.record or "")
    assert "changed within" in (report.record or "")
    assert check(ws).verified_by == "full pass"


# --- the record is a cache only this user can write --------------------------------------------


def test_a_record_others_may_write_is_ignored(ws: TinyWorkspace) -> None:
    recorded(ws)
    RecordStore().path_for(ws.snapshot).chmod(0o644)
    report = check(ws)
    assert report.verified_by == "full pass"
    assert "record ignored" in (report.record or "")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_record_of_another_user_is_ignored(ws: TinyWorkspace) -> None:
    recorded(ws)
    os.chown(RecordStore().path_for(ws.snapshot), 12345, 12345)
    report = check(ws)
    assert report.verified_by == "full pass"
    assert "belongs to uid 12345" in (report.record or "")


def test_a_state_directory_others_may_write_is_ignored(ws: TinyWorkspace) -> None:
    recorded(ws)
    RecordStore().directory.chmod(0o777)
    try:
        report = check(ws)
    finally:
        RecordStore().directory.chmod(0o700)
    assert report.verified_by == "full pass"
    assert "record ignored" in (report.record or "")


def test_a_record_that_does_not_parse_is_ignored(ws: TinyWorkspace) -> None:
    recorded(ws)
    path = RecordStore().path_for(ws.snapshot)
    path.write_bytes(path.read_bytes()[:-10])
    report = check(ws)
    assert report.verified_by == "full pass"
    assert "does not parse" in (report.record or "")


def test_an_edited_record_cannot_vouch_for_a_changed_file(ws: TinyWorkspace) -> None:
    """Whoever edits the record edits identities; any that no longer hold mean a full pass."""
    recorded(ws)
    path = RecordStore().path_for(ws.snapshot)
    record = snapshot_state.SnapshotRecord.model_validate_json(path.read_bytes())
    entries = dict(record.entries)
    entries["file:model.safetensors"] = [0] * 9
    path.write_bytes(record.model_copy(update={"entries": entries}).model_dump_json().encode())
    write_in_place(ws)
    with pytest.raises(SnapshotMismatch):
        check(ws)


# --- where a record is not kept ----------------------------------------------------------------


def test_no_record_on_a_file_system_where_mapped_writes_leave_ctime(tmp_path: Path) -> None:
    types = file_system_types()
    shm = Path("/dev/shm")
    if not shm.is_dir() or types.get(shm.stat().st_dev) != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm here")
    snapshot = shm / f"detserve-test-{os.getpid()}"
    try:
        snapshot.mkdir()
        (snapshot / "weights.bin").write_bytes(b"w" * 4096)
        manifest = tmp_path / "m.sha256"
        from detserve.snapshot import build_manifest

        manifest.write_bytes(build_manifest(snapshot).to_bytes())
        time.sleep(2.1)  # beyond the default margin: only the file system keeps the record out
        report = verify_in_lifetime(snapshot, PinnedManifest.read(manifest), LIFETIME)
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)
    assert "is on tmpfs" in (report.record or "")


def test_fs_verity_is_detected_not_assumed(ws: TinyWorkspace) -> None:
    # This machine's kernel has none: every file measures as None, and the record says nothing.
    fd = os.open(ws.blob_of("config.json"), os.O_RDONLY)
    try:
        assert verity_measurement(fd) is None
    finally:
        os.close(fd)
    recorded(ws)
    record, _ = RecordStore().load(ws.snapshot)
    assert record is not None
    assert not any(key.startswith("verity:") for key in record.entries)
