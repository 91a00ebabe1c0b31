"""RecNet loss terms on tiny inputs: zero (or minimal) at the truth, larger away from it, and with
finite gradients that reach the coefficients."""

from __future__ import annotations

import pytest
import torch

from jr2net.face.camera import default_intrinsics
from jr2net.face.coeffs import FaceCoefficients
from jr2net.face.model import load_face_model
from jr2net.training.losses import (
    RecNetLoss,
    RecNetLossWeights,
    coefficient_loss,
    coefficient_regularization,
    composite,
    identity_loss,
    landmark_error_iod,
    landmark_loss,
    landmark_weights,
    photometric_loss,
    vertex_loss,
)

SIZE = 32


@pytest.fixture(scope="module")
def model():
    return load_face_model("generic")


@pytest.fixture(scope="module")
def loss_fn(model):
    return RecNetLoss(model)


def _truth(model, batch: int = 2) -> FaceCoefficients:
    g = torch.Generator().manual_seed(0)
    c = FaceCoefficients.zeros(model, batch=batch, n_identity=20, n_albedo=12)
    c.identity = torch.randn(batch, 20, generator=g) * 0.5
    c.expression[:, :5] = torch.rand(batch, 5, generator=g) * 0.5
    c.albedo = torch.randn(batch, 12, generator=g) * 0.3
    c.angles = torch.tensor([[0.05, 0.2, -0.03], [-0.1, -0.15, 0.05]])[:batch]
    c.light[:, 1:4] = torch.randn(batch, 3, 1, generator=g) * 0.2
    return c


def _batch(loss_fn: RecNetLoss, truth: FaceCoefficients) -> dict:
    """A synthetic batch: the truth rendered in the canonical crop camera, exact landmarks (jaw on
    the occluding contour)."""
    B = truth.batch_size
    K = default_intrinsics(SIZE, batch=B)
    with torch.no_grad():
        out = loss_fn.renderer.render(truth, K, (SIZE, SIZE))
        lm = loss_fn.landmarks.project(truth, K)
    return {
        "image": out.image.clamp(0, 1),
        "K": K,
        "landmarks": lm,
        "landmark_weight": torch.ones(B, 68),
        "mask": torch.ones(B, 1, SIZE, SIZE),
        "coeffs": truth,
        "has_gt": torch.ones(B, dtype=torch.bool),
    }


def _leaf(c: FaceCoefficients) -> FaceCoefficients:
    return c.clone().detach().requires_grad_()


def test_landmark_weights_are_20x_on_the_nose_and_inner_mouth():
    w = landmark_weights()
    assert w[27:36].eq(20).all() and w[60:68].eq(20).all()
    assert w[:27].eq(1).all() and w[36:60].eq(1).all()


def test_landmark_loss_is_zero_at_the_truth_and_weighs_a_nose_error_20x_a_jaw_error():
    target = torch.rand(1, 68, 2) * SIZE
    assert landmark_loss(target.clone(), target, SIZE).item() == 0.0
    jaw, nose = target.clone(), target.clone()
    jaw[0, 3, 0] += 2.0
    nose[0, 30, 0] += 2.0
    lj, ln = landmark_loss(jaw, target, SIZE), landmark_loss(nose, target, SIZE)
    assert lj > 0 and torch.isclose(ln, 20 * lj)
    # A point with weight 0 (unknown) costs nothing.
    wt = torch.ones(1, 68)
    wt[0, 30] = 0
    assert landmark_loss(nose, target, SIZE, wt).item() == 0.0


def test_landmark_loss_heavy_weight_and_charbonnier_option():
    target = torch.rand(1, 68, 2) * SIZE
    jaw, nose = target.clone(), target.clone()
    jaw[0, 3, 0] += 2.0
    nose[0, 30, 0] += 2.0
    # heavy=1: every point weighs the same.
    assert torch.isclose(landmark_loss(nose, target, SIZE, heavy=1.0),
                         landmark_loss(jaw, target, SIZE, heavy=1.0))  # fmt: skip
    # Charbonnier: ~d^2 for a small error, ~2 r d (linear) for a large one.
    small, large = target.clone(), target.clone()
    small[:, :, 0] += 1e-3 * SIZE
    large[:, :, 0] += 0.5 * SIZE
    r = 0.01
    assert torch.isclose(landmark_loss(small, target, SIZE, heavy=1.0, robust=r),
                         torch.tensor(1e-6), rtol=1e-2)  # fmt: skip
    assert torch.isclose(landmark_loss(large, target, SIZE, heavy=1.0, robust=r),
                         torch.tensor(2 * r * 0.5), rtol=3e-2)  # fmt: skip
    assert landmark_loss(target.clone(), target, SIZE, robust=r).item() == 0.0
    with pytest.raises(ValueError, match="robust"):
        landmark_loss(jaw, target, SIZE, robust=-1.0)


def test_landmark_error_iod_is_the_mean_distance_over_the_outer_eye_corner_distance():
    target = torch.zeros(1, 68, 2)
    target[0, 45, 0] = 10.0
    pred = target.clone()
    pred[..., 1] += 1.0  # every point 1 px off, IOD 10 px
    assert torch.allclose(landmark_error_iod(pred, target), torch.tensor([0.1]))


