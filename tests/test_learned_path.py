"""The learned path: DCNet (and RecNet) checkpoints made here drive real frames, in process and
through a real server on loopback; bad checkpoints are refused before the first frame."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from jr2net.face.model import load_face_model
from jr2net.io.images import load_image
from jr2net.models.dcnet import DCNetConfig
from jr2net.pipeline import registry
from jr2net.pipeline.base import SessionOptions
from jr2net.pipeline.learned import (
    HOW_TO_ENABLE,
    STAGES,
    LearnedReenactor,
    build_dcnet,
    dcnet_spec,
    resolve_checkpoints,
)
from jr2net.training.checkpoints import CheckpointError, save_checkpoint

SMALL = {"crop_size": 64, "channels": (8, 16, 16), "spade_hidden": 8}


def read_frames(path: Path, count: int) -> list[np.ndarray]:
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) >= count:
                break
    return frames


def save_dcnet(path: Path, model, seed: int = 0, **config) -> Path:
    """An untrained DCNet checkpoint in the format the dcnet stage writes."""
    import torch

    torch.manual_seed(seed)
    spec = dcnet_spec(DCNetConfig.tiny(**{**SMALL, **config}))
    net = build_dcnet(spec)
    return save_checkpoint(path, {
        "stage": "dcnet", "step": 0, "models": {"generator": net.state_dict()}, "config": {},
        "face_model": {"name": model.name, "sha256": model.sha256}, "model_spec": spec,
    })  # fmt: skip


def save_recnet(path: Path, model) -> Path:
    from jr2net.models.checkpoint import build_recnet, recnet_spec

    net = build_recnet(model, {"backbone": "resnet18", "width": 0.25, "crop_size": 64,
                               "n_identity": 20, "n_albedo": 10,
                               "n_expression": model.n_expression})  # fmt: skip
    return save_checkpoint(path, {
        "stage": "recnet", "step": 0, "models": {"recnet": net.state_dict()}, "config": {},
        "face_model": {"name": model.name, "sha256": model.sha256}, "model_spec": recnet_spec(net),
    })  # fmt: skip


@pytest.fixture(scope="module")
def ict(ict_model_path):
    return load_face_model(str(ict_model_path))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, ict) -> Path:
    run = tmp_path_factory.mktemp("learned_run")
    save_dcnet(run / "dcnet" / "best.pt", ict)
    save_recnet(run / "recnet" / "best.pt", ict)
    return run


@pytest.fixture(scope="module")
def source(images_dir) -> np.ndarray:
    return np.asarray(load_image(images_dir / "obama.jpg"))


@pytest.fixture(scope="module")
def frames(videos_dir) -> list[np.ndarray]:
    return read_frames(videos_dir / "d0.mp4", 5)


def test_learned_session_reenacts_frames_with_per_stage_timings(run_dir, ict, source, frames):
    r = LearnedReenactor(ict, dcnet=run_dir / "dcnet" / "best.pt")
    assert r.recnet is None and r.crop_size == 64
    session = r.start_session(source, SessionOptions(output_width=256, output_height=256))
    analyses = [session.analyse(f) for f in frames[:-1]]
    results = [session.synthesise(a) for a in analyses] + [session.process(frames[-1])]
    assert all(res.face_found and res.fallback == "" for res in results)
    assert all(res.image.shape == (256, 256, 3) and res.image.dtype == np.uint8 for res in results)
    assert set(STAGES) <= set(results[-1].timings)
    assert results[-1].timings["dcnet"] > 0 and results[-1].timings["conditions"] > 0
    # DCNet's (untrained) face replaces the source face inside the face crop; far from the face
    # the background is the source's.
    x0, y0, side = analyses[-1].box
    assert 30 < side < 150
    bg = session.bg_u8.astype(int)
    diff = np.abs(results[-2].image.astype(int) - bg)
    q = side // 4
    assert diff[y0 + q : y0 + 3 * q, x0 + q : x0 + 3 * q].mean() > 10
    assert diff[-40:].mean() < 3
    blank = session.process(np.zeros((128, 128, 3), np.uint8))
    assert not blank.face_found and blank.fallback == "last_output"


def test_recnet_replaces_the_fitter_when_given(run_dir, ict, source, frames):
    found = resolve_checkpoints(run_dir)
    assert set(found) == {"dcnet", "recnet"}
    r = registry.create_reenactor(
        "learned", registry.ReenactorSettings(face_model=ict, checkpoints=str(run_dir))
    )
    assert isinstance(r, LearnedReenactor) and r.recnet is not None
    session = r.start_session(source, SessionOptions(output_width=192, output_height=192))
    res = session.process(frames[0])
    assert res.face_found and "recnet" in session.source_fit.timings


def test_bad_checkpoints_are_refused_when_the_reenactor_is_built(tmp_path, run_dir, ict):
    generic = load_face_model("generic")
    with pytest.raises(CheckpointError, match="sha256"):
        LearnedReenactor(generic, dcnet=run_dir / "dcnet" / "best.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a JR2Net checkpoint"):
        LearnedReenactor(ict, dcnet=tmp_path / "corrupt.pt")
    with pytest.raises(CheckpointError, match="not a DCNet"):
        LearnedReenactor(ict, dcnet=run_dir / "recnet" / "best.pt")
    with pytest.raises(ValueError, match="there is no .*dcnet/best.pt"):
        resolve_checkpoints(tmp_path)
    with pytest.raises(FileNotFoundError, match="dcnet checkpoint not found"):
        resolve_checkpoints({"run": str(run_dir), "dcnet": str(tmp_path / "missing.pt")})
    for empty in (None, "", {}, {"recnet": str(run_dir / "recnet" / "best.pt")}):
        with pytest.raises(ValueError, match="--checkpoints"):
            resolve_checkpoints(empty)
    with pytest.raises(ValueError, match="--checkpoints RUN"):
        registry.create_reenactor("learned", registry.ReenactorSettings(face_model=ict))
    assert "--dcnet" in HOW_TO_ENABLE


def test_runner_split_equals_forward_and_onnxruntime_matches_eager():
    import torch

    from jr2net.pipeline.dcnet_runtime import DCNetRunner, _probe_inputs

    torch.manual_seed(1)
    net = build_dcnet(dcnet_spec(DCNetConfig.tiny(**SMALL))).eval()
    inputs = _probe_inputs(net)
    eager = DCNetRunner(net, "eager")
    with torch.inference_mode():
        ref = net(inputs)
        assert torch.allclose(eager.generate(inputs), ref, atol=1e-6)
        feats = eager.encode(inputs.source_image, inputs.source_light, inputs.source_normal)
        assert torch.allclose(eager.generate(inputs, feats), ref, atol=1e-6)
    ort = DCNetRunner(net, "auto")
    assert ort.runtime == "onnxruntime" and ort.mismatch <= 1e-4
    with torch.inference_mode():
        assert (ort.generate(inputs) - ref).abs().max() < 1e-4
    with pytest.raises(ValueError, match="runtime"):
        DCNetRunner(net, "tensorrt")


def test_real_server_serves_the_learned_path_and_lists_it(run_dir, ict_model_path, source, frames):
    from jr2net.clients.client import ReenactClient
    from jr2net.server.app import local_server

    settings = dict(face_model=str(ict_model_path), preload=False, max_sessions=1)
    with local_server(checkpoints=str(run_dir), **settings) as address:
        with ReenactClient(address) as client:
            assert set(client.server_info().modes) == {"geometric", "learned"}
            results = list(client.stream(source, frames, mode="learned", output_size=(256, 256)))
            ready = client.last_ready
    assert ready.mode == "learned"
    assert [r.frame_id for r in results] == list(range(5))
    assert all(r.ok and r.face_found and r.image.shape == (256, 256, 3) for r in results)
    assert {"dcnet", "conditions", "recombine", "composite", "pipeline", "total"} <= set(
        results[-1].timings
    )


def test_server_without_checkpoints_refuses_learned_with_how_to_enable(ict_model_path, source):
    import grpc

    from jr2net.clients.client import ReenactClient
    from jr2net.server.app import local_server

    with local_server(face_model=str(ict_model_path), preload=False) as address:
        with ReenactClient(address) as client:
            assert list(client.server_info().modes) == ["geometric"]
            with pytest.raises(grpc.RpcError) as err:
                list(client.stream(source, [], mode="learned"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "--checkpoints RUN" in err.value.details()


def test_server_start_refuses_a_corrupt_or_foreign_checkpoint(tmp_path, run_dir, ict_model_path):
    from jr2net.server.app import ReenactmentServer
    from jr2net.server.config import ServerConfig

    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="not a JR2Net checkpoint"):
        ReenactmentServer(ServerConfig(face_model=str(ict_model_path), preload=False,
                                       dcnet=str(tmp_path / "corrupt.pt")))  # fmt: skip
    with pytest.raises(CheckpointError, match="sha256"):
        ReenactmentServer(ServerConfig(face_model="generic", preload=False,
                                       checkpoints=str(run_dir)))  # fmt: skip


def test_without_a_face_model_the_checkpoints_own_is_used(tmp_path, ict, ict_model_path):
    from jr2net.training.checkpoints import load_checkpoint

    path = save_dcnet(tmp_path / "dcnet.pt", ict)
    ckpt = load_checkpoint(path)
    ckpt["config"] = {"run": {"face_model": str(ict_model_path)}}
    ckpt.pop("format")
    save_checkpoint(path, ckpt)
    r = registry.create_reenactor("learned", registry.ReenactorSettings(checkpoints=str(path)))
    assert r.model.sha256 == ict.sha256


OPEN = 45  # d0.mp4: a wide-open smile (tests/test_pipeline_transfer.py)


def test_learned_path_shows_the_driving_mouth_unless_mouth_is_synthetic(run_dir, ict, videos_dir):
    """The mouth transfer puts the driving frame's interior over the crop's mouth socket
    (same identity here: it is the target frame's own mouth); ``mouth=synthetic`` keeps
    DCNet's own (untrained here) mouth."""
    from jr2net.io.video import VideoReader

    d0 = VideoReader(videos_dir / "d0.mp4").read_all(max_frames=OPEN + 1)
    gt = d0[OPEN].astype(int)
    r = LearnedReenactor(ict, dcnet=run_dir / "dcnet" / "best.pt")
    out, timings = {}, {}
    for mode in ("transfer", "synthetic"):
        session = r.start_session(d0[0], SessionOptions(pose_mode="absolute", extra={"mouth": mode}))
        res = session.process(d0[OPEN])
        assert res.face_found
        out[mode], timings[mode] = res.image.astype(int), res.timings["mouth"]
        session.close()
    # The pixels the transfer changed are the driving's mouth (up to the colour match).
    changed = np.abs(out["transfer"] - out["synthetic"]).max(-1) > 12
    assert changed.sum() > 300, changed.sum()
    err = {m: np.abs(o - gt)[changed].mean() for m, o in out.items()}
    assert err["transfer"] < 0.7 * err["synthetic"], err
    assert timings["transfer"] > 0 and timings["synthetic"] < 1e-4  # skipped: no work
    with pytest.raises(ValueError, match="mouth"):
        r.start_session(d0[0], SessionOptions(extra={"mouth": "teeth"}))


def test_default_light_is_the_one_the_checkpoint_was_trained_with(tmp_path, ict, source):
    import torch

    for light in ("source", "driving"):
        spec = dcnet_spec(DCNetConfig.tiny(**SMALL), light=light)
        path = save_checkpoint(tmp_path / light / "best.pt", {
            "stage": "dcnet", "step": 0, "models": {"generator": build_dcnet(spec).state_dict()},
            "config": {}, "face_model": {"name": ict.name, "sha256": ict.sha256},
            "model_spec": spec,
        })  # fmt: skip
        r = LearnedReenactor(ict, dcnet=path)
        assert r.start_session(source).light_mode == light
        other = "source" if light == "driving" else "driving"
        assert r.start_session(source, SessionOptions(extra={"light": other})).light_mode == other
    assert torch.is_tensor(r.runner.encode(
        torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64)
    )[0])  # fmt: skip


