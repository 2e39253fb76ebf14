"""`cape-track`: track a video, image folder or webcam. The ONLY place that prints errors and picks exit codes:
0 done, 2 bad arguments or inputs (checked before any model work), 1 a failure mid-run, 130 Ctrl-C."""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TextIO

from cape_track.model.errors import CapeError, first_line
from cape_track.tracker.errors import SinkError

if TYPE_CHECKING:
    from cape_track.model import CapeModel, SupportSet
    from cape_track.tracker.pipeline import Tracker
    from cape_track.tracker.sinks import Sink
    from cape_track.tracker.sources import Source

# torch, timm, PyAV and OpenCV are imported in `_prepare`, after the arguments are checked: `--help`, `--version` and
# argument errors answer at once instead of after seconds of imports.
ACCEL_CHOICES = ("auto", "none", "compile", "tensorrt", "onnx")  # tracker.accel.ACCELS (checked equal by the tests)
MAX_BATCH = 256  # frames per model call: more only exhausts memory

PROG = "cape-track"


class _UsageError(Exception):
    """An argparse complaint, turned into the same one-line error as every other bad input."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Track the keypoints clicked on support image(s) through a video, an image folder or a webcam.",
        epilog="example: cape-track clip.mp4 --support ref.jpg   (reads ref.json beside ref.jpg); "
        "cape-track app opens the page; cape-track export MODEL.onnx writes an ONNX model",
    )
    p.add_argument(
        "video", nargs="*", help="video files, URLs, folders of images, or folders of videos (each tracked in turn)"
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines (errors and notes still shown)")
    p.add_argument("--webcam", type=_camera_index, metavar="INDEX", help="track a camera live instead of a file")
    p.add_argument("--support", action="append", metavar="IMAGE", help="support image; repeat for K shots")
    p.add_argument("--keypoints", action="append", metavar="FILE", help="keypoint file (default: IMAGE's .json)")
    p.add_argument(
        "--support-frame",
        type=_frame_index,
        metavar="N",
        help="the support image is frame N of VIDEO (keypoints from --keypoints, in that frame's pixels)",
    )
    p.add_argument(
        "--support-labels",
        metavar="FILE",
        help="existing labels as the support: COCO keypoints .json, DeepLabCut CollectedData .h5/.csv, SLEAP .slp",
    )
    p.add_argument("--labels-frame", type=_frame_index, metavar="N", help="with --support-labels: its N-th frame")
    p.add_argument("--labels-image", metavar="NAME", help="with --support-labels: the frame of this image file")
    p.add_argument("--checkpoint", metavar="PATH", help="model checkpoint (default: the embedded model)")
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle any Python object in --checkpoint: this RUNS CODE from the file; only for files you trust",
    )
    p.add_argument("--out", default="cape_out", metavar="DIR", help="output folder for files (default: cape_out)")
    p.add_argument("--out-beside", action="store_true", help="write each input's results in the input's own folder")
    policy = p.add_mutually_exclusive_group()
    policy.add_argument("--overwrite", action="store_true", help="replace results that already exist")
    policy.add_argument("--skip-existing", action="store_true", help="leave inputs whose results exist alone")
    p.add_argument("--fps", type=_positive_float, metavar="F", help="frame rate of image folders (default: 25)")
    p.add_argument("--record", metavar="DIR", help="with --webcam: also write the video and tracks to DIR")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    p.add_argument("--batch", type=_positive_int, default=4, metavar="N", help="frames per model call (default: 4)")
    p.add_argument(
        "--accel",
        choices=ACCEL_CHOICES,
        default="auto",
        help="backbone speed-up (default auto: onnx on the CPU when onnxruntime is installed, else none)",
    )
    p.add_argument(
        "--half",
        action="store_true",
        help="CUDA only: run the network in fp16 autocast (and fp16 TensorRT engines); ignored with a note on the CPU",
    )
    p.add_argument(
        "--keyframe-every",
        type=_bounded(int, 1, 1000, "a whole number of frames"),
        default=2,  # TrackerConfig's (a test keeps them equal; the pipeline is imported after the arguments)
        metavar="K",
        help="run the network every K frames, optical flow between (earlier when the flow fails); 1 = every frame "
        "(default: 2)",
    )
    p.add_argument(
        "--settle",
        type=_bounded(int, 0, 100, "a whole number of keyframes"),
        default=2,
        metavar="N",
        help="files: a frame's keypoints wait for N more keyframes and are smoothed backward from them; 0 = written "
        "at once (default: 2; live sources: 0)",
    )
    p.add_argument("--no-smooth", action="store_true", help="report the network's raw keypoints")
    p.add_argument("--offline", action="store_true", help="files only: add a backward smoothing pass")
    p.add_argument("--show", action="store_true", help="show a live window while tracking a file")
    p.add_argument(
        "--no-video",
        action="store_true",
        help="write the tracks (JSON, CSV, --export) without the annotated video: faster (with ONNX Runtime on the "
        "CPU the network then takes every core); an annotated video already there is left as it is",
    )
    p.add_argument(
        "--export",
        type=_export_list,
        default=(),
        metavar="FORMATS",
        help="also write the tracks as dlc (DeepLabCut CSV + HDF5), sleap (.slp + analysis HDF5), coco; e.g. dlc,coco",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (never raises, never prints a traceback for bad input)."""
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        # Not the collector's notes on objects left open (ResourceWarning, hidden by Python's own default): they
        # may be about any object of the process, not this run.
        warnings.simplefilter("ignore", ResourceWarning)
        warnings.showwarning = _print_note
        argv = sys.argv[1:] if argv is None else list(argv)
        if argv[:1] == ["app"]:
            return _app(argv[1:])
        if argv[:1] == ["export"]:
            return _onnx_export(argv[1:])
        parser = build_parser()
        if not argv:
            parser.print_usage(sys.stderr)
            return _fail("give a VIDEO (file or image folder) or --webcam INDEX, and --support IMAGE", 2)
        try:
            args = parser.parse_args(argv)
        except _UsageError as exc:
            return _fail(str(exc), 2)
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        return _run(args)


