"""Smoother: equal to filterpy's KalmanFilter and RTS smoother step by step; gating, hiding, optical flow as the
motion model (its covariance, and its say over restarts)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from filterpy.common import Q_discrete_white_noise
from filterpy.kalman import KalmanFilter

from cape_track.tracker.flow import FlowImage, optical_flow
from cape_track.tracker.smoothing import KalmanSmoother, SmootherConfig, predict, white_noise

NO_GATE = SmootherConfig(flow=False, gate=1e12, min_score=0.0)


def _filterpy(x0: np.ndarray, r0: float, config: SmootherConfig, scale: float) -> KalmanFilter:
    """filterpy's 4-state filter (x, vx, y, vy) started the way ours starts a keypoint."""
    kf = KalmanFilter(dim_x=4, dim_z=2)
    kf.x = np.array([x0[0], 0.0, x0[1], 0.0])
    kf.P = np.diag([r0, (config.init_velocity_std * scale) ** 2] * 2)
    kf.H = np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0]])
    return kf


def _as_filterpy_layout(x: np.ndarray) -> np.ndarray:
    """Ours [2 axes, (pos, vel)] -> filterpy's (x, vx, y, vy)."""
    return x.reshape(4)


@pytest.mark.parametrize("n", [1, 17, 100])
def test_kalman_equals_filterpy_step_by_step(n: int) -> None:
    rng = np.random.default_rng(1)
    config, scale = NO_GATE, 80.0
    smoother = KalmanSmoother(config)
    state = smoother.init_state(n)
    truth = rng.uniform(0, 200, (n, 2))
    velocity = rng.normal(0, 2, (n, 2))
    filters: list[KalmanFilter] = []
    for t in range(12):
        dt = 1.0 if t % 4 else 2.0  # a variable frame rate step now and then
        truth = truth + velocity * dt
        z = truth + rng.normal(0, 1.0, (n, 2))
        scores = rng.uniform(0.3, 1.0, n)
        r = (config.meas_std * scale / scores**config.score_power) ** 2
        out = smoother.step(state, z, scores, scale=scale, dt=dt)
        state = out.state
        if t == 0:
            filters = [_filterpy(z[k], r[k], config, scale) for k in range(n)]
        else:
            for k, kf in enumerate(filters):
                f = np.kron(np.eye(2), np.array([[1.0, dt], [0.0, 1.0]]))
                q = Q_discrete_white_noise(dim=2, dt=dt, var=(config.accel_std * scale) ** 2, block_size=2)
                kf.predict(F=f, Q=q)
                kf.update(z[k], R=np.eye(2) * r[k])
        for k, kf in enumerate(filters):
            np.testing.assert_allclose(_as_filterpy_layout(state.x[k]), kf.x, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(state.P[k], kf.P[:2, :2], rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(state.P[k], kf.P[2:, 2:], rtol=1e-9, atol=1e-12)
        assert out.visible.all()


def test_rts_equals_filterpy() -> None:
    rng = np.random.default_rng(2)
    config, scale, n, steps = NO_GATE, 50.0, 3, 15
    smoother = KalmanSmoother(config)
    state = smoother.init_state(n)
    records, xs, ps, fs, qs = [], [], [], [], []
    filters: list[KalmanFilter] = []
    truth = rng.uniform(0, 100, (n, 2))
    for t in range(steps):
        truth = truth + 1.5
        z = truth + rng.normal(0, 2.0, (n, 2))
        scores = rng.uniform(0.4, 1.0, n)
        r = (config.meas_std * scale / scores**config.score_power) ** 2
        out = smoother.step(state, z, scores, scale=scale)
        state = out.state
        records.append(out.record)
        f = np.kron(np.eye(2), np.array([[1.0, 1.0], [0.0, 1.0]]))
        q = Q_discrete_white_noise(dim=2, dt=1.0, var=(config.accel_std * scale) ** 2, block_size=2)
        if t == 0:
            filters = [_filterpy(z[k], r[k], config, scale) for k in range(n)]
        else:
            for k, kf in enumerate(filters):
                kf.predict(F=f, Q=q)
                kf.update(z[k], R=np.eye(2) * r[k])
        xs.append([kf.x.copy() for kf in filters])
        ps.append([kf.P.copy() for kf in filters])
        fs.append(f)
        qs.append(q)
    ours = smoother.smooth_offline(records)  # [T, N, 2]
    for k, kf in enumerate(filters):
        smoothed, _, _, _ = kf.rts_smoother(np.array([x[k] for x in xs]), np.array([p[k] for p in ps]), fs, qs)
        np.testing.assert_allclose(ours[:, k], smoothed[:, [0, 2]], rtol=1e-9, atol=1e-9)
    assert not np.allclose(ours[:-1], np.array([r.x[:, :, 0] for r in records])[:-1])  # it did smooth


def test_low_score_keypoint_becomes_not_visible_and_stops() -> None:
    config = SmootherConfig(flow=False, hide_after=3)
    smoother = KalmanSmoother(config)
    state = smoother.init_state(2)
    for t in range(6):  # both move right by 2 px per frame
        state = smoother.step(state, np.array([[10.0 + 2 * t, 10.0], [50.0 + 2 * t, 50.0]]), np.ones(2), 100.0).state
    visible_history, positions = [], []
    for t in range(6, 14):  # keypoint 1 loses its score; the network's guess for it jumps around
        z = np.array([[10.0 + 2 * t, 10.0], [0.0, 0.0]])
        out = smoother.step(state, z, np.array([0.9, 0.05]), 100.0)
        state = out.state
        visible_history.append(out.visible.copy())
        positions.append(out.xy[1].copy())
    assert all(v[0] for v in visible_history)
    assert [bool(v[1]) for v in visible_history] == [True, True, False, False, False, False, False, False]
    hidden = np.array(positions[2:])
    np.testing.assert_allclose(hidden, np.broadcast_to(hidden[0], hidden.shape))  # reported where it was, not drifting
    assert hidden[0][0] > 55  # and not dragged to the low-score guess at (0, 0)


def test_gate_rejects_an_outlier_then_reacquires() -> None:
    config = SmootherConfig(flow=False, reacquire_after=3)
    smoother = KalmanSmoother(config)
    state = smoother.init_state(1)
    for _ in range(5):
        state = smoother.step(state, np.array([[100.0, 100.0]]), np.ones(1), 100.0).state
    out = smoother.step(state, np.array([[160.0, 100.0]]), np.ones(1), 100.0)  # a single wild detection
    assert abs(out.xy[0, 0] - 100.0) < 1.0
    state = out.state
    for _ in range(2):  # the object really moved: after `reacquire_after` confident rejections it restarts there
        state = smoother.step(state, np.array([[160.0, 100.0]]), np.ones(1), 100.0).state
    np.testing.assert_allclose(state.xy[0], [160.0, 100.0])


def test_untracked_keypoints_report_raw_positions_as_not_visible() -> None:
    smoother = KalmanSmoother(SmootherConfig(flow=False))
    out = smoother.step(smoother.init_state(2), np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0.9, 0.0]), 50.0)
    assert out.visible.tolist() == [True, False]
    np.testing.assert_allclose(out.xy, [[1.0, 2.0], [3.0, 4.0]])


