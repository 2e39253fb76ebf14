"""A longer clip made of a short one, for the pipeline's steady-state speed: the clip played forward, then backward,
`--times` times in all, so it never cuts where it turns. On a short clip the costs paid once per run weigh on the
frame rate: the first frame's search and settling, before the encoder has a frame to work on, and the encoder
draining its queue alone at the end. The `make run` sample (132 frames) runs for about two seconds, of which they
take a tenth.

    python -m cape_track.benchmarks.long_clip --clip samples/sample.mp4 --out /tmp/sample_x4.mp4 --times 4
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cape_track.benchmarks.warped_clip import write_video
from cape_track.model.errors import CapeError
from cape_track.tracker.sources import read_frames


def back_and_forth(frames: Sequence[np.ndarray], times: int) -> list[np.ndarray]:
    """`frames` forward, backward, forward ... `times` passes; each turn repeats no frame (a pass back starts at the
    last frame but one), so the motion reverses without a pause or a cut."""
    if times < 1:
        raise ValueError(f"times must be >= 1, got {times}")
    frames = list(frames)
    out = frames[:]
    for i in range(1, times):
        out += frames[-2::-1] if i % 2 else frames[1:]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cape_track.benchmarks.long_clip", description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", type=Path, required=True, help="the short video to lengthen")
    p.add_argument("--out", type=Path, required=True, help="the video to write (H.264 MP4)")
    p.add_argument("--times", type=int, default=4, help="passes over the clip, alternately forward and back")
    args = p.parse_args(argv)
    try:
        frames, _, fps = read_frames(args.clip)
        if len(frames) < 2:
            raise ValueError(f"{args.clip}: a clip of at least 2 frames is needed, it has {len(frames)}")
        longer = back_and_forth(frames, args.times)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_video(args.out, longer, fps)
    except (CapeError, ValueError, OSError) as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(longer)} frames at {fps:g} fps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