def test_photometric_loss_is_minimal_at_the_truth_and_grows_with_the_error():
    img = torch.rand(2, 3, 8, 8)
    mask = torch.ones(2, 1, 8, 8)
    assert photometric_loss(img, img, mask).item() < 1e-3
    assert photometric_loss(img + 0.1, img, mask) < photometric_loss(img + 0.2, img, mask)
    # Pixels off the mask do not count.
    off = img.clone()
    off[:, :, :4] += 0.5
    mask[:, :, :4] = 0
    assert photometric_loss(off, img, mask).item() < 1e-3


def test_regularization_is_zero_at_the_prior_mean_and_positive_away(model):
    c = FaceCoefficients.zeros(model, batch=2, n_identity=20, n_albedo=12)
    assert coefficient_regularization(c).item() == pytest.approx(0.0, abs=1e-12)
    d = _leaf(_truth(model))
    d.light = d.light.detach().clone()
    d.light[:, 0, 0] += 0.3  # coloured light
    d.light.requires_grad_()
    reg = coefficient_regularization(d)
    assert reg > 0
    reg.backward()
    for name in ("identity", "expression", "albedo", "light"):
        g = getattr(d, name).grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_coefficient_and_vertex_losses_are_zero_at_the_truth(model):
    truth = _truth(model)
    assert coefficient_loss(truth, truth).item() == pytest.approx(0.0, abs=1e-12)
    # Fewer predicted identity modes: the missing ones count as 0.
    short = truth.replace(identity=truth.identity[:, :10])
    padded = truth.replace(identity=torch.cat([truth.identity[:, :10], torch.zeros(2, 10)], 1))
    assert torch.isclose(coefficient_loss(short, truth), coefficient_loss(padded, truth))
    assert coefficient_loss(short, truth) > 0
    v = model.shape(truth.identity, truth.expression)
    assert vertex_loss(v, v).item() < 1e-4
    assert vertex_loss(v + 1.0, v).item() == pytest.approx(3**0.5 / 10, rel=1e-4)
    # Samples without ground truth are masked out.
    mask = torch.tensor([1.0, 0.0])
    worse = v.clone()
    worse[1] += 5.0
    assert vertex_loss(worse, v, mask).item() < 1e-4


@pytest.mark.parametrize("phase", ["landmarks", "full"])
def test_recnet_loss_is_minimal_at_the_truth_with_gradients_reaching_the_coefficients(
    model, loss_fn, phase
):
    truth = _truth(model)
    batch = _batch(loss_fn, truth)
    photo = phase == "full"
    at_truth, terms0, _ = loss_fn(truth, batch, photometric=photo, identity=False)
    assert terms0["landmark"] < 1e-9 and terms0["coefficients"] < 1e-9
    assert terms0["vertices"] < 1e-4
    if photo:
        assert terms0["photometric"] < 0.02  # clamp(0,1) of the render and edge pixels only
    off = truth.clone()
    off.angles = off.angles + torch.tensor([0.0, 0.15, 0.0])
    off.translation = off.translation + torch.tensor([8.0, -5.0, 30.0])
    off.identity = off.identity + 0.5
    off.light = off.light * 1.3
    off = _leaf(off)
    loss, terms, render = loss_fn(off, batch, photometric=photo, identity=False)
    assert loss > at_truth
    assert terms["landmark"] > 1e-3 and terms["vertices"] > 1e-2
    assert (render is not None) == photo
    if photo:
        assert terms["photometric"] > terms0["photometric"] + 0.01
    loss.backward()
    names = ["identity", "expression", "angles", "translation"]
    if photo:
        names += ["albedo", "light"]
    for name in names:
        g = getattr(off, name).grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_pseudo_label_term_supervises_real_samples_whose_coefficients_still_hold(model):
    truth = _truth(model)
    off = truth.clone()
    off.identity = off.identity + 0.5
    off.angles = off.angles + 0.1
    w = RecNetLossWeights(pseudo=1.0)
    loss_fn = RecNetLoss(model, w)
    batch = {**_batch(loss_fn, truth), "has_gt": torch.zeros(2, dtype=torch.bool)}
    _, terms0, _ = loss_fn(truth, batch, photometric=False, identity=False)
    _, terms, _ = loss_fn(off, batch, photometric=False, identity=False)
    assert "coefficients" not in terms  # no ground truth here
    assert terms0["pseudo"] < 1e-4 and terms["pseudo"] > 1e-2
    # A mirrored sample's labels no longer hold: only the other one counts (half the batch).
    one = {**batch, "coeffs_valid": torch.tensor([True, False])}
    _, t1, _ = loss_fn(off, one, photometric=False, identity=False)
    assert 0 < t1["pseudo"] < terms["pseudo"]
    none = {**batch, "coeffs_valid": torch.tensor([False, False])}
    assert "pseudo" not in loss_fn(off, none, photometric=False, identity=False)[1]
    # Off by default.
    assert "pseudo" not in RecNetLoss(model)(off, batch, photometric=False, identity=False)[1]