def _texture(shift: tuple[float, float]) -> np.ndarray:
    rng = np.random.default_rng(3)
    base = cv2.GaussianBlur(rng.uniform(0, 255, (120, 160)).astype(np.float32), (0, 0), 2.0)
    matrix = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]])
    moved = cv2.warpAffine(base, matrix, (160, 120), borderMode=cv2.BORDER_REFLECT)
    return np.clip(moved * 3 - 256, 0, 255).astype(np.uint8)


def test_optical_flow_finds_the_shift() -> None:
    points = np.array([[60.0, 50.0], [90.0, 70.0], [100.0, 40.0]])
    prev, moved = (FlowImage.from_rgb(np.stack([_texture(s)] * 3, axis=-1)) for s in ((0, 0), (2.5, -1.5)))
    flow = optical_flow(prev, moved, points, max_error=1.0)
    np.testing.assert_allclose(flow, [[2.5, -1.5]] * 3, atol=0.2)


def test_optical_flow_on_large_frames_runs_downscaled_in_frame_pixels() -> None:
    """A 1280x960 frame is tracked at 640x480; displacements still come back in frame px."""
    big = [cv2.resize(np.stack([_texture(s)] * 3, axis=-1), (1280, 960)) for s in ((0, 0), (2.0, 1.0))]
    prev, moved = FlowImage.from_rgb(big[0]), FlowImage.from_rgb(big[1])
    assert prev.factor == 0.5 and prev.gray.shape == (480, 640)
    flow = optical_flow(prev, moved, np.array([[500.0, 400.0], [700.0, 500.0]]), max_error=2.0)
    np.testing.assert_allclose(flow, [[16.0, 8.0]] * 2, atol=0.5)  # the texture moved 2 px at 160 px: 16 px here


