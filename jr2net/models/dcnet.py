"""DCNet (DESIGN §1): 3D-aware reenactment from dense pixel-level conditions.

* TextureEncoder: source image + source light map + source normal map -> features at
  ``n_scales`` resolutions (S, S/2, …).
* View synthesis: each feature scale is warped into the driving view with
  ``jr2net.ops.correspondence_warp`` (gradients reach the features), given the source-camera 3D
  point of every driving pixel; the result is zero off the face and where the source does not see
  the point (co-visible mask C, from the full-resolution warp of the source image with the
  source depth).
* ContextEncoder over the condition stack: strided convs down to the deepest texture scale and
  ``context_extra_downs`` further, then dilated convs; upsampled and concatenated with the
  deepest warped texture features.
* Generator: per scale, a 1×1 fuse of the upsampled features with that scale's warped texture
  features, then a SPADE residual block modulated by the condition stack at that scale.
* Output (``output``): ``direct``, the generated image; or ``blend`` (the presets' choice), a skip
  path from the warped source image: ``a·warped + (1 − a)·generated`` with ``a = C·σ(logit)``,
  the logit a fourth output channel whose bias starts at ``BLEND_BIAS`` (a ≈ 0.88 where the
  source sees the pixel), so the network starts from its own input and learns where to repaint
  (the pixels the source does not see get the generated image). Only for the ablations whose
  conditions hold the warped image (``ours``, ``ours_l``); ``ours_p`` / ``ours_r`` stay direct.
  Where ``a`` is near 1 the output barely depends on the generated image, so training must
  supervise that image on its own (``dcnet.w_l1_generated``): trained through the blend alone it
  becomes a residual (×1/(1 − a) ≈ 20), not a face, and shows raw wherever C is 0 (an opened
  mouth, an isolated occluded pixel: a purple mouth, magenta specks).

Ablations (seed Table 5) choose the condition stack: ``ours`` = warped source image, C, driving
light map, driving normal map; ``ours_p`` drops the warped image; ``ours_l`` drops the light map;
``ours_r`` conditions on the rendered image of the recombined face instead.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jr2net.face.camera import crop_intrinsics
from jr2net.models.spade import NORMS, SPADEResBlock, maybe_sn, param_free_norm
from jr2net.ops import correspondence_warp

ABLATIONS = ("ours", "ours_r", "ours_p", "ours_l")
_COND_CHANNELS = {"ours": 10, "ours_r": 3, "ours_p": 7, "ours_l": 7}
OUTPUTS = ("direct", "blend")
BLEND_BIAS = 2.0  # initial logit of the blend weight: sigmoid(2) ≈ 0.88
_MAP_FIELDS = ("source_image", "source_light", "source_normal", "driving_light", "driving_normal")


@dataclass
class DCNetConfig:
    """DCNet sizes; ``channels[k]`` is the width at scale k (resolution crop_size / 2^k)."""

    crop_size: int = 128
    channels: tuple[int, ...] = (16, 32, 48, 64)
    context_channels: int = 64
    context_extra_downs: int = 1
    context_dilations: tuple[int, ...] = (2,)
    spade_hidden: int = 32
    full_res_layers: int = 1  # SPADE layers of the full-resolution block (2 at other scales)
    encoder_convs: int = 1  # convs per texture-encoder scale (the first one strides)
    ablation: str = "ours"
    norm: str = "instance"
    spectral_norm: bool = False
    rel_eps: float = 0.01  # occlusion-test tolerance of C, as jr2net.pipeline.conditions
    output: str = "direct"  # "blend": skip path from the warped image (the presets' choice)
    # The warped image of the condition stack with its not-co-visible face pixels filled from
    # the co-visible ones around them (push-pull), so the generator sees the nearby colour
    # there, not black (the presets' choice; checkpoints without the key load as they were)
    fill_hidden: bool = False

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.context_dilations = tuple(int(d) for d in self.context_dilations)
        if self.ablation not in ABLATIONS:
            raise ValueError(f"unknown ablation {self.ablation!r}; choose one of {ABLATIONS}")
        if self.output not in OUTPUTS:
            raise ValueError(f"unknown output {self.output!r}; choose one of {OUTPUTS}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {NORMS}")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be positive ints, got {self.channels}")
        if self.crop_size % (2 ** (self.n_scales - 1 + self.context_extra_downs)) != 0:
            raise ValueError(
                f"crop_size {self.crop_size} must be divisible by 2^(n_scales - 1 + "
                f"context_extra_downs) = {2 ** (self.n_scales - 1 + self.context_extra_downs)}"
            )
        if self.context_extra_downs < 0 or self.context_channels < 1 or self.spade_hidden < 1:
            raise ValueError("context_extra_downs >= 0, context_channels and spade_hidden >= 1")
        if self.full_res_layers not in (1, 2) or self.encoder_convs < 1:
            raise ValueError("full_res_layers must be 1 or 2 and encoder_convs >= 1")

    @property
    def n_scales(self) -> int:
        return len(self.channels)

    @property
    def cond_channels(self) -> int:
        return _COND_CHANNELS[self.ablation]

    @property
    def blends(self) -> bool:
        """Whether the output blends the warped image in (``blend`` and it is a condition)."""
        return self.output == "blend" and self.ablation in ("ours", "ours_l")

    @classmethod
    def tiny(cls, **overrides) -> DCNetConfig:
        """CPU preset: 128², small channels, blend output, hidden pixels filled."""
        return cls(**{"output": "blend", "fill_hidden": True, **overrides})

    @classmethod
    def full(cls, **overrides) -> DCNetConfig:
        """GPU preset: 256², SPADE-sized channels, spectral norm."""
        base = dict(
            crop_size=256,
            channels=(64, 128, 256, 512, 512),
            context_channels=512,
            context_extra_downs=1,
            context_dilations=(2, 4),
            spade_hidden=128,
            full_res_layers=2,
            encoder_convs=2,
            spectral_norm=True,
            output="blend",
            fill_hidden=True,
        )
        return cls(**{**base, **overrides})


@dataclass
class DCNetInputs:
    """Per-pixel inputs ``[B,*,S,S]``; the ``source_*`` maps are in the source view, the rest in
    the driving view.

    ``source_image``: the source crop in [0,1]; ``source_light`` / ``source_normal``: irradiance
    and camera-frame normals (``RenderOutput.irradiance`` / ``.normals``) of the source fit.
    ``driving_light`` / ``driving_normal``: the same for the recombined face (source identity,
    driving expression, pose and light) rendered in the driving view. ``points_src [B,S,S,3]``:
    source-camera 3D point of each driving pixel (the source-posed recombined mesh interpolated
    with the driving rasterisation), ``valid [B,1,S,S]`` where there is one (the driving mask);
    ``K_src [B,3,3]`` the source crop camera; ``source_depth [B,1,S,S]`` (optional) enables the
    occlusion test of C; ``rendered`` (the shaded recombined face) is needed by ours_r only.
    ``jr2net.pipeline.conditions.Conditions.dcnet_inputs`` builds them from coefficients.
    """

    source_image: Tensor
    source_light: Tensor
    source_normal: Tensor
    points_src: Tensor
    valid: Tensor
    K_src: Tensor
    driving_light: Tensor
    driving_normal: Tensor
    source_depth: Tensor | None = None
    rendered: Tensor | None = None

    def check(self, size: int, ablation: str) -> None:
        """ValueError naming the first input of the wrong type or shape."""
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None and f.name in ("source_depth", "rendered"):
                continue
            if not isinstance(v, Tensor):
                raise TypeError(
                    f"DCNetInputs.{f.name} must be a torch.Tensor, got {type(v).__name__}"
                )
        B = self.source_image.shape[0] if self.source_image.dim() == 4 else -1
        want = {n: (B, 3, size, size) for n in _MAP_FIELDS}
        want.update(points_src=(B, size, size, 3), valid=(B, 1, size, size))
        if self.source_depth is not None:
            want["source_depth"] = (B, 1, size, size)
        if ablation == "ours_r":
            if self.rendered is None:
                raise ValueError("ablation ours_r needs DCNetInputs.rendered")
            want["rendered"] = (B, 3, size, size)
        for name, shape in want.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"DCNetInputs.{name} must be {list(shape)}, got {list(got)}")
        K = self.K_src
        if K.shape not in ((B, 3, 3), (1, 3, 3), (3, 3)):
            raise ValueError(f"DCNetInputs.K_src must be [B,3,3], got {list(K.shape)}")


def _conv_block(cin: int, cout: int, stride: int, norm: str, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation),
        param_free_norm(norm, cout),
        nn.LeakyReLU(0.2),
    )


class TextureEncoder(nn.Module):
    """(source image, light map, normal map) -> features ``[B, channels[k], S/2^k, S/2^k]``."""

    def __init__(self, cfg: DCNetConfig) -> None:
        super().__init__()
        ch = cfg.channels
        self.stem = nn.Sequential(nn.Conv2d(9, ch[0], 3, padding=1), nn.LeakyReLU(0.2))
        self.downs = nn.ModuleList(
            nn.Sequential(
                _conv_block(ch[k - 1], ch[k], 2, cfg.norm),
                *(_conv_block(ch[k], ch[k], 1, cfg.norm) for _ in range(cfg.encoder_convs - 1)),
            )
            for k in range(1, cfg.n_scales)
        )

    def forward(self, image: Tensor, light: Tensor, normal: Tensor) -> list[Tensor]:
        x = self.stem(torch.cat([image, light, normal], dim=1))
        feats = [x]
        for down in self.downs:
            x = down(x)
            feats.append(x)
        return feats


class ContextEncoder(nn.Module):
    """Condition stack -> context features at S / 2^(n_scales - 1 + context_extra_downs)."""

    def __init__(self, cfg: DCNetConfig) -> None:
        super().__init__()
        n_down = cfg.n_scales - 1 + cfg.context_extra_downs
        widths = [min(cfg.channels[min(k, cfg.n_scales - 1)], cfg.context_channels)
                  for k in range(1, n_down)] + [cfg.context_channels]  # fmt: skip
        layers: list[nn.Module] = []
        cin = cfg.cond_channels
        for w in widths:
            layers.append(_conv_block(cin, w, 2, cfg.norm))
            cin = w
        layers += [_conv_block(cin, cin, 1, cfg.norm, d) for d in cfg.context_dilations]
        self.net = nn.Sequential(*layers)
        self.out_channels = cin

    def forward(self, cond: Tensor) -> Tensor:
        return self.net(cond)


def _pyramid(x: Tensor, n: int) -> list[Tensor]:
    """``x`` at full, ½, ¼ … resolution (``n`` levels, each the 2×2 mean of the one above)."""
    out = [x]
    for _ in range(1, n):
        out.append(F.avg_pool2d(out[-1], 2))
    return out


def _point_levels(
    points: Tensor, valid: Tensor, covisible: Tensor, n: int
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per scale: valid-weighted mean 3D points ``[B,s,s,3]`` (valid where most pixels are), that
    validity, and the area-mean of C."""
    stacked = torch.cat([points.permute(0, 3, 1, 2) * valid, valid, covisible], dim=1)
    out = [(points, valid, covisible)]
    for level in _pyramid(stacked, n)[1:]:
        w = level[:, 3:4]
        v = (w > 0.5).to(w.dtype)
        p = level[:, :3] * (v / w.clamp(min=1e-6))
        out.append((p.permute(0, 2, 3, 1).contiguous(), v, level[:, 4:5]))
    return out


