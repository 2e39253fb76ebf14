"""Keypoint smoothing: a constant-velocity Kalman filter per keypoint, batched over keypoints with numpy (filterpy
supplies the matrices), with score-driven measurement noise, Mahalanobis gating, low-score hiding, an optional
pyramidal Lucas-Kanade optical-flow motion prediction, and an offline Rauch-Tung-Striebel pass."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from filterpy.common import Q_discrete_white_noise

from cape_track.tracker.flow import FlowImage, optical_flow


@dataclass(frozen=True)
class SmootherConfig:
    """Noise levels are fractions of `scale`, the side of the crop the network saw (its error grows with it)."""

    accel_std: float = 0.01  # process noise: random acceleration per frame^2, fraction of scale
    meas_std: float = 0.02  # measurement std at score 1 (about 5 px of a 256 input), fraction of scale
    # Measurement std = meas_std / score**score_power. The network's errors are heavy-tailed and its score falls
    # when it is unsure, so low scores are distrusted more than in proportion (compared on the generated clips of
    # benchmarks/warped_clip.py).
    score_power: float = 2.0
    init_velocity_std: float = 0.05  # velocity std of a newly started keypoint, fraction of scale per frame
    min_score: float = 0.2  # a measurement scoring less is not used: the keypoint coasts
    hide_after: int = 3  # consecutive low-score frames after which a keypoint is reported not visible
    # Mahalanobis^2 gate on the innovation (chi^2 with 2 dof, 99.9 %), measured against the score-1 noise: a low
    # score makes a measurement count less, never makes a far-off one acceptable.
    gate: float = 13.8
    # Consecutive confident but gated-out measurements that restart a keypoint at the network's position: a few
    # where the flow lost the keypoint, more while the flow still follows it (a briefly disagreeing network is
    # more likely wrong, e.g. on another part of a similar-looking object, than the flow; a network that keeps
    # disagreeing means the track itself started or slid onto the wrong thing, and flow would follow it forever).
    reacquire_after: int = 3
    reacquire_after_flow: int = 5
    flow: bool = True  # use pyramidal Lucas-Kanade optical flow as the motion prediction where it is reliable
    # Process noise where the flow is trusted, fraction of scale per frame. The flow drifts off a keypoint more than
    # its forward-backward check says, so the network's measurements must keep pulling the track back; with
    # keyframes they come a few frames apart. Development set (PCK@0.05 / 0.1, keyframes every 4): 0.003 gave
    # 63.0 / 91.0 on same-instance supports and 25.0 / 62.0 from photos; 0.012 gives 67.3 / 92.6 and 27.1 / 63.3
    # (0.009 and 0.016 no better; the generated clips within their noise).
    flow_std: float = 0.012
    flow_max_error: float = 1.0  # forward-backward disagreement (frame px) above which the flow is not trusted


@dataclass(frozen=True)
class SmootherState:
    """The filter after one frame. Both axes share one covariance because their noise is isotropic."""

    x: np.ndarray  # [N, 2, 2] per keypoint and axis (x, y): (position frame px, velocity px per frame)
    P: np.ndarray  # [N, 2, 2] covariance of (position, velocity)
    tracked: np.ndarray  # [N] bool, started by a confident measurement (else x is meaningless)
    low: np.ndarray  # [N] int, consecutive frames scoring below min_score
    rejected: np.ndarray  # [N] int, consecutive confident measurements rejected by the gate
    flow: FlowImage | None  # the previous frame prepared for optical flow (None: flow off, or the first frame)

    @property
    def xy(self) -> np.ndarray:
        return self.x[:, :, 0]

    @property
    def velocity(self) -> np.ndarray:
        return self.x[:, :, 1]


@dataclass(frozen=True)
class StepRecord:
    """What the offline RTS pass needs from one forward step (about 80 bytes per keypoint)."""

    x: np.ndarray  # [N, 2, 2] posterior state
    P: np.ndarray  # [N, 2, 2] posterior covariance
    motion: np.ndarray  # [N, 2] flow displacement used by the prediction into this frame (NaN: constant velocity)
    dt: float  # frames since the previous step
    q: np.ndarray  # [N] process-noise variance of the prediction into this frame
    fresh: np.ndarray  # [N] bool, (re)started at this frame or untracked: no smoothing across into it


@dataclass(frozen=True)
class Motion:
    """A frame's optical flow input: the frame prepared for flow, and where it moved each tracked keypoint."""

    image: FlowImage | None  # None: flow off, or no image
    displacement: (
        np.ndarray
    )  # [N, 2] frame px from the previous frame; NaN: not followed (untracked, lost, checked out)


@dataclass(frozen=True)
class Smoothed:
    state: SmootherState
    xy: np.ndarray  # [N, 2] frame px
    visible: np.ndarray  # [N] bool
    record: StepRecord


