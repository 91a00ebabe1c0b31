"""ETNet as the driving expression tracker (``jr2net.pipeline.etnet_tracker``): the session option
``expression``, ``--etnet`` on a real server on loopback in both paths (timing ``etnet``, output
unlike the fitter's), the refusals, and ``jr2net fit --recnet`` on a RecAugNet checkpoint.

The ETNets made here have a zero-weight head whose bias is a fixed expression, so whatever the
crop, ETNet's β is exactly ``PATTERN``: every check on where β came from can fail."""

from __future__ import annotations

import json
from pathlib import Path

import av
import grpc
import numpy as np
import pytest
import torch

from jr2net.face.model import load_face_model
from jr2net.io.images import load_image
from jr2net.models.etnet import ETNet
from jr2net.pipeline import registry
from jr2net.pipeline.base import SessionOptions
from jr2net.pipeline.etnet_tracker import EXPRESSION_VALUES, NO_ETNET, parse_expression
from jr2net.training.checkpoints import CheckpointError, save_checkpoint
from jr2net.training.stages.etnet import etnet_spec

PATTERN = {"jawOpen": 0.9, "eyeBlink_L": 0.8, "eyeBlink_R": 0.8, "mouthSmile_L": 0.6,
           "mouthSmile_R": 0.6}  # fmt: skip


def fixed_etnet(model, crop_size: int = 64) -> tuple[ETNet, torch.Tensor]:
    """A tiny ETNet whose β is ``PATTERN`` for any crop, and that β ``[1,E]``."""
    net = ETNet(backbone="resnet18", crop_size=crop_size, n_expression=model.n_expression, width=0.25)
    beta = torch.zeros(model.n_expression)
    for name, value in PATTERN.items():
        beta[model.expression_names.index(name)] = value
    with torch.no_grad():
        net.head.bias.copy_(beta)
    return net.eval(), beta[None]


def _payload(stage: str, model, models: dict, spec: dict) -> dict:
    return {"stage": stage, "step": 0, "models": models, "config": {},
            "face_model": {"name": model.name, "sha256": model.sha256}, "model_spec": spec}  # fmt: skip


def save_etnet(path: Path, model) -> Path:
    net, _ = fixed_etnet(model)
    return save_checkpoint(path, _payload("etnet", model, {"etnet": net.state_dict()}, etnet_spec(net)))


def save_recaugnet(path: Path, model) -> Path:
    from jr2net.models.checkpoint import build_recnet, recnet_spec
    from jr2net.training.stages.recaugnet import CameraRecAugNet

    torch.manual_seed(0)
    recnet = build_recnet(model, {"backbone": "resnet18", "width": 0.25, "crop_size": 64,
                                  "n_identity": 20, "n_albedo": 10,
                                  "n_expression": model.n_expression})  # fmt: skip
    net = CameraRecAugNet(recnet, fixed_etnet(model)[0])
    spec = {"kind": "recaugnet", "recnet": recnet_spec(recnet), "etnet": etnet_spec(net.etnet)}
    return save_checkpoint(path, _payload("recaugnet", model, {"recaugnet": net.state_dict()}, spec))


def save_dcnet(path: Path, model) -> Path:
    from jr2net.models.dcnet import DCNetConfig
    from jr2net.pipeline.learned import build_dcnet, dcnet_spec

    torch.manual_seed(0)
    spec = dcnet_spec(DCNetConfig.tiny(crop_size=64, channels=(8, 16, 16), spade_hidden=8))
    return save_checkpoint(
        path, _payload("dcnet", model, {"generator": build_dcnet(spec).state_dict()}, spec)
    )


@pytest.fixture(scope="module")
def ict(ict_model_path):
    return load_face_model(str(ict_model_path))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, ict) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tracker")
    return {"etnet": save_etnet(root / "etnet.pt", ict),
            "recaugnet": save_recaugnet(root / "recaugnet.pt", ict),
            "dcnet": save_dcnet(root / "dcnet.pt", ict)}  # fmt: skip