def fill_hidden(image: Tensor, covisible: Tensor, valid: Tensor, levels: int = 5) -> Tensor:
    """``image`` where ``covisible``; elsewhere on ``valid`` (the face) the covisible-weighted
    mean colour around the pixel (push-pull over ``levels`` 2× pyramid levels, coarser where
    the hole is larger); 0 off ``valid``."""
    c = covisible.to(image.dtype)
    pyr = [(image * c, c)]
    for _ in range(levels):
        if min(pyr[-1][0].shape[-2:]) < 2:
            break
        x, m = pyr[-1]
        pyr.append((F.avg_pool2d(x, 2), F.avg_pool2d(m, 2)))
    x, m = pyr[-1]
    filled = x / m.clamp(min=1e-6)
    for x, m in reversed(pyr[:-1]):
        up = F.interpolate(filled, size=x.shape[-2:], mode="bilinear", align_corners=False)
        filled = x + (1 - m) * up  # x is premultiplied by m
    return image * c + filled * (1 - c) * valid.to(image.dtype)


def _warp(
    src: Tensor, points: Tensor, valid: Tensor, K: Tensor, depth: Tensor | None, rel_eps: float
) -> tuple[Tensor, Tensor]:
    """``correspondence_warp`` in float32 (float64 kept): the kernels take no half types (AMP)."""
    dt = torch.float64 if src.dtype == torch.float64 else torch.float32
    depth = None if depth is None else depth.to(dt)
    return correspondence_warp(src.to(dt), points.to(dt), valid.to(dt), K.to(dt), depth, rel_eps)


