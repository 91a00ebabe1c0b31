"""Self-contained demo inputs rendered from the face model (no photos or videos needed).

The source is a rendered face (one identity, mean albedo tinted to skin, soft key light) over a
smooth backdrop; the driving video is a second identity animated through a short performance
(jaw open / smile / blink / head turn), written as H.264 mp4 with ``jr2net.io.video.VideoWriter``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

SIZE = 512
FPS = 25
N_FRAMES = 75


def _backdrop(
    size: int, top: tuple[float, float, float], bottom: tuple[float, float, float]
) -> torch.Tensor:
    y = torch.linspace(0, 1, size)[:, None, None]
    a, b = torch.tensor(top), torch.tensor(bottom)
    img = (a * (1 - y) + b * y).expand(size, size, 3)
    return img.permute(2, 0, 1)[None].contiguous()


def _light(strength: float = 0.35) -> torch.Tensor:
    from jr2net.face.coeffs import neutral_light

    light = neutral_light(1) * 0.95
    light[0, 3, :] = -strength * 0.6  # from the viewer's left
    light[0, 1, :] = -strength * 0.5  # from above (y down in the camera frame)
    light[0, 2, :] = -strength * 0.4  # from the front
    return light


def render_face(
    model,
    identity: torch.Tensor,
    expression: torch.Tensor,
    angles: torch.Tensor,
    backdrop: torch.Tensor,
    tint: tuple[float, float, float],
) -> np.ndarray:
    """One uint8 ``[SIZE, SIZE, 3]`` frame of the model over ``backdrop``."""
    from jr2net.face.camera import default_intrinsics
    from jr2net.face.coeffs import FaceCoefficients
    from jr2net.face.renderer import FaceRenderer

    coeffs = FaceCoefficients.zeros(model, n_identity=identity.shape[1])
    coeffs.identity = identity
    coeffs.expression = expression
    coeffs.angles = angles
    K = default_intrinsics((SIZE, SIZE))
    f = float(K[0, 0, 0])
    coeffs.translation = torch.tensor([[0.0, 10.0, -f * 150.0 / (0.42 * SIZE)]])
    coeffs.light = _light()
    with torch.inference_mode():
        out = FaceRenderer(model).render(coeffs, K, (SIZE, SIZE))
        tint_t = torch.tensor(tint)[None, :, None, None]
        face = (out.image * tint_t).clamp(0, 1)
        img = backdrop * (1 - out.mask) + face * out.mask
        return (img[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def write_synthetic_inputs(out_dir: Path, face_model: str | None = None) -> tuple[Path, Path]:
    """Write ``source.png`` and ``driving.mp4`` into ``out_dir``; returns their paths."""
    from jr2net.face.model import load_face_model
    from jr2net.io.images import save_image
    from jr2net.io.video import VideoWriter

    model = load_face_model(face_model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(7)
    k = min(20, model.n_identity)
    id_src = torch.randn(1, k, generator=gen) * 0.8
    id_drv = torch.randn(1, k, generator=gen) * 0.8
    names = model.expression_names

    def expr(**weights: float) -> torch.Tensor:
        e = torch.zeros(1, model.n_expression)
        for name, w in weights.items():
            for full in (name, f"{name}_L", f"{name}_R"):
                if full in names:
                    e[0, names.index(full)] = w
        return e

    source = render_face(
        model,
        id_src,
        expr(),
        torch.zeros(1, 3),
        _backdrop(SIZE, (0.55, 0.62, 0.70), (0.25, 0.28, 0.33)),
        (1.0, 0.86, 0.76),
    )
    src_path = out_dir / "source.png"
    save_image(src_path, source)

    drv_path = out_dir / "driving.mp4"
    backdrop = _backdrop(SIZE, (0.30, 0.55, 0.35), (0.18, 0.35, 0.22))
    with VideoWriter(drv_path, fps=FPS, width=SIZE, height=SIZE) as writer:
        for i in range(N_FRAMES):
            s = i / (N_FRAMES - 1)
            jaw = max(0.0, math.sin(2 * math.pi * s * 2)) * 0.6
            smile = max(0.0, math.sin(2 * math.pi * (s * 2 + 0.25))) * 0.7
            blink = 1.0 if i % 37 in (18, 19, 20) else 0.0
            angles = torch.tensor(
                [[0.08 * math.sin(2 * math.pi * s), 0.3 * math.sin(2 * math.pi * s), 0.0]]
            )
            e = expr(jawOpen=jaw, mouthSmile=smile, eyeBlink=blink)
            writer.write(render_face(model, id_drv, e, angles, backdrop, (0.95, 0.80, 0.70)))
    return src_path, drv_path
