"""The ``synthesize`` stage: expression-specific generation with DCNet (DESIGN §1, §7).

Each pair takes a cached real face of the prepare cache's ``train`` split as the source, keeps its
shape, albedo, pose and light (the coefficients DCNet was trained on: the fitter's labels, or
RecNet's prediction when ``dcnet.conditions`` is ``recnet``) and swaps in a driving expression
from the configured ``synthesize.sources``, taken in turn: ``tracks`` (a row of the fitted video
tracks of the cache), ``prior`` (the large-expression prior, ``jr2net.face.synthetic``), ``csv``
(a row of the Live Link Face takes in ``synthesize.csv_takes``, mapped onto the face model by
``jr2net.io.arkit_csv``). DCNet (RUN/dcnet/best.pt, or ``synthesize.dcnet_checkpoint``) renders
the source under the recombined coefficients in the source's own crop camera; its face (the
recombined face's coverage, feathered) is composited over the source crop, so the background and
hair stay real.

Output in RUN/synthesize/: ``pairs_NNNN.pt`` shards (uint8 images ``[N,3,S,S]``, crop ``K``,
the target landmarks and face mask DCNet's conditions give, the coefficients in the ``sample``
format: ``etnet.SynthesizedPairs`` reads them), ``contact_sheet.png`` (source | generated, the
first ``sheet_tiles`` pairs, expression source named) and ``summary.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from jr2net.face.coeffs import FaceCoefficients

from .base import Stage, register_stage


def expression_drivers(stage: Stage, prepare_dir: Path) -> dict[str, np.ndarray | None]:
    """The expression banks ``[N,E]`` of the configured sources (``prior`` draws: None)."""
    from jr2net.io.arkit_csv import read_live_link_csv

    from ..data.prepared import expression_bank

    sec = stage.cfg.synthesize
    names = stage.ctx.face_model.expression_names
    out: dict[str, np.ndarray | None] = {}
    for src in sec.sources:
        if src == "tracks":
            bank = expression_bank(prepare_dir)
            if len(bank) == 0:
                raise ValueError(f"synthesize.sources has 'tracks' but {prepare_dir} has no videos")
            out[src] = bank
        elif src == "csv":
            takes = [read_live_link_csv(p, sec.csv_fps).expressions(names) for p in sec.csv_takes]
            out[src] = np.concatenate(takes)
        else:
            out[src] = None
    return out


def _contact_sheet(path: Path, tiles: list[tuple[np.ndarray, np.ndarray, str]]) -> None:
    from PIL import Image, ImageDraw

    S = tiles[0][0].shape[0]
    cols = 4
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * 2 * S, rows * (S + 14)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (src, gen, label) in enumerate(tiles):
        x, y = (k % cols) * 2 * S, (k // cols) * (S + 14)
        sheet.paste(Image.fromarray(src), (x, y + 14))
        sheet.paste(Image.fromarray(gen), (x + S, y + 14))
        draw.text((x + 2, y + 1), label, fill=(0, 0, 0))
    sheet.save(path)


@register_stage
class SynthesizeStage(Stage):
    """Expression-specific generation (see the module docstring)."""

    name = "synthesize"
    requires = ("prepare", "dcnet")
    non_training = True

    def run(self) -> None:
        from jr2net.face.synthetic import large_expression
        from jr2net.pipeline.learned import load_dcnet

        from ..data.prepared import PreparedFaces
        from ..data.sample import collate
        from .dcnet import DCNetStage, crop_size

        if not self.ctx.is_main:
            return
        sec, ctx = self.cfg.synthesize, self.ctx
        prepare_dir = self.require_output("prepare")
        if sec.dcnet_checkpoint:
            ckpt = Path(sec.dcnet_checkpoint)
        else:
            ckpt = self.require_output("dcnet") / "best.pt"
        model = ctx.face_model
        G, spec = load_dcnet(ckpt, model, device=ctx.device)
        S = int(spec["config"]["crop_size"])
        if S != crop_size(self.cfg):
            raise ValueError(f"{ckpt} generates {S}px crops; this run's DCNet crop is {crop_size(self.cfg)}")
        helper = DCNetStage(self.cfg, self.run_dir, ctx)  # its conditions / coefficients code
        sources = PreparedFaces(prepare_dir, "train", S)
        if len(sources) == 0:
            raise ValueError(f"no training faces in {prepare_dir} to synthesize from")
        drivers = expression_drivers(self, prepare_dir)
        names = model.expression_names
        rng = np.random.default_rng(sec.seed)
        out = self.out_dir
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("pairs_*.pt"):
            old.unlink()
        shard: dict[str, list] = {}
        tiles: list[tuple[np.ndarray, np.ndarray, str]] = []
        n_shards, done, t0 = 0, 0, time.perf_counter()
        counts = {s: 0 for s in sec.sources}
        while done < sec.n_pairs:
            B = min(sec.batch_size, sec.n_pairs - done)
            idx = rng.integers(len(sources), size=B)
            kinds = [sec.sources[(done + i) % len(sec.sources)] for i in range(B)]
            betas = []
            for kind in kinds:
                bank = drivers[kind]
                if bank is None:
                    betas.append(large_expression(names, rng))
                else:
                    betas.append(np.clip(bank[int(rng.integers(len(bank)))], 0, 1))
                counts[kind] += 1
            batch = collate([sources[int(i)] for i in idx])
            batch = {k: _to(v, ctx.device) for k, v in batch.items()}
            with torch.no_grad():
                src_c = helper.coefficients(batch)
                beta = torch.as_tensor(np.stack(betas), dtype=src_c.expression.dtype,
                                       device=ctx.device)  # fmt: skip
                drv_c = src_c.replace(expression=beta)
                cond = _conditions(helper, batch, src_c, drv_c, S)
                face = G(cond.dcnet_inputs()).clamp(0, 1)
                m = _feather(cond.mask)
                image = face * m + batch["image"] * (1 - m)
            self._append(shard, batch, image, cond, drv_c, kinds)
            if len(tiles) < sec.sheet_tiles:
                for i in range(min(B, sec.sheet_tiles - len(tiles))):
                    tiles.append((_u8(batch["image"][i]), _u8(image[i]), kinds[i]))
            done += B
            if sum(len(x) for x in shard["image"]) >= sec.shard_size or done >= sec.n_pairs:
                self._write(out / f"pairs_{n_shards:04d}.pt", shard)
                n_shards, shard = n_shards + 1, {}
        _contact_sheet(out / "contact_sheet.png", tiles)
        summary = {"pairs": done, "shards": n_shards, "crop_size": S, "dcnet": str(ckpt),
                   "sources": counts, "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    @staticmethod
    def _append(shard: dict[str, list], batch: dict[str, Any], image, cond, coeffs, kinds) -> None:
        d = coeffs.tensors() if hasattr(coeffs, "tensors") else vars(coeffs)
        ref = batch["coeffs"]
        item = {
            "image": (image * 255 + 0.5).floor().clamp(0, 255).to(torch.uint8).cpu(),
            "K": batch["K"].float().cpu(),
            "landmarks": cond.landmarks.float().cpu(),
            "mask": (cond.mask > 0.5).cpu(),
        }
        for k, v in item.items():
            shard.setdefault(k, []).append(v)
        cd = shard.setdefault("coeffs", [])
        row = {}
        for k in ref:
            v = d[k].float().cpu()
            n = ref[k].shape[1] if ref[k].dim() == 2 and k in ("identity", "albedo") else None
            if n is not None:  # the sample format's full-length identity / albedo
                v = F.pad(v[:, :n], (0, max(0, n - v.shape[1])))
            row[k] = v
        cd.append(row)
        shard.setdefault("identity", []).extend(
            f"{who}:{kind}" for who, kind in zip(batch["identity"], kinds, strict=True)
        )

    @staticmethod
    def _write(path: Path, shard: dict[str, list]) -> None:
        data = {k: torch.cat(v) for k, v in shard.items() if k not in ("coeffs", "identity")}
        data["coeffs"] = {k: torch.cat([r[k] for r in shard["coeffs"]]) for k in shard["coeffs"][0]}
        data["identity"] = list(shard["identity"])
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(data, tmp)
        tmp.replace(path)


def _conditions(helper: Any, batch: dict[str, Any], src: FaceCoefficients,
                drv: FaceCoefficients, S: int):  # noqa: ANN202
    from jr2net.pipeline.conditions import conditions_from_coefficients

    return conditions_from_coefficients(
        helper.mesh, batch["image"], batch["K"], src, drv, batch["K"], S, light="source"
    )


def _feather(mask: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """The face mask eroded and blurred by ``radius`` px (a soft seam)."""
    k = 2 * radius + 1
    eroded = -F.max_pool2d(-mask, k, 1, radius)
    return F.avg_pool2d(eroded, k, 1, radius, count_include_pad=False)


def _u8(img: torch.Tensor) -> np.ndarray:
    return (img.clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).cpu().numpy()


def _to(v: Any, device: torch.device) -> Any:
    if isinstance(v, torch.Tensor):
        return v.to(device)
    if isinstance(v, dict):
        return {k: _to(x, device) for k, x in v.items()}
    return v
