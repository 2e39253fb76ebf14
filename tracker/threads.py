"""The tracker's threads: how many cores they may use (`usable_cores`), and its helper threads (decoding, encoding),
started at a chosen priority relative to the thread that starts them.

The main thread's chain (optical flow, crops, the network, the smoother) is the pipeline's critical path: every
frame passes through it in order, while the decoder works ahead into a queue. With three busy threads on two cores
the kernel shares the cores fairly, so the chain lost part of its core whenever the decoder woke up on it. A reader
(file, folder or webcam) `HELPER_NICENESS` levels lower leaves the chain its core and still gets the rest; its queue
absorbs the moments it waits. On the `make run` sample, two cores, three interleaved A/B runs with the video
(medians of 3-4) gave 49.7 against 46.3 fps, 46.9 against 44.4 and 49.2 against 46.9 (+5-7 %, the encoder lowered
too then); nice 10 did no better than 5, and tracks only the gain is within the spread.

The encoder is not lowered: with the annotated video it is a second chain every frame passes through in order, as
long as the main one after the speed work of issue 12 (about 9 ms of CPU per 720p frame each), and the run ends only
when it has drained. Lowered with the decoder, it waited 2-3 ms per frame for a core while the decoder ran, and the
main thread blocked on its full queue for 2 ms per frame. At the caller's priority: 1.034-1.040x the fps with the
video (two A/B runs, interleaved in one process, medians of 8); the decoder 10 levels down on top of it gave no more
with the video and 1.023x tracks only, within the spread.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

# Nice levels a reader thread (and any helper started without saying) sits below the thread that starts it: the kernel
# weighs nice 0 against nice 5 about 3:1 when both are runnable. Lowering only ever costs the helpers; nothing else on
# the machine gets less.
HELPER_NICENESS = 5


def usable_cores() -> int:
    """The cores this process may run on (its affinity: `taskset`, a container's cpuset), at most its CPU quota
    rounded down (cgroups: `docker --cpus`, a Kubernetes limit), at least 1. `os.cpu_count()` counts the machine's:
    in a 2-CPU container on a 64-core host, thread pools sized from it would be 32x too large, and their threads
    throttled by the quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, math.floor(quota))
    return max(1, cores)


def cgroup_cpu_quota(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")
) -> float | None:
    """The CPU quota of this process's cgroup, in cores (quota / period), the tightest over it and its ancestors;
    None when there is none or it cannot be read. cgroup v2 (`cpu.max`) and v1 (`cpu.cfs_quota_us`)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except (OSError, ValueError):  # ValueError: a group name that is not UTF-8
        return None
    limits: list[float] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, group = rest.partition(":")
        if ".." in Path(group).parts:  # a group outside this cgroup namespace: not under `root`
            continue
        if hierarchy == "0" and not controllers:  # v2: one unified tree
            limits += _quotas(root, group, _v2_quota)
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own tree
            base = root / controllers
            base = base if os.path.isdir(base) else root / "cpu"  # isdir: never raises (Path.is_dir may, on EACCES)
            limits += _quotas(base, group, _v1_quota)
    return min(limits) if limits else None


def _quotas(base: Path, group: str, read: Callable[[Path], float | None]) -> list[float]:
    """The quotas set on `group` and on each of its ancestors up to `base` (in a container, where the group shows as
    "/", `base` is the container's own)."""
    found = []
    folder = base / group.strip("/")
    while True:
        quota = read(folder)
        if quota is not None:
            found.append(quota)
        if folder == base or base not in folder.parents:
            return found
        folder = folder.parent


def _v2_quota(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" or int(period) <= 0 else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def start_helper(target: Callable[[], None], name: str, niceness: int = HELPER_NICENESS) -> threading.Thread:
    """Start `target` in a daemon thread named `name`, `niceness` levels below the caller's priority (0: at it)."""
    thread = threading.Thread(target=_run_at, args=(target, niceness), name=name, daemon=True)
    thread.start()
    return thread


def lower_priority(levels: int) -> bool:
    """Raise the calling thread's nice value by `levels` (never lowered again: that needs privileges). Linux only,
    where a thread has its own nice value; elsewhere, or where the kernel refuses, the thread stays as it is.
    Returns whether it was lowered."""
    if levels <= 0 or not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + levels)
    except OSError:
        return False
    return True


def _run_at(target: Callable[[], None], niceness: int) -> None:
    lower_priority(niceness)
    target()