class KalmanSmoother:
    """Stateless operator over explicit `SmootherState`s, so the tracker, tests and the offline pass share it."""

    def __init__(self, config: SmootherConfig | None = None) -> None:
        self.config = config or SmootherConfig()

    def init_state(self, num_keypoints: int) -> SmootherState:
        n = num_keypoints
        return SmootherState(
            x=np.zeros((n, 2, 2)),
            P=np.zeros((n, 2, 2)),
            tracked=np.zeros(n, bool),
            low=np.zeros(n, np.int64),
            rejected=np.zeros(n, np.int64),
            flow=None,
        )

    def motion(self, state: SmootherState, image: np.ndarray | None, prepared: FlowImage | None = None) -> Motion:
        """Optical flow of the tracked keypoints from the previous frame to `image` (RGB [H, W, 3]), or to the same
        frame `prepared` already (by the source's reader thread: `Frame.flow`); the tracker asks before deciding
        whether a frame needs the network (`pipeline.keyframe_reason`)."""
        flow = None
        if self.config.flow:
            if prepared is not None and (image is None or prepared.shape == image.shape[:2]):
                flow = prepared
            elif image is not None:
                flow = FlowImage.from_rgb(image)
        displacement = np.full(state.x.shape[:2], np.nan)
        if flow is not None and state.flow is not None and state.flow.shape == flow.shape and state.tracked.any():
            tracked = state.tracked
            displacement[tracked] = optical_flow(state.flow, flow, state.xy[tracked], self.config.flow_max_error)
        return Motion(flow, displacement)

    def step(
        self,
        state: SmootherState,
        xy: np.ndarray | None,
        scores: np.ndarray | None,
        scale: float,
        dt: float = 1.0,
        image: np.ndarray | None = None,
        motion: Motion | None = None,
    ) -> Smoothed:
        """Predict to this frame and fuse the network's keypoints `xy` [N, 2] (frame px) scored `scores` [N].

        `scale` is the crop side in frame px (noise scales with it), `dt` the frames since the previous step (from
        timestamps, so variable frame rates are handled), `image` the RGB frame [H, W, 3] for optical flow, or its
        `motion` already computed. `xy = scores = None` is a frame without a measurement (between keyframes): the
        flow alone moves the keypoints, and no counter of confident or low-score frames advances.
        """
        c = self.config
        motion = motion if motion is not None else self.motion(state, image)
        flow, displacement = motion.image, motion.displacement
        measured = xy is not None and scores is not None
        xy = np.asarray(xy, np.float64) if measured else state.xy.copy()
        scores = np.asarray(scores, np.float64) if measured else np.zeros(len(xy))
        # Flow-predicted keypoints get the (small) flow error as process noise, the others the acceleration noise:
        # the filter then follows the precise frame-to-frame flow and the network corrects its drift.
        lost = np.isnan(displacement).any(-1)
        q = np.where(lost, (c.accel_std * scale) ** 2, (c.flow_std * scale) ** 2)
        x_prior, p_prior, _ = predict(state.x, state.P, dt, q, displacement)

        r_base = (c.meas_std * scale) ** 2
        r = r_base / np.clip(scores, 0.05, 1.0) ** (2 * c.score_power)  # [N] measurement variance from the score
        confident = scores >= c.min_score
        x, p, accepted = update(x_prior, p_prior, xy, r, confident & state.tracked, c.gate, r_base)
        rejected = (
            np.where(confident & state.tracked & ~accepted, state.rejected + 1, 0) if measured else state.rejected
        )
        needed = np.where(lost, c.reacquire_after, c.reacquire_after_flow)
        fresh = confident & (~state.tracked | (rejected >= needed))
        x[fresh] = np.stack([xy[fresh], np.zeros_like(xy[fresh])], axis=-1)
        p[fresh] = initial_covariance(r[fresh], (c.init_velocity_std * scale) ** 2)
        rejected = np.where(fresh, 0, rejected)
        tracked = state.tracked | fresh
        low = np.where(confident, 0, state.low + 1) if measured else state.low
        visible = tracked & (low < c.hide_after)
        x[tracked & ~visible, :, 1] = 0.0  # a hidden keypoint stays where it was last seen instead of drifting
        new = SmootherState(x, p, tracked, low, rejected, flow)
        out_xy = np.where(tracked[:, None], x[:, :, 0], xy)
        return Smoothed(new, out_xy, visible, StepRecord(x, p, displacement, dt, q, fresh | ~tracked))

    def smooth_offline(self, records: list[StepRecord]) -> np.ndarray:
        """Rauch-Tung-Striebel pass over a whole forward run: smoothed positions [T, N, 2] frame px."""
        if not records:
            return np.zeros((0, 0, 2))
        xs = records[-1].x.copy()
        ps = records[-1].P.copy()
        out = np.empty((len(records),) + xs.shape[:2])
        out[-1] = xs[:, :, 0]
        for k in range(len(records) - 2, -1, -1):
            now, nxt = records[k], records[k + 1]
            x_prior, p_prior, f = predict(now.x, now.P, nxt.dt, nxt.q, nxt.motion)
            p_prior[nxt.fresh] = np.eye(2)  # untracked rows may be singular; their gain is zeroed below
            gain = now.P @ f.transpose(0, 2, 1) @ np.linalg.inv(p_prior)  # [N, 2, 2]
            gain[nxt.fresh] = 0.0  # no smoothing across a (re)start
            xs = now.x + np.einsum("nij,naj->nai", gain, xs - x_prior)
            ps = now.P + gain @ (ps - p_prior) @ gain.transpose(0, 2, 1)
            out[k] = xs[:, :, 0]
        return out


