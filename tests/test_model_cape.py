"""CapeModel behaviour: shapes over N / K / batch, padding invariance, the cached support, derived scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cape_track import model
from cape_track.model.decoder import skeleton_adjacency


@pytest.fixture(scope="module")
def net() -> model.CapeModel:
    torch.manual_seed(0)
    return model.CapeModel.from_preset("test").eval()


def _support_inputs(k: int, b: int, n: int, s: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
    images = torch.randn(k, b, 3, s, s)
    kps = torch.rand(k, b, n, 2) * (s - 1)
    vis = torch.ones(k, b, n)
    skel = [[[i, i + 1] for i in range(n - 1)] for _ in range(b)]
    return images, kps, vis, skel


@pytest.mark.parametrize("n", [1, 17, 100])
@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("b", [1, 3])
def test_shapes(net: model.CapeModel, n: int, k: int, b: int) -> None:
    s = net.encode_support(*_support_inputs(k, b, n))
    p = net.predict(torch.randn(b, 3, 256, 256), s)
    layers = net.config.num_decoder_layers
    assert p.keypoints.shape == (b, n, 2) and p.scores.shape == (b, n)
    assert p.layers.shape == (layers, b, n, 2)
    assert torch.allclose(p.keypoints, p.layers[-1] * 256)
    assert ((p.scores >= 0) & (p.scores <= 1)).all()


def test_batch_one_support_serves_any_batch(net: model.CapeModel) -> None:
    s = net.encode_support(*_support_inputs(1, 1, 5))
    q = torch.randn(3, 3, 256, 256)
    batched = net.predict(q, s).keypoints
    single = torch.cat([net.predict(q[i : i + 1], s).keypoints for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=0)


def test_padding_does_not_change_real_keypoints(net: model.CapeModel) -> None:
    images, kps, vis, skel = _support_inputs(1, 1, 7)
    q = torch.randn(1, 3, 256, 256)
    plain = net.predict(q, net.encode_support(images, kps, vis, skel))
    pad_kps = torch.cat((kps, torch.zeros(1, 1, 93, 2)), dim=2)
    pad_vis = torch.cat((vis, torch.zeros(1, 1, 93)), dim=2)
    padded = net.predict(q, net.encode_support(images, pad_kps, pad_vis, skel))
    torch.testing.assert_close(padded.keypoints[:, :7], plain.keypoints, atol=1e-4, rtol=0)
    torch.testing.assert_close(padded.scores[:, :7], plain.scores, atol=1e-5, rtol=0)
    assert (padded.scores[:, 7:] == 0).all()


def test_predict_does_not_recompute_the_support(net: model.CapeModel) -> None:
    """The backbone sees only the query images per predict call: the support pass is cached."""
    s = net.encode_support(*_support_inputs(5, 1, 9))
    batches = []
    hook = net.backbone.register_forward_hook(lambda mod, i, o: batches.append(i[0].shape[0]))
    try:
        for _ in range(3):
            net.predict(torch.randn(2, 3, 256, 256), s)
    finally:
        hook.remove()
    assert batches == [2, 2, 2]


def test_invisible_in_any_shot_is_ignored(net: model.CapeModel) -> None:
    images, kps, vis, skel = _support_inputs(3, 1, 6)
    vis[1, 0, 2] = 0
    s = net.encode_support(images, kps, vis, skel)
    assert s.mask[0].tolist() == [False, False, True, False, False, False]
    assert torch.allclose(s.tokens[0, 2], net.support_proj.bias)


def test_empty_skeleton_works(net: model.CapeModel) -> None:
    images, kps, vis, _ = _support_inputs(1, 1, 4)
    s = net.encode_support(images, kps, vis, [[]])
    assert torch.equal(s.adjacency[0, 1], torch.zeros(4, 4))
    assert torch.isfinite(net.predict(torch.randn(1, 3, 256, 256), s).keypoints).all()


def test_adjacency_is_symmetrised_and_row_normalised() -> None:
    valid = torch.tensor([[True, True, True, False]])
    a = skeleton_adjacency([[[0, 1], [1, 2], [2, 3]]], valid)
    assert torch.equal(a[0, 0], torch.diag(torch.tensor([1.0, 1, 1, 0])))
    expected = torch.tensor([[0, 1, 0, 0], [0.5, 0, 0.5, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    assert torch.equal(a[0, 1], expected)
    with pytest.raises(ValueError, match="outside"):
        skeleton_adjacency([[[0, 4]]], valid)


def test_wrong_shapes_raise_value_error(net: model.CapeModel) -> None:
    images, kps, vis, skel = _support_inputs(1, 1, 4)
    with pytest.raises(ValueError, match="keypoints"):
        net.encode_support(images, kps[0], vis, skel)
    with pytest.raises(ValueError, match="skeletons"):
        net.encode_support(images, kps, vis, [])
    s = net.encode_support(images, kps, vis, skel)
    with pytest.raises(ValueError, match="images"):
        net.predict(torch.randn(3, 256, 256), s)


def test_support_set_is_letterboxed(net: model.CapeModel) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)
    kps = np.array([[10.0, 20.0], [150.0, 100.0], [199.0, 0.0]])
    support = model.SupportSet.from_arrays([image], kps[None], skeleton=[(0, 1)])
    emb = net.encode_support_set(support)
    assert emb.tokens.shape == (1, 3, net.config.d_model) and not emb.mask.any()