class DCNet(nn.Module):
    """The reenactment generator; ``forward(DCNetInputs) -> image [B,3,S,S]`` in [0,1]."""

    def __init__(self, config: DCNetConfig | None = None) -> None:
        super().__init__()
        cfg = DCNetConfig() if config is None else config
        if not isinstance(cfg, DCNetConfig):
            raise TypeError(f"config must be a DCNetConfig, got {type(cfg).__name__}")
        self.config = cfg
        ch = cfg.channels
        self.texture_encoder = TextureEncoder(cfg)
        self.context_encoder = ContextEncoder(cfg)
        deepest = cfg.n_scales - 1
        self.fuse = nn.ModuleList(
            nn.Conv2d(
                (self.context_encoder.out_channels if k == deepest else ch[k + 1]) + ch[k], ch[k], 1
            )
            for k in range(cfg.n_scales)
        )
        self.blocks = nn.ModuleList(
            SPADEResBlock(
                ch[k],
                cfg.cond_channels,
                min(cfg.spade_hidden, max(16, ch[k])),
                cfg.norm,
                cfg.spectral_norm,
                layers=cfg.full_res_layers if k == 0 else 2,
            )
            for k in range(cfg.n_scales)
        )
        head = nn.Conv2d(ch[0], 4 if cfg.blends else 3, 3, padding=1)
        if cfg.blends:
            with torch.no_grad():
                head.bias[3] = BLEND_BIAS
        self.to_rgb = nn.Sequential(nn.LeakyReLU(0.2), maybe_sn(head, cfg.spectral_norm))

    def view_synthesis(self, inputs: DCNetInputs) -> tuple[Tensor, Tensor]:
        """Warped source image ``[B,3,S,S]`` and co-visible mask C ``[B,1,S,S]``."""
        return _warp(
            inputs.source_image, inputs.points_src, inputs.valid, inputs.K_src,
            inputs.source_depth, self.config.rel_eps,
        )  # fmt: skip

    def conditions(self, inputs: DCNetInputs, warped: Tensor, covisible: Tensor) -> Tensor:
        """The condition stack of the configured ablation ``[B, cond_channels, S, S]``."""
        ab = self.config.ablation
        if ab == "ours_r":
            parts = [inputs.rendered]
        else:
            if self.config.fill_hidden:
                warped = fill_hidden(warped, covisible, inputs.valid)
            parts = [warped, covisible, inputs.driving_light, inputs.driving_normal]
            if ab == "ours_p":
                parts = parts[1:]
            elif ab == "ours_l":
                parts = [warped, covisible, inputs.driving_normal]
        return torch.cat(parts, dim=1)

    def warp_features(
        self, feats: list[Tensor], inputs: DCNetInputs, covisible: Tensor
    ) -> list[Tensor]:
        """Each texture scale warped into the driving view, zero where C (area-pooled) is 0."""
        S = self.config.crop_size
        dt = inputs.points_src.dtype
        valid = inputs.valid.to(dt)
        K = inputs.K_src if inputs.K_src.dim() == 3 else inputs.K_src.unsqueeze(0)
        K = K.expand(feats[0].shape[0], 3, 3).to(dt)
        levels = _point_levels(inputs.points_src, valid, covisible.to(dt), len(feats))
        out = []
        for k, (f, (pts, v, c_k)) in enumerate(zip(feats, levels, strict=True)):
            K_k = K if k == 0 else crop_intrinsics(K, (0.0, 0.0, float(S), float(S)), S >> k)
            warped, _ = _warp(f, pts, v, K_k, None, self.config.rel_eps)
            out.append(warped * c_k.to(warped.dtype))
        return out

    def decode(
        self,
        cond: Tensor,
        warped: list[Tensor],
        warped_image: Tensor,
        covisible: Tensor,
        with_generated: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Context encoder + generator (+ the blend) over the condition stack and the warped
        texture features: DCNet after its view synthesis (``dcnet_runtime`` exports this).
        ``with_generated``: also the generated image before the blend (the output itself
        when the output does not blend), which training supervises on its own."""
        cfg = self.config
        x = self.context_encoder(cond)
        for k in reversed(range(cfg.n_scales)):
            x = F.interpolate(x, size=warped[k].shape[-2:], mode="bilinear", align_corners=False)
            x = self.fuse[k](torch.cat([x, warped[k]], dim=1))
            x = self.blocks[k](x, cond if k == 0 else F.avg_pool2d(cond, 1 << k))
        out = self.to_rgb(x)
        if not cfg.blends:
            image = torch.sigmoid(out)
            return (image, image) if with_generated else image
        a = torch.sigmoid(out[:, 3:4]) * covisible.to(out.dtype)
        gen = torch.sigmoid(out[:, :3])
        image = gen + a * (warped_image.to(out.dtype) - gen)
        return (image, gen) if with_generated else image

    def forward(
        self, inputs: DCNetInputs, with_generated: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The output image; with ``with_generated``, (output, generated image before the
        blend)."""
        if not isinstance(inputs, DCNetInputs):
            raise TypeError(f"inputs must be DCNetInputs, got {type(inputs).__name__}")
        cfg = self.config
        inputs.check(cfg.crop_size, cfg.ablation)
        warped_image, covisible = self.view_synthesis(inputs)
        cond = self.conditions(inputs, warped_image, covisible)
        feats = self.texture_encoder(inputs.source_image, inputs.source_light, inputs.source_normal)
        warped = self.warp_features(feats, inputs, covisible)
        return self.decode(cond, warped, warped_image, covisible, with_generated)
