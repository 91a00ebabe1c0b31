"""The ``recnet`` stage: the full-size config builds and trains 2 steps, a short run learns, the
augmentation keeps every label consistent, the evaluation splits held-out identities from the
tails of the training videos, and the checkpoint loads for inference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jr2net.face.coeffs import FaceCoefficients
from jr2net.training.config import load_config
from jr2net.training.data.sample import collate
from jr2net.training.losses import ModelLandmarks, landmark_error_iod
from jr2net.training.stages.base import TrainContext, get_stage
from jr2net.training.stages.recnet import MIRROR_68, augment_batch
from jr2net.training.trainer import Trainer

CONFIGS = Path(__file__).resolve().parent.parent / "training" / "configs"
# A small real selection: d0 (training video, its tail held out), d20 (held out whole), a photo.
DATA = [
    "run.device=cpu",
    "data.shared_videos=[d0,d20]",
    "data.shared_photos=[obama]",
    "prepare.max_frames=36",
    "prepare.video_stride=4",
    "data.synthetic.size=8",
    "data.synthetic.heldout_size=2",
    "data.synthetic.p_texture=0",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    cfg = load_config(CONFIGS / "tiny.yaml", DATA)
    Trainer("prepare", cfg, run).run()
    return run


def test_recnet_full_config_builds_resnet50_at_224_and_trains_two_steps_at_batch_2(run_dir):
    over = [*DATA, "recnet.steps=2", "recnet.batch_size=2", "recnet.landmark_only_steps=1",
            "recnet.eval_every=0", "recnet.eval_batches=1", "recnet.num_workers=0",
            "recnet.identity_samples=1", "run.amp=false", "run.num_threads=0"]  # fmt: skip
    cfg = load_config(CONFIGS / "recnet_full.yaml", over)
    assert (cfg.recnet.backbone, cfg.recnet.width, cfg.data.crop_size) == ("resnet50", 1.0, 224)
    out = Trainer("recnet", cfg, run_dir, force=True).run()
    assert out["status"] == "done" and out["step"] == 2
    import csv

    rows = list(csv.DictReader((run_dir / "recnet" / "metrics.csv").open()))
    assert rows and all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)
    from jr2net.models.checkpoint import load_recnet

    fitter = load_recnet(run_dir / "recnet" / "last.pt")
    assert fitter.net.backbone.name == "resnet50" and fitter.crop_size == 224
    assert fitter.step == 2


def _stage(run_dir: Path, extra: list[str] = ()):
    cfg = load_config(CONFIGS / "tiny.yaml", [*DATA, *extra])
    ctx = TrainContext("cpu", face_model_spec=cfg.run.face_model)
    stage = get_stage("recnet")(cfg, run_dir, ctx)
    models = stage.build_models()
    stage.models = models
    ctx.optimizers = stage.optimizers = stage.build_optimizers(models)
    return stage


def test_a_short_run_on_one_batch_lowers_the_landmark_loss(run_dir):
    stage = _stage(run_dir, ["recnet.warmup_steps=0", "recnet.augment_shift=0",
                             "recnet.augment_scale=0", "recnet.augment_color=0",
                             "recnet.augment_flip=0", "recnet.augment_rotate=0"])  # fmt: skip
    ds = stage.train_dataset()
    batch = collate([ds[i] for i in range(min(len(ds), 8))])
    losses = [stage.train_step(batch, step)["landmark"] for step in range(30)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_the_full_objective_adds_photometric_and_identity_terms(run_dir):
    stage = _stage(
        run_dir,
        ["recnet.landmark_only_steps=1", "recnet.identity_samples=2", "recnet.identity_every=1"],
    )
    ds = stage.train_dataset()
    batch = collate([ds[i] for i in range(4)])
    first = stage.train_step(batch, 0)
    second = stage.train_step(batch, 1)
    assert "photometric" not in first and "identity" not in first
    assert second["photometric"] > 0 and second["identity"] > 0


def test_augmentation_moves_image_mask_landmarks_and_camera_together(run_dir):
    stage = _stage(run_dir)
    ds = stage.eval_dataset()
    syn = [ds[i] for i in range(len(ds)) if ds[i]["has_gt"] > 0][:2]
    batch = collate(syn)
    aug = augment_batch(batch, shift=0.1, scale=0.1, color=0.0,
                        generator=torch.Generator().manual_seed(3))  # fmt: skip
    gt = FaceCoefficients(**batch["coeffs"])  # all of the model's identity modes
    lm = ModelLandmarks(stage.ctx.face_model, gt.identity.shape[1])
    # The true face under the new camera lands on the moved landmarks ...
    err = landmark_error_iod(lm.project(gt, aug["K"]), aug["landmarks"])
    assert err.max() < 1e-4
    assert not torch.allclose(aug["K"], batch["K"])
    # ... and its render covers the moved mask.
    with torch.no_grad():
        render = stage.loss.renderer.render(gt, aug["K"], (128, 128))
    overlap = (render.face_mask * aug["mask"]).sum() / aug["mask"].sum()
    assert overlap > 0.9


def test_a_resumed_stage_draws_the_same_augmentation_as_a_straight_one(run_dir):
    ds = _stage(run_dir).eval_dataset()
    batch = collate([ds[i] for i in range(2)])

    def draw(stage):
        return augment_batch(batch, shift=0.1, scale=0.1, color=0.1, flip=0.5,
                             generator=stage._gen)["image"]  # fmt: skip

    straight = _stage(run_dir)
    draw(straight)  # the steps before the checkpoint
    state = straight.extra_state()
    expected = draw(straight)
    resumed = _stage(run_dir)
    resumed.load_extra_state(state)
    assert torch.equal(draw(resumed), expected)
    assert not torch.equal(draw(_stage(run_dir)), expected)  # a fresh generator differs


def test_mirroring_flips_image_mask_landmarks_and_principal_point_of_real_samples_only(run_dir):
    stage = _stage(run_dir)
    ds = stage.eval_dataset()
    real = next(ds[i] for i in range(len(ds)) if ds[i]["has_gt"] < 0.5)
    syn = next(ds[i] for i in range(len(ds)) if ds[i]["has_gt"] > 0.5)
    batch = collate([real, syn])
    out = augment_batch(batch, shift=0, scale=0, color=0, flip=1.0)
    S = batch["image"].shape[-1]
    assert torch.equal(out["image"][0], batch["image"][0].flip(-1))
    assert torch.equal(out["mask"][0], batch["mask"][0].flip(-1))
    # The subject's right eye corner (36) is where the mirrored left one (45) was.
    assert torch.allclose(out["landmarks"][0, 36, 0], S - 1 - batch["landmarks"][0, 45, 0])
    assert torch.allclose(out["landmarks"][0, 36, 1], batch["landmarks"][0, 45, 1])
    assert out["K"][0, 0, 2] == pytest.approx(S - 1 - float(batch["K"][0, 0, 2]))
    for key in ("image", "mask", "landmarks", "K"):  # ground-truth samples stay as they are
        assert torch.equal(out[key][1], batch[key][1]), key
    assert out["coeffs_valid"].tolist() == [False, True]  # a mirrored face has other coefficients
    back = augment_batch(out, shift=0, scale=0, color=0, flip=1.0)
    assert torch.allclose(back["landmarks"], batch["landmarks"]) and torch.allclose(
        back["K"], batch["K"]
    )
    assert sorted(MIRROR_68) == list(range(68))


def test_rotation_turns_image_landmarks_and_principal_point_as_a_camera_roll():
    S, f = 64, 80.0
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2, 68, 3, generator=g) * torch.tensor([8.0, 8.0, 2.0]) + torch.tensor(
        [0, 0, 60.0]
    )
    K = torch.tensor([[f, 0, 20.0], [0, f, 40.0], [0, 0, 1]]).expand(2, 3, 3).clone()
    K[1, :2, 2] = torch.tensor([-30.0, 90.0])  # a principal point off the crop

    def proj(K, X):
        return f * X[..., :2] / X[..., 2:] + K[:, None, :2, 2]

    lm = proj(K, X)
    image = torch.zeros(2, 3, S, S)
    k = int((lm[0] - (S - 1) / 2).norm(dim=-1).argmin())  # the landmark nearest the centre
    spot = lm[0, k].round().long()  # a bright pixel on it
    image[0, :, spot[1], spot[0]] = 1.0
    batch = {"image": image, "mask": torch.ones(2, 1, S, S), "landmarks": lm, "K": K,
             "landmark_weight": torch.ones(2, 68), "has_gt": torch.tensor([0.0, 1.0])}  # fmt: skip
    out = augment_batch(batch, shift=0, scale=0, color=0, rotate=20.0,
                        generator=torch.Generator().manual_seed(1))  # fmt: skip
    # Sample 0 (no ground truth): its landmarks are those of the face rolled about the optical
    # axis, seen through the new camera.
    d = out["landmarks"][0] - out["landmarks"][0].mean(0) - (lm[0] - lm[0].mean(0))
    assert d.abs().max() > 1.0  # it did turn
    v0, v1 = lm[0, 1] - lm[0, 0], out["landmarks"][0, 1] - out["landmarks"][0, 0]
    a = torch.atan2(v0[0] * v1[1] - v0[1] * v1[0], torch.dot(v0, v1))  # the turn
    c, s_ = torch.cos(a), torch.sin(a)
    Xr = X[0] @ torch.tensor([[c, s_, 0], [-s_, c, 0], [0, 0, 1.0]])
    assert torch.allclose(proj(out["K"][:1], Xr[None])[0], out["landmarks"][0], atol=1e-3)
    # The image turned with them: the bright pixel is next to the moved landmark.
    img = out["image"][0, 0]
    yx = torch.nonzero(img == img.max())[0]
    assert (yx.flip(0).float() - out["landmarks"][0, k]).norm() < 1.5
    for key in ("image", "landmarks", "K"):  # the ground-truth sample is left alone
        assert torch.equal(out[key][1], batch[key][1]), key
    assert out["coeffs_valid"].tolist() == [False, True]  # a turned face has other coefficients


def test_evaluation_reports_heldout_identities_and_video_tails_apart(run_dir):
    stage = _stage(run_dir)
    loader = torch.utils.data.DataLoader(stage.eval_dataset(), batch_size=8, collate_fn=collate)
    with torch.no_grad():
        metrics = stage.evaluate(stage.models, loader)
    assert metrics["n_d20_frames"] > 0 and metrics["n_tail_frames"] > 0
    assert metrics["n_frames"] == metrics["n_d20_frames"] + metrics["n_tail_frames"]
    for key in ("landmark_iod", "d20_landmark_iod_median", "tail_landmark_iod",
                "fitter_d20_landmark_iod", "synthetic_landmark_iod"):  # fmt: skip
        assert 0 <= metrics[key] < 1, key
    # The fitter's pseudo-labels fit the detections far better than an untrained RecNet.
    assert metrics["fitter_landmark_iod"] < 0.5 * metrics["landmark_iod"]