def transition(dt: float) -> np.ndarray:
    """Constant-velocity transition for one axis, state (position, velocity)."""
    return np.array([[1.0, dt], [0.0, 1.0]])


@functools.lru_cache(maxsize=64)
def white_noise(dt: float) -> np.ndarray:
    """filterpy's discrete white-noise acceleration covariance [2, 2] of unit variance over `dt` frames, read-only.
    Cached: filterpy builds it through scipy's `block_diag`, 0.09 ms a call, three calls a frame (the forward step
    and the settling's backward passes), and the step is nearly always the same."""
    noise = Q_discrete_white_noise(dim=2, dt=dt, var=1.0)
    noise.flags.writeable = False
    return noise


def initial_covariance(r: np.ndarray, velocity_var: float) -> np.ndarray:
    """[M, 2, 2] covariance of keypoints started from a measurement of variance `r` [M] with zero velocity."""
    p = np.zeros((len(r), 2, 2))
    p[:, 0, 0] = r
    p[:, 1, 1] = velocity_var
    return p


def predict(
    x: np.ndarray, p: np.ndarray, dt: float, q: float | np.ndarray, motion: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prediction of states [N, 2, 2] and covariances [N, 2, 2] one step of `dt` frames ahead; also returns the
    transition [N, 2, 2] each keypoint used (the RTS pass needs it).

    Without `motion` (or where it is NaN) the model is constant velocity with white-noise acceleration of variance
    `q`. Where `motion` [N, 2] (frame px, from optical flow) is known, it moves the position directly and becomes the
    velocity: transition [[1, 0], [0, 0]] plus the control input (motion, motion / dt), and the process noise `q`
    is the flow's own error (variance q dt on the position). The old velocity's uncertainty must not leak into the
    position there: the flow measured the displacement, so the position stays as certain as the flow is.
    """
    n = len(x)
    q = np.broadcast_to(np.asarray(q, np.float64), (n,))  # scalar or per keypoint [N]
    f = np.broadcast_to(transition(dt), (n, 2, 2)).copy()
    noise = white_noise(dt)[None] * q[:, None, None]
    known = np.zeros(n, bool) if motion is None else ~np.isnan(motion).any(-1)
    f[known] = np.array([[1.0, 0.0], [0.0, 0.0]])
    step = max(dt, 1e-3)  # two frames with one timestamp: the flow still measured a displacement
    noise[known] = q[known, None, None] * np.diag([step, 1.0 / step])[None]
    x_prior = np.einsum("nij,naj->nai", f, x)
    if known.any():
        x_prior[known, :, 0] += motion[known]
        x_prior[known, :, 1] += motion[known] / step
    p_prior = f @ p @ f.transpose(0, 2, 1) + noise
    return x_prior, p_prior, f


def update(
    x: np.ndarray, p: np.ndarray, z: np.ndarray, r: np.ndarray, use: np.ndarray, gate: float, r_gate: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuse position measurements `z` [N, 2] of variance `r` [N] where `use` [N] and the innovation passes the
    Mahalanobis gate `gate` computed with measurement variance `r_gate`; returns (x, P, accepted [N])."""
    s = p[:, 0, 0] + r  # [N] innovation variance, the same on both axes
    innovation = z - x[:, :, 0]  # [N, 2]
    accepted = use & ((innovation**2).sum(-1) / (p[:, 0, 0] + r_gate) <= gate)
    gain = p[:, :, 0] / s[:, None]  # [N, 2] for (position, velocity)
    x_new = x + np.where(accepted[:, None, None], gain[:, None, :] * innovation[:, :, None], 0.0)
    p_new = np.where(accepted[:, None, None], p - s[:, None, None] * gain[:, :, None] * gain[:, None, :], p)
    return x_new, p_new, accepted