def test_flow_is_the_motion_prediction() -> None:
    """A keypoint whose network score is too low to fuse still follows the image motion through the flow."""
    config = SmootherConfig(flow=True, min_score=0.5, hide_after=100)
    smoother = KalmanSmoother(config)
    still = np.stack([_texture((0, 0))] * 3, axis=-1)
    moved = np.stack([_texture((3.0, 0.0))] * 3, axis=-1)
    state = smoother.step(smoother.init_state(1), np.array([[80.0, 60.0]]), np.ones(1), 60.0, image=still).state
    out = smoother.step(state, np.array([[0.0, 0.0]]), np.array([0.1]), 60.0, image=moved)
    np.testing.assert_allclose(out.xy[0], [83.0, 60.0], atol=0.3)
    no_flow = KalmanSmoother(SmootherConfig(flow=False, min_score=0.5, hide_after=100))
    state = no_flow.step(no_flow.init_state(1), np.array([[80.0, 60.0]]), np.ones(1), 60.0, image=still).state
    np.testing.assert_allclose(no_flow.step(state, np.zeros((1, 2)), np.array([0.1]), 60.0).xy[0], [80.0, 60.0])


def test_flow_prediction_keeps_the_position_as_certain_as_the_flow() -> None:
    """Where flow moved a keypoint, its position variance grows by the flow's error only: the (large) uncertainty
    of the old velocity must not leak in, or the filter would follow every network measurement."""
    x = np.zeros((2, 2, 2))
    p = np.array([np.diag([4.0, 100.0])] * 2)  # position var 4 px^2, velocity var 100 (px/frame)^2
    motion = np.array([[3.0, -1.0], [np.nan, np.nan]])
    x_prior, p_prior, f = predict(x, p, 1.0, np.array([0.25, 0.25]), motion)
    np.testing.assert_allclose(x_prior[0, :, 0], [3.0, -1.0])  # moved by the flow
    np.testing.assert_allclose(x_prior[0, :, 1], [3.0, -1.0])  # which is also the velocity now
    assert p_prior[0, 0, 0] == pytest.approx(4.0 + 0.25)
    assert p_prior[1, 0, 0] > 100.0  # constant velocity: the velocity variance enters the position
    np.testing.assert_array_equal(f[0], [[1.0, 0.0], [0.0, 0.0]])


def test_a_low_score_does_not_widen_the_gate() -> None:
    smoother = KalmanSmoother(SmootherConfig(flow=False))
    state = smoother.init_state(1)
    for _ in range(5):
        state = smoother.step(state, np.array([[100.0, 100.0]]), np.ones(1), 100.0).state
    far = smoother.step(state, np.array([[115.0, 100.0]]), np.array([0.3]), 100.0)
    assert far.xy[0, 0] == pytest.approx(100.0, abs=0.5)  # rejected, not fused with a small weight
    near = smoother.step(state, np.array([[102.0, 100.0]]), np.array([0.3]), 100.0)
    assert 100.0 < near.xy[0, 0] < 101.0  # fused, with a small weight


def test_flow_delays_a_restart_the_network_asks_for() -> None:
    """A confident network that keeps disagreeing restarts a keypoint after `reacquire_after` frames where the
    flow lost it, after `reacquire_after_flow` frames while the flow still follows it."""
    config = SmootherConfig(flow=True, reacquire_after=3, reacquire_after_flow=8)
    smoother = KalmanSmoother(config)
    frame = np.stack([_texture((0, 0))] * 3, axis=-1)

    def settled():
        state = smoother.init_state(1)
        for _ in range(4):
            state = smoother.step(state, np.array([[80.0, 60.0]]), np.ones(1), 60.0, image=frame).state
        return state

    state = settled()
    for _ in range(7):  # the image is still and the flow says so; the network insists on another place
        state = smoother.step(state, np.array([[110.0, 60.0]]), np.ones(1), 60.0, image=frame).state
    np.testing.assert_allclose(state.xy[0], [80.0, 60.0], atol=0.5)
    state = smoother.step(state, np.array([[110.0, 60.0]]), np.ones(1), 60.0, image=frame).state
    np.testing.assert_allclose(state.xy[0], [110.0, 60.0])  # the 8th: the track itself was wrong

    state = settled()
    blank = np.zeros_like(frame)  # no texture: the flow is not trusted, and the network wins after 3 frames
    for _ in range(3):
        state = smoother.step(state, np.array([[110.0, 60.0]]), np.ones(1), 60.0, image=blank).state
    np.testing.assert_allclose(state.xy[0], [110.0, 60.0])


def test_the_cached_process_noise_is_filterpys_and_cannot_be_changed() -> None:
    for dt in (1.0, 0.5, 2.25):
        assert np.array_equal(white_noise(dt), Q_discrete_white_noise(dim=2, dt=dt, var=1.0))
    with pytest.raises(ValueError, match="read-only"):
        white_noise(1.0)[0, 0] = 5.0
    assert white_noise(1.0)[0, 0] == 0.25
