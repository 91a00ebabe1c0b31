"""Running a trained DCNet for serving: PyTorch eager or ONNX Runtime, source features cached.

DCNet's forward pass is split in three parts: the texture encoder (the source image and its
light and normal maps -> features; fixed per session, so it runs once, at session start), the
view synthesis (our ``correspondence_warp`` kernel: the source image and every feature scale
warped into the driving view; always PyTorch), and the decoder (context encoder + SPADE
generator over the condition stack and the warped features). The encoder and the decoder run in
PyTorch eager or in ONNX Runtime (``onnxruntime`` on PyPI), exported once per reenactor.

``runtime="auto"`` takes ONNX Runtime when it is installed, exports, and gives the eager outputs
on a probe input (max abs difference <= ``MATCH_ATOL``), else eager. The split is checked
against ``DCNet.forward`` by the tests (same output, eager).
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from typing import Any

import torch
from torch import Tensor, nn

RUNTIMES = ("auto", "eager", "onnxruntime")
MATCH_ATOL = 1e-4
log = logging.getLogger(__name__)


class _Encoder(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: Tensor, light: Tensor, normal: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.net.texture_encoder(image, light, normal))


class _Decoder(nn.Module):
    """``DCNet.decode``: DCNet.forward after the view synthesis (the tests keep them equal)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, cond: Tensor, image: Tensor, covisible: Tensor, *warped: Tensor) -> Tensor:
        return self.net.decode(cond, list(warped), image, covisible)


class _OrtModule:
    """One ONNX Runtime session and the export positions of the inputs it kept (the exporter
    may drop unused ones), looked up once rather than per call."""

    def __init__(self, sess: Any) -> None:
        self.sess = sess
        self.inputs = [(i.name, int(i.name[2:])) for i in sess.get_inputs()]  # "in{j}"

    def __call__(self, arrays: list[Tensor]) -> list[Tensor]:
        feed = {name: arrays[j].contiguous().numpy() for name, j in self.inputs}
        return [torch.from_numpy(a) for a in self.sess.run(None, feed)]


def _probe_inputs(net: nn.Module):  # -> DCNetInputs
    from jr2net.models.dcnet import DCNetInputs

    S = net.config.crop_size
    g = torch.Generator().manual_seed(0)
    f = float(S)
    K = torch.tensor([[[2 * f, 0.0, f / 2], [0.0, 2 * f, f / 2], [0.0, 0.0, 1.0]]])
    pts = torch.randn(1, S, S, 3, generator=g) * 5 + torch.tensor([0.0, 0.0, 500.0])
    maps = [torch.rand(1, 3, S, S, generator=g) for _ in range(6)]
    return DCNetInputs(
        source_image=maps[0], source_light=maps[1], source_normal=maps[2], points_src=pts,
        valid=torch.ones(1, 1, S, S), K_src=K, driving_light=maps[3], driving_normal=maps[4],
        rendered=maps[5],
    )  # fmt: skip


class DCNetRunner:
    """Serves one trained DCNet: ``encode`` once per source, ``generate`` per frame (batch 1)."""

    def __init__(self, net: nn.Module, runtime: str = "auto") -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"DCNet runtime must be one of {RUNTIMES}, got {runtime!r}")
        self.net = net.eval()
        self.encoder = _Encoder(self.net).eval()
        self.decoder = _Decoder(self.net).eval()
        self._ort: tuple[_OrtModule, _OrtModule] | None = None
        self._lock = threading.Lock()  # ONNX Runtime sessions are thread-safe; the export is not
        self.runtime = "eager"
        self.mismatch = float("nan")  # max |ORT - eager| on the probe input
        if runtime != "eager":
            self._try_onnxruntime(required=runtime == "onnxruntime")

    def _try_onnxruntime(self, required: bool) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            if required:
                raise
            log.info("onnxruntime is not installed; DCNet runs in PyTorch eager")
            return
        probe = _probe_inputs(self.net)
        with torch.no_grad():
            feats = self.encode(probe.source_image, probe.source_light, probe.source_normal)
            dec_args = self._warp(probe, feats)
            sessions = []
            for module, args in ((self.encoder, (probe.source_image, probe.source_light,
                                                 probe.source_normal)),
                                 (self.decoder, dec_args)):  # fmt: skip
                buf = io.BytesIO()
                with warnings.catch_warnings():  # tracer notes on shape checks: shapes are fixed
                    warnings.simplefilter("ignore")
                    torch.onnx.export(
                        module, args, buf, dynamo=False, opset_version=17,
                        input_names=[f"in{j}" for j in range(len(args))],
                    )  # fmt: skip
                so = ort.SessionOptions()
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                so.intra_op_num_threads = max(1, torch.get_num_threads())
                so.inter_op_num_threads = 1
                sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
                sessions.append(_OrtModule(sess))
            ref = self.decoder(*dec_args)
        self._ort = (sessions[0], sessions[1])
        out = self._decode_ort(dec_args)
        self.mismatch = float((out - ref).abs().max())
        if self.mismatch <= MATCH_ATOL:
            self.runtime = "onnxruntime"
        else:
            self._ort = None
            msg = f"ONNX Runtime's DCNet output differs from eager by {self.mismatch:.2e}"
            if required:
                raise RuntimeError(msg)
            log.warning("%s; DCNet runs in PyTorch eager", msg)

    def _decode_ort(self, args: tuple[Tensor, ...]) -> Tensor:
        assert self._ort is not None
        return self._ort[1](list(args))[0]

    def encode(self, image: Tensor, light: Tensor, normal: Tensor) -> list[Tensor]:
        """Texture features of a source crop (its image, light and normal maps ``[1,3,S,S]``)."""
        if self._ort is not None:
            return self._ort[0]([image, light, normal])
        return list(self.encoder(image, light, normal))

    def _warp(self, inputs, feats: list[Tensor], view=None) -> tuple[Tensor, ...]:
        """The decoder's inputs: condition stack, warped image, C, warped texture features.
        ``view``: the (warped image, C) of ``inputs`` when already computed (the serving path's
        conditions warp the same source with the same test), else DCNet's view synthesis."""
        warped_image, covisible = view if view is not None else self.net.view_synthesis(inputs)
        cond = self.net.conditions(inputs, warped_image, covisible)
        feats_w = self.net.warp_features(feats, inputs, covisible)
        return (cond, warped_image, covisible, *feats_w)

    def generate(self, inputs, feats: list[Tensor] | None = None, view=None) -> Tensor:
        """DCNet's image ``[1,3,S,S]`` for ``inputs`` (``DCNetInputs``); ``feats`` are the source's
        cached ``encode`` features (computed here when None); ``view``: see ``_warp``."""
        inputs.check(self.net.config.crop_size, self.net.config.ablation)
        if feats is None:
            feats = self.encode(inputs.source_image, inputs.source_light, inputs.source_normal)
        args = self._warp(inputs, feats, view)
        if self._ort is not None:
            return self._decode_ort(args)
        return self.decoder(*args)