# The page's settings, also when launched from an installed wheel (no .streamlit/config.toml in the working folder):
# local only, no usage statistics, and no garbage collection after every rerun (it starves the tracking thread).
APP_OPTIONS = {"browser.gatherUsageStats": "false", "runner.postScriptGC": "false", "server.headless": "true"}


def _parse_subcommand(parser: argparse.ArgumentParser, argv: list[str], name: str) -> argparse.Namespace | int:
    """A subcommand's arguments, or the exit code to return: 2 after a one-line usage error, 0 after --help."""
    try:
        return parser.parse_args(argv)
    except _UsageError as exc:
        return _fail(f"{name}: {exc}", 2)
    except SystemExit as exc:
        return int(exc.code or 0)


def _app(argv: list[str]) -> int:
    """`cape-track app [--host H] [--port P]`: the Streamlit page, bound to 127.0.0.1 unless asked otherwise."""
    import subprocess

    p = _Parser(prog=f"{PROG} app", description="Open the cape-track page (Streamlit) in your browser.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8501, help="port (default 8501)")
    args = _parse_subcommand(p, argv, "app")
    if isinstance(args, int):
        return args
    if importlib.util.find_spec("streamlit") is None:
        return _fail("app: the page needs Streamlit (pip install 'cape-track[app]')", 2)
    page = Path(__file__).resolve().parent.parent / "streamlit_app" / "app.py"  # repository and wheel alike
    options = dict(APP_OPTIONS, **{"server.address": args.host, "server.port": str(args.port)})
    command = [sys.executable, "-m", "streamlit", "run", str(page), *(f"--{k}={v}" for k, v in options.items())]
    _err(f"{PROG}: the page is at http://{args.host}:{args.port} (Ctrl-C stops it)")
    child = subprocess.Popen(command)
    received: list[int] = []

    def stop(signum: int, frame: object) -> None:  # SIGTERM / SIGHUP reach only us: pass them on, no orphan server
        received.append(signum)
        child.terminate()
        killer = threading.Timer(10.0, child.kill)  # a server that ignores SIGTERM is killed after 10 s
        killer.daemon = True
        killer.start()

    forwarded = [sig for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if sig is not None]
    handlers = {sig: signal.signal(sig, stop) for sig in forwarded}
    try:
        code = child.wait()
    except KeyboardInterrupt:  # the terminal sent Ctrl-C to the server too; make sure it ends
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
        return 130
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return 128 + received[0] if received else code


def _onnx_export(argv: list[str]) -> int:
    """`cape-track export MODEL.onnx`: the network's prediction as an ONNX graph (and, with --support, the support
    embedding beside it as MODEL.support.npz), checked with onnxruntime when it is installed."""
    p = _Parser(prog=f"{PROG} export", description="Write the model as ONNX, to run with onnxruntime (no torch).")
    p.add_argument("output", metavar="MODEL.onnx", help="the ONNX file to write")
    p.add_argument("--checkpoint", metavar="PATH", help="model checkpoint (default: the embedded model)")
    p.add_argument("--trust-checkpoint", action="store_true", help="see cape-track --help (this RUNS CODE)")
    p.add_argument(
        "--keypoints",
        type=_bounded(int, 1, 1000, "a keypoint count"),
        metavar="N",
        help="keypoint count (or --support)",
    )
    p.add_argument(
        "--support", metavar="IMAGE", help="also write its embedding (keypoints from IMAGE's .json) as .support.npz"
    )
    p.add_argument("--overwrite", action="store_true", help="replace MODEL.onnx (and its .support.npz)")
    args = _parse_subcommand(p, argv, "export")
    if isinstance(args, int):
        return args
    out = Path(args.output)
    embedding_path = out.with_suffix(".support.npz")
    try:
        if out.suffix.lower() != ".onnx":
            raise _UsageError(f"{out}: the output must end in .onnx")
        if args.keypoints is None and args.support is None:
            raise _UsageError("give --keypoints N or --support IMAGE (the keypoint count is fixed in the graph)")
        for path in (out, embedding_path) if args.support else (out,):
            if path.exists() and not args.overwrite:
                raise SinkError(f"{path}: already exists (pass --overwrite to replace it)")
        _check_writable(out.parent)
        from cape_track.model import CapeModel, SupportSet
        from cape_track.tracker.accel import onnx_available

        support = SupportSet.from_files([args.support]) if args.support else None
        if support is not None and args.keypoints not in (None, support.num_keypoints):
            raise _UsageError(f"--keypoints {args.keypoints} but {args.support} has {support.num_keypoints}")
        if importlib.util.find_spec("onnx") is None:
            raise _UsageError("export needs the onnx package (pip install 'cape-track[onnx]')")
        model = CapeModel.from_checkpoint(args.checkpoint, trust=args.trust_checkpoint)
    except _UsageError as exc:
        return _fail(f"export: {exc}", 2)
    except CapeError as exc:
        return _fail(str(exc), 2)
    except OSError as exc:
        return _fail(_os_error(exc), 2)
    n = support.num_keypoints if support is not None else args.keypoints
    try:
        checked = _write_onnx(model, out, n, support, embedding_path, onnx_available(), args.overwrite)
    except KeyboardInterrupt:
        return _fail("export: interrupted (nothing half-written is left)", 130)
    except (CapeError, OSError) as exc:
        return _fail(f"export: {_os_error(exc) if isinstance(exc, OSError) else exc}", 1)
    except Exception as exc:  # the exporter refuses the graph (an operator it cannot express): one line
        return _fail(f"export: the model cannot be exported ({type(exc).__name__}: {first_line(exc)})", 1)
    beside = f" and {embedding_path}" if support is not None else ""
    count = f"{n} keypoint" + ("s" if n != 1 else "")
    _say(f"{PROG}: wrote {out}{beside} ({count}, {model.input_size} px input){checked}")
    return 0


def _write_onnx(
    model: CapeModel, out: Path, n: int, support: SupportSet | None, embedding_path: Path, check: bool, replace: bool
) -> str:
    """Export, write the embedding, check in onnxruntime (when installed); the files of a failed check are removed.
    Returns the check's words for the summary line. With `replace` (--overwrite) and no support, an old
    MODEL.support.npz beside the replaced graph is removed: it may hold another keypoint count."""
    from cape_track.model.export import NETWORK_TOLERANCE_PX, check_network, export_network, save_embedding

    export_network(model, out, n)
    if support is not None:
        save_embedding(model.encode_support_set(support), embedding_path, support.names)
    elif replace:
        embedding_path.unlink(missing_ok=True)
    if not check:
        return ""
    try:
        error = check_network(model, out, n)
    except Exception as exc:  # noqa: BLE001 - the runtime refuses the graph: the file is of no use
        problem = f"it does not run in onnxruntime ({first_line(exc)})"
    else:
        if error <= NETWORK_TOLERANCE_PX:
            return f"; onnxruntime matches torch within {error:.1e} px"
        problem = f"onnxruntime differs from torch by {error:.2g} px"
    out.unlink(missing_ok=True)
    embedding_path.unlink(missing_ok=True)
    raise SinkError(f"{out}: {problem}; removed")


def run() -> None:
    """Console-script entry point. A Ctrl-C that lands outside `main`'s own handling (while Python starts up the
    command) still ends in one line."""
    try:
        code = main()
    except KeyboardInterrupt:
        _err(f"{PROG}: interrupted")
        code = 130
    raise SystemExit(code)


@dataclass(frozen=True)
class _Job:
    """One input of the command line and where its results go."""

    spec: str | int  # a path or URL, or the webcam index
    stem: str  # the output name: OUT/<stem>.tracked.mp4, ...
    out: Path | None  # None: a webcam without --record (nothing written)


def _run(args: argparse.Namespace) -> int:
    """Check everything, load the model once, then track each input in turn. One input: its own exit code. Several:
    a failed input is reported in one line and the others still run; the exit code is the worst one (a signal
    stops the batch)."""
    with _Signals() as signals:
        try:
            jobs = _jobs(args)
            prepared = _prepare(args, jobs)
        except (CapeError, _UsageError) as exc:
            return _fail(str(exc), 2)
        except KeyboardInterrupt:
            _err(f"{PROG}: {signals.verb} before the first frame")
            return signals.exit_code
        except OSError as exc:  # a path the system refuses (too long, a loop, no permission): bad input
            return _fail(_os_error(exc), 2)
        except Exception as exc:  # an input that broke something unforeseen: still one line, no traceback
            return _fail(f"unexpected {type(exc).__name__}: {first_line(exc)}", 1)
        codes = []
        for job in jobs:
            if signals.signum is not None:  # a signal that arrived between inputs ends the batch
                codes.append(signals.exit_code)
                break
            code = _run_job(args, job, prepared, signals, named=len(jobs) > 1)
            codes.append(code)
            if code >= 128:
                break
        if len(jobs) > 1:
            failed = sum(code != 0 for code in codes)
            _say(f"{PROG}: {len(codes) - failed} of {len(jobs)} inputs done" + (f", {failed} failed" if failed else ""))
        return max(codes, key=lambda c: (c >= 128, c)) if codes else 0


def _run_job(args: argparse.Namespace, job: _Job, prepared: _Prepared, signals: _Signals, named: bool) -> int:
    prefix = f"{job.spec}: " if named else ""
    try:
        source, tracker, sinks = _open_job(args, job, prepared)
    except _Skipped as exc:
        _err(f"{PROG}: note: {exc}")
        return 0
    except (CapeError, _UsageError) as exc:
        message = str(exc)
        return _fail(message if not named or message.startswith(str(job.spec)) else prefix + message, 2)
    except KeyboardInterrupt:
        _err(f"{PROG}: {signals.verb} before the first frame")
        return signals.exit_code
    except OSError as exc:
        return _fail(prefix + _os_error(exc), 2)
    except Exception as exc:
        return _fail(f"{prefix}unexpected {type(exc).__name__}: {first_line(exc)}", 1)
    try:
        code = _track(tracker, source, sinks, job.out, signals, args.quiet)
    finally:
        source.close()
        signals.deferred = False  # between inputs a signal interrupts at once again
    return _export(args, job, code)


def _track(
    tracker: Tracker, source: Source, sinks: list[Sink], out: Path | None, signals: _Signals, quiet: bool = False
) -> int:
    """The run itself: signals are now held until the current frame is written everywhere."""
    progress = _ProgressLine(sys.stderr, terminal=_is_terminal(sys.stderr), quiet=quiet)
    start = time.perf_counter()
    signals.deferred = True

    def on_frame(done: int, total: int | None) -> None:
        signals.check()
        progress(done, total)

    run = tracker.run(source, sinks, on_frame)
    try:
        for _ in run:
            pass
    except CapeError as exc:
        return _stopped(run.times.frames, out, f"cape-track: error: {exc}", None, progress)
    except Exception as exc:  # a bug or an unforeseen input mid-run: the files done so far are still valid
        message = f"cape-track: error: unexpected {type(exc).__name__}: {first_line(exc)}"
        return _stopped(run.times.frames, out, message, None, progress)
    except KeyboardInterrupt:
        return _stopped(run.times.frames, out, "", signals, progress)
    progress.finish()
    seconds = time.perf_counter() - start
    frames = run.times.frames
    where = f"; results in {out}/" if out is not None else ""
    _say(f"{PROG}: {frames} frames in {seconds:.1f} s ({frames / max(seconds, 1e-9):.1f} fps){where}")
    return 0


def _is_terminal(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (OSError, ValueError):
        return False


def _err(line: str) -> None:
    """A line on stderr (a newline inside, from a file name, is shown as `\\n`: one message, one line); a closed or
    broken stderr loses the line, never the run."""
    try:
        if sys.stderr is not None:
            print(line.replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _say(line: str) -> None:
    """The summary on stdout; a closed pipe (`| head`) or a full device there does not turn a finished run into a
    failure (the files are written): the line is dropped and stdout is pointed at /dev/null for the exit flush."""
    try:
        print(line, flush=True)
    except (BrokenPipeError, OSError, ValueError):
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives until the process exits
        except OSError:
            pass


def _support(args: argparse.Namespace, first_input: str | int) -> SupportSet:
    """The support shots from support images, a frame of the input video, or an existing labels file."""
    from cape_track.model import KeypointFile, SupportSet
    from cape_track.model.labels import support_from_labels
    from cape_track.tracker.sources import read_frame

    if args.support_labels:
        return support_from_labels(args.support_labels, args.labels_frame, args.labels_image, read_frame)
    if args.support_frame is not None:
        image = read_frame(first_input, args.support_frame)
        points = KeypointFile.load(args.keypoints[0], (image.shape[1], image.shape[0]))
        return SupportSet.from_arrays(image, points.keypoints, points.visible, points.names, points.skeleton)
    return SupportSet.from_files(args.support, args.keypoints)


def _export(args: argparse.Namespace, job: _Job, code: int) -> int:
    """`--export`: the field's formats from the tracks file, for the frames done (also after a stop)."""
    if not args.export or job.out is None:
        return code
    from cape_track.tracker.exports import export_tracks
    from cape_track.tracker.sinks import output_paths

    tracks = output_paths(job.out, job.stem)["json"]
    if not tracks.is_file():
        return code
    try:
        video = Path(job.spec) if isinstance(job.spec, str) and not _is_url(job.spec) else None
        export_tracks(tracks, args.export, video=video)
    except CapeError as exc:
        _err(f"{PROG}: error: {exc}")
        return code or 1
    except (OSError, RuntimeError, ValueError) as exc:  # HDF5 and sleap-io failures (a full disk among them)
        _err(f"{PROG}: error: {tracks.parent}: export failed ({type(exc).__name__}: {first_line(exc)})")
        return code or 1
    return code


VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".wmv", ".flv")


def _is_url(spec: str) -> bool:
    return "://" in spec


def _expand(spec: str) -> list[str]:
    """A folder of videos is its videos (in name order); a folder of images stays one image-sequence input."""
    from cape_track.tracker.sources import IMAGE_SUFFIXES

    folder = Path(spec)
    if _is_url(spec) or not folder.is_dir():
        return [spec]
    entries = sorted(p for p in folder.iterdir() if p.is_file())
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in entries):
        return [spec]
    videos = [str(p) for p in entries if p.suffix.lower() in VIDEO_SUFFIXES]
    return videos or [spec]


def _jobs(args: argparse.Namespace) -> list[_Job]:
    """The inputs and their output names: the file name without its extension, or with it where two inputs of this
    run share a name (`clip.mov`, `clip.mkv` -> `clip.mov`, `clip.mkv`); never the same files twice."""
    if args.webcam is not None:
        if args.video:
            raise _UsageError("give VIDEO inputs or --webcam INDEX, not both")
        out = Path(args.record) if args.record else None
        return [_Job(args.webcam, f"webcam{args.webcam}", out)]
    if not args.video:
        raise _UsageError("give a VIDEO (file, URL or folder) or --webcam INDEX")
    specs = [one for spec in args.video for one in _expand(spec)]
    stems = [_stem_of(spec) for spec in specs]
    jobs = []
    for spec, stem in zip(specs, stems, strict=True):
        if stems.count(stem) > 1:
            stem = Path(spec).name if not _is_url(spec) else stem
        out = Path(spec).resolve().parent if args.out_beside and not _is_url(spec) else Path(args.out)
        jobs.append(_Job(spec, stem, out))
    seen: dict[tuple[Path | None, str], str] = {}
    for job in jobs:
        key = (job.out, job.stem)
        if key in seen:
            raise _UsageError(f"{job.spec} and {seen[key]} would write the same results (rename one)")
        seen[key] = str(job.spec)
    return jobs


def _stem_of(spec: str) -> str:
    """The output name of an input: the file name without its extension (a folder's own name; a URL's last part)."""
    if _is_url(spec):
        tail = spec.rstrip("/").rsplit("/", 1)[-1]
        return Path(tail).stem or "stream"
    return Path(spec).stem or Path(spec).resolve().name


@dataclass(frozen=True)
class _Prepared:
    """What every input of the run shares: the device, the loaded model, the support, the window choice."""

    device: object  # torch.device
    model: object  # CapeModel
    support: SupportSet
    live_window: bool
    headless: bool  # a webcam recorded without a window (no display): said once the camera is open


def _prepare(args: argparse.Namespace, jobs: list[_Job]) -> _Prepared:
    """Validate every argument before model work, cheapest first; raises `CapeError`/`_UsageError` on bad input."""
    given = [
        name
        for name, value in (
            ("--support", args.support),
            ("--support-frame", args.support_frame is not None),
            ("--support-labels", args.support_labels),
        )
        if value
    ]
    if not given:
        raise _UsageError("--support IMAGE is required (or --support-frame N, or --support-labels FILE)")
    if len(given) > 1:
        raise _UsageError(f"give one of {' / '.join(given)}, not several")
    if args.support_frame is not None and (args.webcam is not None or not args.keypoints):
        raise _UsageError("--support-frame N needs a VIDEO file and --keypoints FILE (the points on frame N)")
    if (args.labels_frame is not None or args.labels_image) and not args.support_labels:
        raise _UsageError("--labels-frame / --labels-image go with --support-labels FILE")
    if args.offline and (args.webcam is not None or any(_is_url(str(job.spec)) for job in jobs)):
        raise _UsageError("--offline needs files (a webcam or a stream cannot be read twice)")
    if args.offline and args.no_smooth:
        raise _UsageError("--offline is a smoothing pass (drop --no-smooth)")
    if args.webcam is None and args.record:
        raise _UsageError("--record is for --webcam (files are written to --out)")
    if args.webcam is not None and args.no_video and not args.record:
        raise _UsageError("--no-video is about the files written (add --record DIR with --webcam)")
    if "sleap" in args.export:
        from cape_track.tracker.exports import sleap_available

        if not sleap_available():
            raise _UsageError("--export sleap needs sleap-io (pip install 'cape-track[sleap]')")
    from cape_track.model import CapeModel
    from cape_track.model.device import select_device
    from cape_track.tracker.accel import configure_cpu_threads
    from cape_track.tracker.sinks import WindowSink

    device = select_device(args.device)
    configure_cpu_threads(device)
    live_window = args.webcam is not None or args.show
    if live_window and not WindowSink.display_available():
        if args.webcam is None or jobs[0].out is None:
            hint = "drop --show" if args.webcam is None else "add --record DIR to record without a window"
            raise SinkError(f"display: no display available ({hint}, or run on a desktop session)")
        live_window = False
        headless = True
    else:
        headless = False
    for job in jobs:
        if job.out is not None:
            _check_writable(job.out)
    support = _support(args, jobs[0].spec)
    if _is_terminal(sys.stderr):
        _err(f"{PROG}: loading the model ...")
    model = CapeModel.from_checkpoint(args.checkpoint, device=device, trust=args.trust_checkpoint)
    return _Prepared(device, model, support, live_window, headless)


def _open_job(args: argparse.Namespace, job: _Job, prepared: _Prepared) -> tuple[Source, Tracker, list[Sink]]:
    """The source, a tracker (the support encoded for it) and the sinks of one input; its output policy first."""
    from cape_track.tracker.accel import Accelerator
    from cape_track.tracker.pipeline import Tracker, TrackerConfig
    from cape_track.tracker.sinks import WindowSink, file_sinks, output_paths
    from cape_track.tracker.sources import WebcamSource, open_source

    if job.out is not None:
        paths = output_paths(job.out, job.stem)
        video = paths.pop("video") if args.no_video else None  # then neither replaced nor a reason to skip
        existing = [p for p in paths.values() if p.exists()]
        if existing and args.skip_existing:
            raise _Skipped(f"{existing[0]} exists: skipped (--skip-existing)")
        if existing and not args.overwrite:
            raise SinkError(f"{existing[0]}: already exists (pass --overwrite to replace it, or --skip-existing)")
        if video is not None and video.exists():
            _err(f"{PROG}: note: {video} is left from an earlier run (--no-video writes none)")
    if isinstance(job.spec, int):
        source: Source = WebcamSource(job.spec)
    else:
        source = open_source(job.spec, fps=args.fps)  # a string: "" is refused, a URL keeps its "//"
    if prepared.headless:
        warnings.warn("no display: recording without a window (Ctrl-C stops)", stacklevel=1)
    try:
        config = TrackerConfig(
            batch=args.batch,
            smooth=not args.no_smooth,
            offline=args.offline,
            keyframe_every=args.keyframe_every,
            settle=args.settle,
        )
        if args.half and prepared.device.type != "cuda":
            _err(f"{PROG}: note: --half is for CUDA devices; running in fp32")
        accel = Accelerator.for_device(prepared.device, args.accel, half=args.half)
        tracker = Tracker(prepared.model, prepared.support, config, accel)
    except BaseException:
        source.close()
        raise
    sinks: list[Sink] = file_sinks(job.out, job.stem, video=not args.no_video) if job.out is not None else []
    if prepared.live_window:
        sinks.append(WindowSink(f"{PROG}: {job.stem}"))
    return source, tracker, sinks


class _Skipped(CapeError):
    """An input left alone by --skip-existing: a note, not a failure."""


def _export_list(text: str) -> tuple[str, ...]:
    from cape_track.tracker.exports import parse_exports

    try:
        return parse_exports(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _version() -> str:
    """The installed distribution's version (what `cape_track.__version__` holds; the package root is above the
    tracker, so it is not imported from here)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cape-track")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise SinkError(f"{out}: cannot write results there ({exc.strerror or exc}; choose another folder)") from exc


def _stopped(done: int, out: Path | None, message: str, signals: _Signals | None, progress: _ProgressLine) -> int:
    """End of a run cut short after `done` frames, by a failure (`signals` None: exit 1) or a signal (128 + its
    number)."""
    progress.finish()
    if message:
        _err(message)
    partial = f"; partial results in {out}/" if out is not None else ""
    verb = signals.verb if signals is not None else "stopped"
    _err(f"{PROG}: {verb} after {done} frames{partial}")
    return signals.exit_code if signals is not None else 1


def _fail(message: str, code: int) -> int:
    _err(f"{PROG}: error: {message}")
    return code


def _os_error(exc: OSError) -> str:
    """`<path>: <reason> (check the path)`, a very long path shortened to its ends."""
    name = str(exc.filename) if exc.filename is not None else "path"
    if len(name) > 80:
        name = f"{name[:40]}...{name[-30:]} ({len(name)} characters)"
    return f"{name}: {exc.strerror or exc} (check the path)"


def _print_note(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
    """Warnings (accelerator fallbacks, truncated files) as one-line notes."""
    text = str(message).strip().splitlines()
    _err(f"{PROG}: note: {text[0] if text else category.__name__}")


def _bounded(convert: type, low: float, high: float, what: str) -> Callable[[str], float]:
    """An argparse type: `convert(text)` within [low, high], else one line saying what was expected."""

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not value >= low:  # NaN too
            raise argparse.ArgumentTypeError(f"{value} is not >= {low}")
        if value > high:
            raise argparse.ArgumentTypeError(f"{value} is more than {high}")
        return value

    return parse


_camera_index = _bounded(int, 0, 999, "a camera index (0, 1, ...)")  # OpenCV crashes on some negative ones
_frame_index = _bounded(int, 0, 10**9, "a frame number (0, 1, ...)")
_positive_float = _bounded(float, 1e-3, 10_000, "a frame rate")
_positive_int = _bounded(int, 1, MAX_BATCH, "a whole number")  # --batch


class _ProgressLine:
    """Progress on stderr: frames done (of total), percentage, fps and the time left. On a terminal one `\r`-rewritten
    line, at most ten updates a second; otherwise (a log file, a job scheduler's capture) a plain line every
    `log_every` seconds. `quiet` silences it. A stderr that breaks mid-run silences it too, never stops the run."""

    def __init__(self, stream: TextIO | None, terminal: bool, quiet: bool = False, log_every: float = 10.0) -> None:
        self.stream = None if quiet else stream
        self.terminal = terminal
        self.log_every = log_every
        self.start = time.perf_counter()
        self.last = self.start
        self.shown = False

    def __call__(self, done: int, total: int | None) -> None:
        now = time.perf_counter()
        every = 0.1 if self.terminal else self.log_every
        if self.stream is None or (now - self.last < every and done != total):
            return
        if not self.terminal and done == total:
            return  # the summary line follows
        self.last = now
        fps = done / max(now - self.start, 1e-9)
        count = f"{done}/{total} frames {100 * done / total:3.0f}%" if total else f"{done} frames"
        eta = f"  ETA {_duration((total - done) / fps)}" if total and fps > 0 else ""
        line = f"{PROG}: {count}  {fps:5.1f} fps{eta}"
        self._write(f"\r{line} " if self.terminal else f"{line}\n")
        self.shown = self.terminal

    def finish(self) -> None:
        if self.shown:
            self._write("\n")
            self.shown = False

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError, AttributeError):
            self.stream = None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


class _Signals:
    """One orderly stop for Ctrl-C (SIGINT), SIGTERM (job schedulers: Slurm, Kubernetes, systemd) and SIGHUP (a
    closed terminal). Before tracking starts a signal interrupts at once; while tracking (`deferred`) the first one
    is held until the frame being written has reached every output, so the video, JSON and CSV agree on the frames
    done; a second one interrupts at once. The exit code is 128 + the signal number (130, 143, 129)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferred = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in _STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def _handle(self, signum: int, frame: object) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if not (self.deferred and first):
            raise KeyboardInterrupt

    def check(self) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    @property
    def verb(self) -> str:
        if self.signum in (None, signal.SIGINT):
            return "interrupted"
        return f"stopped by {signal.Signals(self.signum).name}"


_STOP_SIGNALS = tuple(sig for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if sig)


if __name__ == "__main__":
    run()
