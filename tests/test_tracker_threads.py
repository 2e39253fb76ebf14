"""Helper threads: the decoder runs below the main thread's priority, the encoder at it; the caller's stays as it
was."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest
from fixtures_media import write_clip

from cape_track.tracker import threads
from cape_track.tracker.frames import TrackInfo
from cape_track.tracker.sinks import VideoSink
from cape_track.tracker.sources import VideoFileSource

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")


def _nice(thread: threading.Thread | None = None) -> int:
    tid = thread.native_id if thread is not None else threading.get_native_id()
    return os.getpriority(os.PRIO_PROCESS, tid)


def _lowered(before: int) -> int:
    """The nice value a lowered helper gets; skips where it cannot be told from the caller's (the kernel caps at 19)."""
    if before + threads.HELPER_NICENESS > 19:
        pytest.skip(f"the tests run at nice {before}: a lowered thread would look like an unlowered one")
    return before + threads.HELPER_NICENESS


@linux
def test_a_helper_runs_lowered_and_the_caller_keeps_its_priority() -> None:
    before = _nice()
    seen: list[int] = []
    thread = threads.start_helper(lambda: seen.append(_nice()), "cape-test")
    thread.join()
    assert thread.name == "cape-test" and thread.daemon
    assert seen == [_lowered(before)]
    assert _nice() == before


@linux
def test_a_helper_asked_for_no_lowering_keeps_the_callers_priority() -> None:
    before = _nice()
    _lowered(before)  # only where lowering would show
    seen: list[int] = []
    threads.start_helper(lambda: seen.append(_nice()), "cape-test", niceness=0).join()
    assert seen == [before]


def test_no_lowering_where_asked_for_none_or_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _nice()
    assert threads.lower_priority(0) is False
    monkeypatch.setattr(sys, "platform", "darwin")
    assert threads.lower_priority(5) is False
    assert _nice() == before


@linux
def test_the_decoder_runs_lowered_and_the_encoder_at_the_callers_priority(tmp_path: Path) -> None:
    before = _nice()
    source = VideoFileSource(write_clip(tmp_path, frames=30).path, queue_size=2)  # the decoder stays alive, waiting
    sink = VideoSink(tmp_path / "out.mp4")
    try:
        sink.open(TrackInfo("clip", source.fps, source.width, source.height, ("a",), ()))
        helpers = [t for t in threading.enumerate() if t.name.startswith(("cape-decode", "cape-encode"))]
        nice = {t.name.split("-")[1]: _nice(t) for t in helpers}
        assert nice == {"decode": _lowered(before), "encode": before}
    finally:
        sink.close()
        source.close()
    assert _nice() == before


def _cgroups(tmp_path: Path, membership: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A fake /proc/self/cgroup with `membership` and a cgroup tree under tmp_path with `files` (path -> text)."""
    root = tmp_path / "sys_fs_cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    root.mkdir(exist_ok=True)
    proc = tmp_path / "cgroup"
    proc.write_text(membership)
    return proc, root


def test_a_cgroup_v2_quota_is_read_the_tightest_over_the_group_and_its_ancestors(tmp_path: Path) -> None:
    proc, root = _cgroups(
        tmp_path,
        "0::/kubepods/pod1/box\n",
        {
            "kubepods/cpu.max": "max 100000\n",
            "kubepods/pod1/cpu.max": "150000 100000\n",
            "kubepods/pod1/box/cpu.max": "300000 100000\n",
        },
    )
    assert threads.cgroup_cpu_quota(proc, root) == 1.5
    (root / "kubepods/pod1/cpu.max").write_text("400000 100000\n")  # now the group's own is the tightest
    assert threads.cgroup_cpu_quota(proc, root) == 3.0
    for rel in ("kubepods/pod1/cpu.max", "kubepods/pod1/box/cpu.max"):
        (root / rel).write_text("max 100000\n")
    assert threads.cgroup_cpu_quota(proc, root) is None  # no limit anywhere: the affinity alone counts


def test_a_container_sees_its_own_group_as_the_root(tmp_path: Path) -> None:
    """Inside a container (a cgroup namespace) the group shows as "/" and the limit sits at the tree's top."""
    proc, root = _cgroups(tmp_path, "0::/\n", {"cpu.max": "200000 100000\n"})
    assert threads.cgroup_cpu_quota(proc, root) == 2.0


def test_a_cgroup_v1_quota_is_read_from_the_cpu_controllers_tree(tmp_path: Path) -> None:
    files = {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
    }
    proc, root = _cgroups(tmp_path, "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n", files)
    assert threads.cgroup_cpu_quota(proc, root) == 3.0
    (root / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us").write_text("-1\n")  # v1's "no limit"
    assert threads.cgroup_cpu_quota(proc, root) is None


def test_a_v1_container_has_its_limit_at_the_top_of_its_own_mount(tmp_path: Path) -> None:
    """Docker on cgroup v1 shows the host's path in /proc but mounts the container's own group as the tree's top;
    a hybrid host lists the v2 tree too ("0::/"). The cpu controller's folder may be plain `cpu`."""
    files = {"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n", "unified/cgroup.procs": ""}
    proc, root = _cgroups(tmp_path, "2:cpuacct:/docker/abc\n1:cpu:/docker/abc\n0::/docker/abc\n", files)
    assert threads.cgroup_cpu_quota(proc, root) == 2.0


def test_groups_outside_the_namespace_are_not_followed_out_of_the_tree(tmp_path: Path) -> None:
    outside = {"cpu.max": "100000 100000\n"}
    proc, root = _cgroups(tmp_path, "0::/../sibling\n", {})
    (root.parent / "sibling").mkdir()
    (root.parent / "sibling" / "cpu.max").write_text(outside["cpu.max"])
    assert threads.cgroup_cpu_quota(proc, root) is None


def test_no_quota_where_the_files_are_missing_or_damaged(tmp_path: Path) -> None:
    assert threads.cgroup_cpu_quota(tmp_path / "absent", tmp_path) is None
    proc, root = _cgroups(tmp_path, "0::/a\n", {"a/cpu.max": "garbage\n"})
    assert threads.cgroup_cpu_quota(proc, root) is None
    (root / "a/cpu.max").write_text("100000 0\n")
    assert threads.cgroup_cpu_quota(proc, root) is None


def test_usable_cores_are_the_affinity_capped_by_the_quota_rounded_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """And the machine's count where there is no affinity (not Linux)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: None)
    assert threads.usable_cores() == 4
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: 2.5)
    assert threads.usable_cores() == 2
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: 0.5)  # half a core still runs one thread
    assert threads.usable_cores() == 1
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: None)
    assert threads.usable_cores() == 8


def test_the_decoder_and_the_encoder_size_their_threads_from_the_usable_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quota below the host's cores reaches FFmpeg and x264, which would count the affinity alone; on two cores
    each runs one thread."""
    from cape_track.tracker import sinks, sources

    clip = write_clip(tmp_path, frames=5).path
    for cores, decoder, encoder in ((2, 1, 1), (3, 4, 4), (8, 9, 12), (40, 16, 60)):
        monkeypatch.setattr(sources, "usable_cores", lambda c=cores: c)
        monkeypatch.setattr(sinks, "usable_cores", lambda c=cores: c)
        source = VideoFileSource(clip)
        sink = VideoSink(tmp_path / f"out{cores}.mp4")
        try:
            sink.open(TrackInfo("clip", source.fps, source.width, source.height, ("a",), ()))
            assert source._stream.codec_context.thread_count == decoder
            assert sink._stream.codec_context.thread_count == encoder
        finally:
            sink.close()
            source.close()
