"""The tracker's helper threads (decoding, encoding), started at a chosen priority relative to the thread that starts
them.

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

import os
import sys
import threading
from collections.abc import Callable

# Nice levels a helper thread sits below the thread that starts it: the kernel weighs nice 0 against nice 5 about 3:1
# when both are runnable. Lowering only ever costs the helpers; nothing else on the machine gets less.
HELPER_NICENESS = 5


def start_helper(target: Callable[[], None], name: str, niceness: int = HELPER_NICENESS) -> threading.Thread:
    """Start `target` in a daemon thread named `name`, `niceness` levels below the caller's priority (0: at it)."""
    thread = threading.Thread(target=_run_lowered, args=(target, niceness), name=name, daemon=True)
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


def _run_lowered(target: Callable[[], None], niceness: int) -> None:
    lower_priority(niceness)
    target()
