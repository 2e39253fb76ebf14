"""The tracker's helper threads (decoding, encoding), started at a lower priority than the thread that starts them.

The main thread's chain (optical flow, crops, the network, the smoother) is the pipeline's critical path: every
frame passes through it in order, while the decoder works ahead into a queue and the encoder behind from one. With
three busy threads on two cores the kernel shares the cores fairly, so the chain lost part of its core whenever a
helper woke up on it. Helpers `HELPER_NICENESS` levels lower leave the chain its core and still get the rest; the
queues absorb the moments they wait. On the `make run` sample, two cores, three interleaved A/B runs with the video
(medians of 3-4) gave 49.7 against 46.3 fps, 46.9 against 44.4 and 49.2 against 46.9 (+5-7 %); nice 10 did no
better than 5, and tracks only the gain is within the spread.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

# Nice levels a helper thread sits below the thread that starts it: the kernel weighs nice 0 against nice 5 about 3:1
# when both are runnable. Lowering only ever costs the helpers; nothing else on the machine gets less.
HELPER_NICENESS = 5


def start_helper(target: Callable[[], None], name: str) -> threading.Thread:
    """Start `target` in a daemon thread named `name`, at `HELPER_NICENESS` below the caller's priority."""
    thread = threading.Thread(target=_run_lowered, args=(target,), name=name, daemon=True)
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


def _run_lowered(target: Callable[[], None]) -> None:
    lower_priority(HELPER_NICENESS)
    target()