def test_the_conditions_warp_is_dcnets_view_synthesis(run_dir, ict, source, frames):
    """The serving path hands the conditions' warp to DCNet instead of warping again: same image."""
    import torch

    r = LearnedReenactor(ict, dcnet=run_dir / "dcnet" / "best.pt", runtime="eager")
    session = r.start_session(source, SessionOptions(output_width=256, output_height=256))
    captured = {}
    generate = r.runner.generate

    def spy(inputs, feats=None, view=None):
        assert view is not None  # the conditions' warp is handed over
        captured.setdefault("out", (generate(inputs, feats, view), generate(inputs, feats)))
        return captured["out"][0].clone()  # the session pastes mouth and eyes into it in place

    r.runner.generate = spy
    assert session.process(frames[0]).face_found
    reused, own = captured["out"]
    assert torch.equal(reused, own)


def test_rim_trimmed_mask_drops_hidden_pixels_at_the_rim_only():
    import torch

    from jr2net.pipeline.learned import rim_trimmed_mask

    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 4:28, 4:28] = 1
    covisible = mask.clone()
    covisible[..., 4:8, 4:20] = 0  # a hidden strip along the top rim (hairline)
    covisible[..., 14:18, 14:18] = 0  # a hidden blob inside (the mouth)
    out = rim_trimmed_mask(mask, covisible, 4)
    assert out[..., 4:8, 4:20].sum() == 0  # the rim strip goes to the background
    assert out[..., 14:18, 14:18].min() == 1  # the inner hole stays
    assert torch.equal(out[..., 8:28, :], mask[..., 8:28, :])