@pytest.fixture(scope="module")
def source(images_dir) -> np.ndarray:
    return np.asarray(load_image(images_dir / "obama.jpg"))


@pytest.fixture(scope="module")
def frames(videos_dir) -> list[np.ndarray]:
    out = []
    with av.open(str(videos_dir / "d0.mp4")) as container:
        for frame in container.decode(video=0):
            out.append(frame.to_ndarray(format="rgb24"))
            if len(out) == 3:
                break
    return out


def test_expression_option_gives_transfer_mode_and_tracker_with_etnet_as_default_when_loaded():
    assert parse_expression(None, True) == ("absolute", "etnet")
    assert parse_expression(None, False) == ("absolute", "fitter")
    assert parse_expression("relative", True) == ("relative", "etnet")
    assert parse_expression("fitter", True) == ("absolute", "fitter")
    assert parse_expression("etnet+relative", True) == ("relative", "etnet")
    assert parse_expression("fitter+relative", True) == ("relative", "fitter")
    for value in ("etnet", "etnet+absolute"):
        with pytest.raises(ValueError, match="--etnet CKPT"):
            parse_expression(value, False)
    for bad in ("ETNET", "etnet+", "relative+etnet", "etnet+fitter", ""):
        with pytest.raises(ValueError, match="must be one of"):
            parse_expression(bad, True)
    assert {"absolute", "relative", "etnet", "fitter"} <= set(EXPRESSION_VALUES)


def test_geometric_sessions_take_etnets_expression_and_report_its_timing(ckpts, ict, source, frames):
    r = registry.create_reenactor(
        "geometric", registry.ReenactorSettings(face_model=ict, etnet=str(ckpts["etnet"]))
    )
    _, beta = fixed_etnet(ict)
    tracked = r.make_driving_fitter("etnet").fit(frames[0])
    plain = r.make_driving_fitter("fitter").fit(frames[0])
    assert torch.equal(tracked.coeffs.expression.float(), beta)
    assert torch.allclose(tracked.coeffs.angles, plain.coeffs.angles, atol=1e-5)
    assert not torch.allclose(plain.coeffs.expression.float(), beta, atol=0.05)
    options = SessionOptions(output_width=192, output_height=192)
    with_etnet = r.start_session(source, options).process(frames[0])
    opted_out = r.start_session(
        source, SessionOptions(output_width=192, output_height=192, extra={"expression": "fitter"})
    ).process(frames[0])
    assert with_etnet.timings["etnet"] > 0 and "etnet" not in opted_out.timings
    assert np.abs(with_etnet.image.astype(int) - opted_out.image.astype(int)).mean() > 0.2


def test_a_recaugnet_checkpoint_gives_its_etnet_as_the_tracker(ckpts, ict, frames):
    r = registry.create_reenactor(
        "geometric", registry.ReenactorSettings(face_model=ict, etnet=str(ckpts["recaugnet"]))
    )
    fit = r.make_driving_fitter("etnet").fit(frames[0])
    assert torch.equal(fit.coeffs.expression.float(), fixed_etnet(ict)[1])


def test_learned_path_with_recnet_wraps_recnets_driving_fit_in_the_tracker(ckpts, ict, frames):
    from jr2net.pipeline.learned import LearnedReenactor

    r = LearnedReenactor(ict, dcnet=ckpts["dcnet"], recnet=ckpts["recaugnet"], etnet=ckpts["etnet"])
    tracked = r.make_driving_fitter("etnet").fit(frames[0])
    assert torch.equal(tracked.coeffs.expression.float(), fixed_etnet(ict)[1])
    assert "recnet" in tracked.timings and tracked.timings["etnet"] > 0
    assert "etnet" not in r.make_driving_fitter("fitter").fit(frames[0]).timings


def _stream(address: str, source, frames, mode: str, **options: str):
    from jr2net.clients.client import ReenactClient

    with ReenactClient(address) as client:
        return list(client.stream(source, frames, mode=mode, output_size=(192, 192),
                                  options=options))  # fmt: skip


