"""Configuration of the datasets (``data``), the preprocessing pass (``prepare``) and the synthetic
face set (``data.synthetic``): typed dataclasses whose ``from_dict`` rejects unknown keys by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

SHARED_VIDEOS = ("d0", "d11", "d20", "short_hamilton_clip", "s18", "s20", "s29", "s32")


def _from_dict(cls: type, d: dict[str, Any] | None, path: str) -> Any:
    # The run-config helper (training/config.py imports this module, so import it lazily).
    from ..config import from_dict

    return from_dict(cls, d, path)


@dataclass
class SyntheticConfig:
    """The synthetic face set: random identities, expressions (sparse prior, fitted video tracks,
    large-expression prior), pose, light, photo textures, real backgrounds; exact ground truth."""

    size: int = 1000  # distinct training faces (index -> face is deterministic)
    heldout_size: int = 64  # samples in the held-out split (a disjoint seed stream)
    seed: int = 0
    render_size: int = 256  # the notional full image (camera K) the crop is taken from
    yaw_max_deg: float = 45.0
    p_track: float = 0.3  # expression from a fitted video frame (needs the prepare cache)
    p_large: float = 0.2  # expression from the large-expression prior; the rest: sparse prior
    p_texture: float = 0.5  # albedo from a photo texture unwrapped by the fitter (prepare cache)
    max_textures: int = 32  # photo textures unwrapped from the cache (photos + video source frames)
    background_blur: float = 4.0  # Gaussian blur radius (px at render_size) of the backgrounds

    def __post_init__(self) -> None:
        if self.size < 0 or self.heldout_size < 0:
            raise ValueError("synthetic.size and synthetic.heldout_size must be >= 0")
        for name in ("p_track", "p_large", "p_texture"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"synthetic.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.p_track + self.p_large > 1.0:
            raise ValueError("synthetic.p_track + synthetic.p_large must be <= 1")
        if self.render_size < 32:
            raise ValueError(f"synthetic.render_size must be >= 32, got {self.render_size}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, path: str = "data.synthetic") -> SyntheticConfig:
        """Build from a mapping; an unknown key is a ConfigError naming it."""
        return _from_dict(cls, d, path)


@dataclass
class DataConfig:
    """Where the training data comes from and how it is split.

    ``shared_videos``/``shared_photos`` are fnmatch patterns over the stems of the files in
    ``../shared/data/{videos,images}`` (``["*"]`` = all, ``[]`` = none). ``video_dirs`` hold plain
    mp4 trees or the VoxCeleb2 layout, ``image_dirs`` 300W-LP / CelebA / LS3D-W / plain folders
    (the layout is detected). Split: identities named in ``heldout_identities`` are held out
    whole, and the last ``heldout_tail`` of every other video.
    """

    crop_size: int = 128  # S: training crops are S x S
    shared_videos: list[str] = field(default_factory=lambda: ["*"])
    shared_photos: list[str] = field(default_factory=lambda: ["*"])
    video_dirs: list[str] = field(default_factory=list)
    image_dirs: list[str] = field(default_factory=list)
    heldout_identities: list[str] = field(default_factory=lambda: ["d20"])
    heldout_tail: float = 0.2
    # Share of synthetic samples in a RecNet epoch (the real samples fix the epoch's size; the
    # synthetic faces cycle through synthetic.size distinct ones). 1 = synthetic only.
    synthetic_fraction: float = 0.3
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        if self.crop_size < 32:
            raise ValueError(f"data.crop_size must be >= 32, got {self.crop_size}")
        if not 0.0 <= self.heldout_tail < 1.0:
            raise ValueError(f"data.heldout_tail must be in [0, 1), got {self.heldout_tail}")
        if not 0.0 <= self.synthetic_fraction <= 1.0:
            raise ValueError(
                f"data.synthetic_fraction must be in [0, 1], got {self.synthetic_fraction}"
            )
        if isinstance(self.synthetic, dict):
            self.synthetic = SyntheticConfig.from_dict(self.synthetic)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, path: str = "data") -> DataConfig:
        """Build from a mapping; an unknown key is a ConfigError naming it."""
        return _from_dict(cls, d, path)


@dataclass
class PrepareConfig:
    """The preprocessing pass: per sampled frame / image a face box, dlib's 68 landmarks, a crop,
    a face mask and the fitter's pseudo-labels, cached per source (see training.stages.prepare)."""

    cache_size: int = 256  # crops are cached at this size (train at 128 or 224 from them)
    video_stride: int = 4  # keep every n-th frame
    # Track and fit every frame (the tracker sees consecutive frames), or only the kept ones
    # (warm-started from the previous kept frame; ~stride x less tracking and fitting).
    track_every_frame: bool = False
    max_frames: int = 0  # frames read per video; 0 = all
    max_images: int = 0  # images per image folder; 0 = all
    image_max_side: int = 1024  # photos are downscaled on load to this longest side
    photometric: bool = True  # SourceFitter's photometric refinement for photos / source frames
    mask: Literal["render", "polygon"] = "render"  # fitted face_mask, or the landmark skin polygon
    max_residual_iod: float = 0.12  # fits with a larger landmark residual are counted and dropped
    min_face_px: float = 24.0  # faces whose inter-ocular distance is smaller are dropped
    shard_size: int = 512  # images per shard of an image folder (a video is one shard)

    def __post_init__(self) -> None:
        if self.cache_size < 32:
            raise ValueError(f"prepare.cache_size must be >= 32, got {self.cache_size}")
        if self.video_stride < 1:
            raise ValueError(f"prepare.video_stride must be >= 1, got {self.video_stride}")
        if self.max_frames < 0 or self.max_images < 0:
            raise ValueError("prepare.max_frames and prepare.max_images must be >= 0")
        if self.shard_size < 1:
            raise ValueError(f"prepare.shard_size must be >= 1, got {self.shard_size}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, path: str = "prepare") -> PrepareConfig:
        """Build from a mapping; an unknown key is a ConfigError naming it."""
        return _from_dict(cls, d, path)