def test_photometric_term_alone_reaches_pose_light_and_albedo(model, loss_fn):
    truth = _truth(model)
    batch = _batch(loss_fn, truth)
    w = RecNetLossWeights(landmark=0, regularization=0, light_mono=0, coefficients=0, vertices=0)
    only_photo = RecNetLoss(model, w)
    off = truth.clone()
    off.angles = off.angles + 0.05
    off.light = off.light * 0.8
    off.albedo = off.albedo + 0.2
    off = _leaf(off)
    loss, terms, _ = only_photo(off, batch, photometric=True, identity=False)
    assert set(terms) == {"photometric"}
    loss.backward()
    for name in ("angles", "translation", "identity", "albedo", "light"):
        g = getattr(off, name).grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_photometric_term_without_image_geometry_trains_only_albedo_and_light(model, loss_fn):
    truth = _truth(model)
    batch = _batch(loss_fn, truth)
    w = RecNetLossWeights(landmark=0, regularization=0, light_mono=0, coefficients=0, vertices=0)
    off = truth.clone()
    off.angles = off.angles + 0.05
    off.light = off.light * 0.8
    off.albedo = off.albedo + 0.2
    off = _leaf(off)
    loss, _, _ = RecNetLoss(model, w)(
        off, batch, photometric=True, identity=False, image_geometry=False
    )
    loss.backward()
    for name in ("albedo", "light"):
        g = getattr(off, name).grad
        assert g is not None and g.abs().sum() > 0, name
    for name in ("angles", "translation", "identity", "expression"):
        g = getattr(off, name).grad
        assert g is None or g.abs().sum() == 0, name


def test_model_landmarks_slide_the_jaw_onto_the_contour_of_a_turned_face(model, loss_fn):
    c = FaceCoefficients.zeros(model, batch=1)
    c.angles = torch.tensor([[0.0, 0.6, 0.0]])  # head turned ~35 degrees
    K = default_intrinsics(SIZE)
    fixed = loss_fn.landmarks.solver.rows[:68]
    ids = loss_fn.landmarks.vertex_ids(c, K)[0].numpy()
    assert (ids[:17] != fixed[:17]).any()  # some jaw points moved to the silhouette
    assert (ids[17:] == fixed[17:]).all() and ids[8] == fixed[8]
    c.angles.requires_grad_()
    loss_fn.landmarks.project(c, K).sum().backward()
    assert torch.isfinite(c.angles.grad).all() and c.angles.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def face_id():
    from jr2net.models.face_id import load_face_id_net

    return load_face_id_net()


def _photo_crop(images_dir, name: str, size: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    from jr2net.face.landmarks import detect_largest_face
    from jr2net.io.images import load_image
    from jr2net.training.data.sample import crop_image, crop_points, face_crop_box

    img = load_image(images_dir / name)
    lm = detect_largest_face(img).landmarks
    box = face_crop_box(lm)
    crop = torch.from_numpy(crop_image(img, box, size)).permute(2, 0, 1)[None].float() / 255
    return crop, torch.as_tensor(crop_points(lm, box, size))[None]


def test_identity_loss_is_zero_for_the_same_face_and_larger_for_another_person(images_dir, face_id):
    obama, lm = _photo_crop(images_dir, "obama.jpg")
    biden, _ = _photo_crop(images_dir, "biden.jpg")
    same = identity_loss(face_id, obama, obama, lm)
    assert same.item() < 1e-5
    noisy = (obama + 0.03 * torch.randn_like(obama)).clamp(0, 1)
    other = biden.clone().requires_grad_()
    l_other = identity_loss(face_id, other, obama, lm)
    assert l_other > identity_loss(face_id, noisy, obama, lm) + 0.02
    l_other.backward()
    assert torch.isfinite(other.grad).all() and other.grad.abs().sum() > 0


def test_identity_term_gradients_reach_albedo_light_and_shape(model, face_id):
    loss_fn = RecNetLoss(
        model,
        RecNetLossWeights(landmark=0, photometric=0, regularization=0, light_mono=0,
                          coefficients=0, vertices=0),
        face_id=face_id,
    )  # fmt: skip
    truth = _truth(model)
    batch = _batch(loss_fn, truth)
    off = truth.clone()
    off.albedo = off.albedo + 0.5
    off.identity = off.identity - 0.5
    off = _leaf(off)
    loss, terms, _ = loss_fn(off, batch, photometric=False, identity=True)
    assert set(terms) == {"identity"} and terms["identity"] > 0
    loss.backward()
    for name in ("albedo", "light", "identity", "angles"):
        g = getattr(off, name).grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_composite_pastes_the_render_over_the_image_on_the_mask():
    a, b = torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    m = torch.zeros(1, 1, 4, 4)
    m[..., :2, :] = 1
    c = composite(a, b, m)
    assert c[..., :2, :].eq(1).all() and c[..., 2:, :].eq(0).all()