def test_real_server_with_etnet_tracks_expressions_in_both_paths(ckpts, ict_model_path, source, frames):
    from jr2net.server.app import local_server

    with local_server(face_model=str(ict_model_path), preload=False, max_sessions=1,
                      etnet=str(ckpts["etnet"]), dcnet=str(ckpts["dcnet"])) as address:  # fmt: skip
        for mode in ("geometric", "learned"):
            etnet = _stream(address, source, frames, mode, expression="etnet")
            default = _stream(address, source, frames[:1], mode)
            fitter = _stream(address, source, frames, mode, expression="fitter")
            assert all(r.ok and r.face_found for r in etnet + fitter), mode
            assert all(r.timings["etnet"] > 0 for r in etnet + default), mode
            assert all("etnet" not in r.timings for r in fitter), mode
            diff = np.abs(etnet[-1].image.astype(int) - fitter[-1].image.astype(int)).mean()
            assert diff > 0.2, (mode, diff)


def test_server_without_etnet_refuses_expression_etnet_and_every_server_unknown_values(
    ict_model_path, source
):
    from jr2net.server.app import local_server

    with local_server(face_model=str(ict_model_path), preload=False) as address:
        for value, says in (("etnet", "--etnet CKPT"), ("etnet+relative", "--etnet CKPT"),
                            ("sideways", "must be one of")):  # fmt: skip
            with pytest.raises(grpc.RpcError) as err:
                _stream(address, source, [], "geometric", expression=value)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, value
            assert says in err.value.details(), err.value.details()
        assert _stream(address, source, [], "geometric", expression="fitter+relative") == []
    assert "--etnet CKPT" in NO_ETNET


def test_server_start_refuses_a_corrupt_foreign_or_wrong_stage_etnet(tmp_path, ckpts, ict_model_path):
    from jr2net.server.app import ReenactmentServer
    from jr2net.server.config import ServerConfig

    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 truncated")
    cases = ((str(ict_model_path), tmp_path / "corrupt.pt", "not a JR2Net checkpoint"),
             ("generic", ckpts["etnet"], "sha256"),
             (str(ict_model_path), ckpts["dcnet"], "without an ETNet|not a"))  # fmt: skip
    for face_model, path, says in cases:
        with pytest.raises(CheckpointError, match=says):
            ReenactmentServer(ServerConfig(face_model=face_model, preload=False, etnet=str(path)))
    with pytest.raises(ValueError, match="etnet: no such checkpoint file"):
        ServerConfig(etnet=str(tmp_path / "missing.pt")).validate()


def test_serve_and_reenact_take_the_etnet_flag():
    import argparse

    from jr2net.commands import reenact, serve
    from jr2net.server.config import load_config

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args(["--etnet", __file__])
    assert load_config(args, env={}).etnet == __file__
    parser = argparse.ArgumentParser()
    reenact.add_arguments(parser)
    args = parser.parse_args(["--source", "s.jpg", "--driving", "d.mp4", "--out", "o.mp4",
                              "--etnet", "e.pt"])  # fmt: skip
    assert args.etnet == "e.pt"


def test_jr2net_fit_with_a_recaugnet_checkpoint_reports_etnets_expression(
    ckpts, ict, ict_model_path, images_dir, tmp_path
):
    from jr2net.cli import main

    rc = main(["fit", str(images_dir / "obama.jpg"), "--out-dir", str(tmp_path), "--face-model",
               str(ict_model_path), "--recnet", str(ckpts["recaugnet"]), "--no-overlay"])  # fmt: skip
    assert rc == 0
    data = json.loads((tmp_path / "obama.json").read_text())
    coeffs = data["coefficients"]
    assert coeffs["expression_names"] == ict.expression_names
    assert np.allclose(coeffs["expression"], fixed_etnet(ict)[1].numpy(), atol=1e-6)
    assert len(coeffs["identity"][0]) == 20 and "recnet" in data["timings"]
