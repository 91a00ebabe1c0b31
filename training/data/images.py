"""Image-folder sources: 300W-LP, CelebA, LS3D-W and plain folders, with a layout detector.

Layouts (``detect_image_layout``):

* ``300w_lp``: ``<root>/<subset>/<name>.jpg`` with ``<name>.mat`` holding ``pt2d`` (2 x 68 image
  landmarks); the identity is the name without its trailing pose index (``AFW_134212_1_3`` ->
  ``AFW_134212_1``).
* ``celeba``: ``<root>/img_align_celeba/*.jpg`` and ``list_landmarks_align_celeba.txt`` (in
  ``<root>`` or ``<root>/Anno``: 5 points per image: both eye centres, nose tip, mouth corners).
  The nose and mouth corners fill iBUG points 30, 48 and 54 (weight 1); the eye centres have no
  iBUG point, so the other 65 points have weight 0 (dlib's detection supplies them in prepare).
  The identity comes from ``identity_CelebA.txt`` when present, else the file name.
* ``ls3d``: ``*.jpg`` with a ``.t7`` (Torch7 tensor, 68 x 2) or ``.mat`` (``pt3d_68``/``pt3d``/
  ``pts``, 68 x 2 or 2 x 68) label beside each image. ``.t7`` labels need the optional
  ``torchfile`` package; without it those images are kept with unknown landmarks (weight 0) and
  prepare uses dlib's detections, as for a plain folder.
* ``plain``: every image below the root; identity = the path without its suffix.

Missing or empty folders raise FileNotFoundError / ValueError naming the path. Images that do
not decode are skipped and counted (``ImageFolder.n_corrupt``), never an exception.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jr2net.errors import InvalidImageError

log = logging.getLogger("jr2net.training")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
LAYOUTS = ("300w_lp", "celeba", "ls3d", "plain")
CELEBA_LANDMARKS = "list_landmarks_align_celeba.txt"
# CelebA's 5 points -> iBUG 68 indices (None: no iBUG equivalent).
_CELEBA_TO_IBUG = (None, None, 30, 48, 54)


@dataclass
class ImageItem:
    """One image and its annotation: ``landmarks [68,2]`` pixels with ``weight [68]`` (0 =
    unknown), or None when the layout has none."""

    path: Path
    name: str
    identity: str
    landmarks: np.ndarray | None = None
    weight: np.ndarray | None = None


def _check_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    return root


def _images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _celeba_labels(root: Path) -> Path | None:
    for p in (root / CELEBA_LANDMARKS, root / "Anno" / CELEBA_LANDMARKS):
        if p.is_file():
            return p
    return None


def _load_mat(path: Path) -> dict:
    from scipy.io import loadmat

    return loadmat(str(path))


def _mat_landmarks(mat: dict) -> np.ndarray | None:
    for key in ("pt2d", "pt3d_68", "pt3d", "pts"):
        if key in mat:
            a = np.asarray(mat[key], dtype=np.float64)
            if a.shape == (2, 68) or (a.ndim == 2 and a.shape[0] in (2, 3) and a.shape[1] == 68):
                return a[:2].T.astype(np.float32)
            if a.shape[0] == 68 and a.ndim == 2 and a.shape[1] >= 2:
                return a[:, :2].astype(np.float32)
    return None


def detect_image_layout(root: str | Path) -> str:
    """One of ``LAYOUTS`` for an image folder (see the module docstring)."""
    root = _check_root(root)
    if (root / "img_align_celeba").is_dir() or _celeba_labels(root) is not None:
        return "celeba"
    if next(root.rglob("*.t7"), None) is not None:
        return "ls3d"
    mat = next(root.rglob("*.mat"), None)
    if mat is not None:
        try:
            keys = set(_load_mat(mat))
        except (OSError, ValueError, NotImplementedError):
            keys = set()
        if "pt2d" in keys:
            return "300w_lp"
        if keys & {"pt3d_68", "pt3d", "pts"}:
            return "ls3d"
    return "plain"


def _label_beside(img: Path, bad: list[str]) -> np.ndarray | None:
    for suffix in (".mat", ".t7"):
        lab = img.with_suffix(suffix)
        if not lab.is_file():
            continue
        try:
            if suffix == ".mat":
                lm = _mat_landmarks(_load_mat(lab))
            else:
                try:
                    import torchfile  # optional: LS3D-W's Torch7 labels
                except ImportError:
                    return None
                lm = np.asarray(torchfile.load(str(lab)), dtype=np.float32).reshape(68, 2)
        except (OSError, ValueError, NotImplementedError, TypeError) as exc:
            bad.append(f"{lab}: {exc}")
            return None
        if lm is None:
            bad.append(f"{lab}: no 68-point landmarks")
        return lm
    return None


def _celeba_items(root: Path, files: list[Path]) -> list[ImageItem]:
    labels: dict[str, np.ndarray] = {}
    lab = _celeba_labels(root)
    if lab is not None:
        lines = lab.read_text().splitlines()
        for line in lines[2:]:
            parts = line.split()
            if len(parts) == 11:
                try:
                    labels[parts[0]] = np.array(parts[1:], dtype=np.float32).reshape(5, 2)
                except ValueError:
                    continue
    ident: dict[str, str] = {}
    for p in (root / "identity_CelebA.txt", root / "Anno" / "identity_CelebA.txt"):
        if p.is_file():
            for line in p.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2:
                    ident[parts[0]] = f"celeba:{parts[1]}"
    items = []
    for f in files:
        lm = w = None
        if f.name in labels:
            lm, w = np.zeros((68, 2), np.float32), np.zeros(68, np.float32)
            for k, j in enumerate(_CELEBA_TO_IBUG):
                if j is not None:
                    lm[j], w[j] = labels[f.name][k], 1.0
        items.append(ImageItem(f, f.stem, ident.get(f.name, f.stem), lm, w))
    return items


def list_images(root: str | Path, layout: str | None = None) -> tuple[list[ImageItem], list[str]]:
    """The images under ``root`` with their annotations, and the label files that could not be
    read (those images are kept without landmarks)."""
    root = _check_root(root)
    layout = detect_image_layout(root) if layout is None else layout
    if layout not in LAYOUTS:
        raise ValueError(f"unknown image layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    base = root
    if layout == "celeba" and (root / "img_align_celeba").is_dir():
        base = root / "img_align_celeba"
    files = _images(base)
    if not files:
        raise ValueError(f"no images in {base} (looked for {', '.join(IMAGE_SUFFIXES)})")
    if layout == "celeba":
        return _celeba_items(root, files), []
    bad: list[str] = []
    items = []
    for f in files:
        name = f.relative_to(root).with_suffix("").as_posix()
        lm = _label_beside(f, bad) if layout in ("300w_lp", "ls3d") else None
        w = None if lm is None else np.ones(68, np.float32)
        identity = re.sub(r"_\d+$", "", f.stem) if layout == "300w_lp" else name
        items.append(ImageItem(f, name, identity, lm, w))
    for b in bad:
        log.warning("unreadable landmark label %s", b)
    return items, bad


class ImageFolder:
    """An image folder in any of ``LAYOUTS``; iterating yields ``(ImageItem, uint8 HWC image)``
    and skips (and counts in ``n_corrupt`` / ``corrupt``) files that do not decode."""

    def __init__(
        self,
        root: str | Path,
        layout: str | None = None,
        max_images: int = 0,
        max_side: int | None = None,
    ) -> None:
        self.root = _check_root(root)
        self.layout = detect_image_layout(self.root) if layout is None else layout
        items, self.bad_labels = list_images(self.root, self.layout)
        self.items = items[:max_images] if max_images else items
        self.max_side = max_side
        self.corrupt: list[str] = []

    @property
    def n_corrupt(self) -> int:
        return len(self.corrupt)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> np.ndarray | None:
        """The decoded image, or None (counted) when the file is corrupt."""
        from jr2net.io.images import load_image

        item = self.items[index]
        try:
            return load_image(item.path, max_side=self.max_side)
        except InvalidImageError as exc:
            log.warning("skipping corrupt image %s", exc)
            self.corrupt.append(str(item.path))
            return None

    def __iter__(self) -> Iterator[tuple[ImageItem, np.ndarray]]:
        for i, item in enumerate(self.items):
            image = self.load(i)
            if image is not None:
                yield rescaled(item, image), image


def rescaled(item: ImageItem, image: np.ndarray) -> ImageItem:
    """The item with its landmarks scaled to the loaded size (``max_side`` may downscale)."""
    if item.landmarks is None:
        return item
    from PIL import Image

    with Image.open(item.path) as im:
        w0, h0 = im.size
    h, w = image.shape[:2]
    s = max(h, w) / max(h0, w0)
    if abs(s - 1.0) < 1e-9:
        return item
    # Pixel centres: x_new = (x + 0.5) * s - 0.5.
    lm = ((item.landmarks + 0.5) * s - 0.5).astype(np.float32)
    return ImageItem(item.path, item.name, item.identity, lm, item.weight)
