"""The support made ready to track with, in one place: each shot zoomed to the scale the network sees the query
crops at (`roi.zoom_support`), encoded once for the graph network and once for the keypoint finder, and the share
of the support image the object spans (the ROI keeps query crops at that scale). `Tracker` takes it as it is."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cape_track.model import CapeModel, SupportEmbedding, SupportSet
from cape_track.model.matching import FinderConfig, MatchSupport
from cape_track.tracker.roi import RoiConfig, support_fraction, zoom_support

FINDERS = ("auto", "match", "network")


@dataclass(frozen=True, eq=False)
class TrackSupport:
    """What the tracker needs of a support. Prepare it with the model on the device it will track on (`prepare`
    puts the model in eval mode, as the tracker does)."""

    names: tuple[str, ...]  # [N]
    skeleton: tuple[tuple[int, int], ...]
    embedding: SupportEmbedding  # the graph network's
    match: MatchSupport | None  # the keypoint finder's; None where it does not run
    object_fraction: float | None  # of the letterboxed support the keypoints span; None: too little to tell

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    @classmethod
    def prepare(
        cls,
        model: CapeModel,
        support: SupportSet,
        roi: RoiConfig | None = None,
        finder: str = "auto",
        finder_config: FinderConfig | None = None,
    ) -> TrackSupport:
        """Zoom small shots (`roi.min_object_fraction`), encode them, and describe them for the finder when
        `finder` is "match", or "auto" on a backbone with a finer level (the embedded model)."""
        if finder not in FINDERS:
            raise ValueError(f"finder {finder!r} not in {FINDERS}")
        roi, finder_config = roi or RoiConfig(), finder_config or FinderConfig()
        model.eval()  # as the tracker runs it (no dropout in the encodings)
        if roi.min_object_fraction:
            support = zoom_support(support, roi.min_object_fraction, model.input_size)
        sizes = [(image.shape[1], image.shape[0]) for image in support.images]
        use_finder = finder == "match" or (finder == "auto" and model.can_match)
        match = (
            model.encode_match_support(support, finder_config.rotations, finder_config.depth) if use_finder else None
        )
        return cls(
            support.names,
            support.skeleton,
            model.encode_support_set(support),
            match,
            support_fraction(support.keypoints, support.visible, sizes),
        )

    @classmethod
    def from_embedding(
        cls,
        embedding: SupportEmbedding,
        names: Sequence[str] | None = None,
        skeleton: Sequence[Sequence[int]] = (),
    ) -> TrackSupport:
        """An embedding computed elsewhere (`model.export.save_embedding`'s file, a test): the network only, names
        `kp0 ..` unless given; the ROI takes its default scale."""
        n = embedding.num_keypoints
        names = tuple(names) if names is not None else tuple(f"kp{i}" for i in range(n))
        if len(names) != n:
            raise ValueError(f"{len(names)} names for an embedding of {n} keypoints")
        return cls(names, tuple((int(a), int(b)) for a, b in skeleton), embedding, None, None)
