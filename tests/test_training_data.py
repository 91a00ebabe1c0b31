"""Training data: image/video layouts, folder errors, corrupt files, the split rule, the sample
contract and the synthetic face set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from jr2net.face.camera import default_intrinsics
from jr2net.face.model import FaceModel
from jr2net.face.renderer import FaceRenderer
from jr2net.training.config import ConfigError
from jr2net.training.data import images as img_data
from jr2net.training.data.config import DataConfig, PrepareConfig, SyntheticConfig
from jr2net.training.data.sample import collate, crop_image, crop_points, face_crop_box
from jr2net.training.data.video import detect_video_layout, list_videos, split_of


def _photo(images_dir, dst, name="obama.jpg", side=96):
    im = Image.open(images_dir / name).convert("RGB")
    im.thumbnail((side, side))
    dst.parent.mkdir(parents=True, exist_ok=True)
    im.save(dst)
    return im.size


def _lm68(w, h):
    t = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    return np.stack([w / 2 + w / 4 * np.cos(t), h / 2 + h / 4 * np.sin(t)], 1).astype(np.float32)


# ---- image layouts ------------------------------------------------------------------------------


def test_300w_lp_layout_reads_pt2d_and_strips_the_pose_index(tmp_path, images_dir):
    w, h = _photo(images_dir, tmp_path / "AFW" / "AFW_134212_1_3.jpg")
    lm = _lm68(w, h)
    savemat(tmp_path / "AFW" / "AFW_134212_1_3.mat", {"pt2d": lm.T, "Pose_Para": np.zeros(7)})
    _photo(images_dir, tmp_path / "HELEN" / "HELEN_1_0.jpg", "biden.jpg")
    savemat(tmp_path / "HELEN" / "HELEN_1_0.mat", {"pt2d": lm.T})
    assert img_data.detect_image_layout(tmp_path) == "300w_lp"
    items, bad = img_data.list_images(tmp_path)
    assert [it.identity for it in items] == ["AFW_134212_1", "HELEN_1"] and not bad
    np.testing.assert_allclose(items[0].landmarks, lm, atol=1e-5)
    assert items[0].weight.tolist() == [1.0] * 68


def test_celeba_layout_maps_nose_and_mouth_corners(tmp_path, images_dir):
    _photo(images_dir, tmp_path / "img_align_celeba" / "000001.jpg")
    _photo(images_dir, tmp_path / "img_align_celeba" / "000002.jpg", "biden.jpg")
    (tmp_path / "list_landmarks_align_celeba.txt").write_text(
        "2\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y "
        "rightmouth_x rightmouth_y\n000001.jpg 30 40 60 41 45 55 33 70 58 71\n"
        "000002.jpg 31 40 61 41 46 56 34 70 59 71\n"
    )
    (tmp_path / "identity_CelebA.txt").write_text("000001.jpg 7\n000002.jpg 7\n")
    assert img_data.detect_image_layout(tmp_path) == "celeba"
    items, _ = img_data.list_images(tmp_path)
    assert len(items) == 2 and items[0].identity == items[1].identity == "celeba:7"
    a = items[0]
    assert a.landmarks[30].tolist() == [45, 55] and a.landmarks[48].tolist() == [33, 70]
    assert a.landmarks[54].tolist() == [58, 71]
    assert np.flatnonzero(a.weight).tolist() == [30, 48, 54]


def test_ls3d_layout_reads_mat_labels_and_keeps_t7_images_without_torchfile(tmp_path, images_dir):
    w, h = _photo(images_dir, tmp_path / "300W" / "a.jpg")
    savemat(tmp_path / "300W" / "a.mat", {"pt3d_68": _lm68(w, h)})
    assert img_data.detect_image_layout(tmp_path) == "ls3d"
    items, _ = img_data.list_images(tmp_path)
    np.testing.assert_allclose(items[0].landmarks, _lm68(w, h), atol=1e-5)
    _photo(images_dir, tmp_path / "300VW" / "b.jpg")
    (tmp_path / "300VW" / "b.t7").write_bytes(b"\x00" * 16)
    assert img_data.detect_image_layout(tmp_path) == "ls3d"
    items, _ = img_data.list_images(tmp_path)
    b = next(it for it in items if it.path.name == "b.jpg")
    try:
        import torchfile  # noqa: F401
    except ImportError:
        assert b.landmarks is None  # dlib's detections are used for it in prepare


def test_plain_folder_lists_every_image_recursively(tmp_path, images_dir):
    _photo(images_dir, tmp_path / "x" / "one.png")
    _photo(images_dir, tmp_path / "two.jpg", "biden.jpg")
    assert img_data.detect_image_layout(tmp_path) == "plain"
    items, _ = img_data.list_images(tmp_path)
    assert sorted(it.name for it in items) == ["two", "x/one"]
    assert all(it.landmarks is None for it in items)


def test_missing_and_empty_folders_are_clear_errors(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        img_data.ImageFolder(missing)
    with pytest.raises(FileNotFoundError, match="nope"):
        list_videos(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images in .*empty"):
        img_data.ImageFolder(empty)
    with pytest.raises(ValueError, match="no videos in .*empty"):
        list_videos(empty)


def test_corrupt_image_is_skipped_and_counted(tmp_path, images_dir):
    _photo(images_dir, tmp_path / "good.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _photo(images_dir, tmp_path / "good2.png", "biden.jpg")
    folder = img_data.ImageFolder(tmp_path)
    got = [item.name for item, image in folder]
    assert got == ["good", "good2"]
    assert folder.n_corrupt == 1 and folder.corrupt[0].endswith("bad.jpg")


def test_annotations_follow_a_downscaled_load(tmp_path, images_dir):
    w, h = _photo(images_dir, tmp_path / "AFW" / "AFW_1_0.jpg", side=200)
    lm = _lm68(w, h)
    savemat(tmp_path / "AFW" / "AFW_1_0.mat", {"pt2d": lm.T})
    item, image = next(iter(img_data.ImageFolder(tmp_path, max_side=100)))
    s = max(image.shape[:2]) / max(w, h)
    assert s < 0.6
    np.testing.assert_allclose(item.landmarks, (lm + 0.5) * s - 0.5, atol=1e-4)


# ---- videos and the split ---------------------------------------------------------------------


def test_split_rule_holds_out_identities_and_each_videos_tail():
    held = ["d20"]
    assert split_of("d20", 0, 100, held) == "heldout"
    assert [split_of("d0", i, 10, held, 0.2) for i in range(10)] == ["train"] * 8 + ["heldout"] * 2
    assert split_of("d0", 79, 100, held, 0.2) == "train"
    assert split_of("d0", 80, 100, held, 0.2) == "heldout"
    assert split_of("photo", 0, 1, held, 0.0) == "train"
    with pytest.raises(ValueError, match="frame_index"):
        split_of("d0", 10, 10, held)


def test_video_layouts_plain_and_voxceleb2(tmp_path, videos_dir):
    plain = tmp_path / "plain"
    (plain / "talks").mkdir(parents=True)
    (plain / "talks" / "a.mp4").symlink_to(videos_dir / "d0.mp4")
    (plain / "b.mp4").symlink_to(videos_dir / "d11.mp4")
    assert detect_video_layout(plain) == "plain"
    items = list_videos(plain)
    assert [(v.name, v.identity) for v in items] == [("b", "b"), ("talks/a", "talks/a")]
    vox = tmp_path / "vox"
    (vox / "id00012" / "abc").mkdir(parents=True)
    (vox / "id00012" / "abc" / "00001.mp4").symlink_to(videos_dir / "d0.mp4")
    (vox / "id00012" / "xyz").mkdir(parents=True)
    (vox / "id00012" / "xyz" / "00002.mp4").symlink_to(videos_dir / "d11.mp4")
    assert detect_video_layout(vox) == "voxceleb2"
    items = list_videos(vox)
    assert {v.identity for v in items} == {"id00012"}
    assert items[0].name == "id00012/abc/00001" and items[0].frame_count() == 78
    frames = list(items[0].frames(max_frames=3))
    assert [i for i, _ in frames] == [0, 1, 2] and frames[0][1].shape == (512, 512, 3)


def test_voxceleb2_extracted_frames(tmp_path, images_dir):
    clip = tmp_path / "id1" / "vid" / "00001"
    for k in range(3):
        _photo(images_dir, clip / f"{k:05d}.jpg")
    assert detect_video_layout(tmp_path) == "voxceleb2"
    (item,) = list_videos(tmp_path)
    assert item.kind == "frames" and item.identity == "id1" and item.frame_count() == 3
    assert len(list(item.frames())) == 3


# ---- config, crops, collate -------------------------------------------------------------------


def test_config_unknown_key_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="data.synthetic.sizee"):
        DataConfig.from_dict({"synthetic": {"sizee": 3}})
    with pytest.raises(ConfigError, match="prepare.stride"):
        PrepareConfig.from_dict({"stride": 3})
    assert DataConfig.from_dict({"crop_size": 64}).crop_size == 64
    with pytest.raises(ValueError, match="p_track"):
        SyntheticConfig(p_track=1.5)


def test_crop_image_and_crop_points_agree():
    img = np.zeros((200, 300, 3), np.uint8)
    img[118:123, 208:213] = 255  # a 5x5 spot centred on pixel (x=210, y=120)
    box = (150.0, 80.0, 250.0, 180.0)
    crop = crop_image(img, box, 64).astype(np.float64)[..., 0]
    ys, xs = np.mgrid[:64, :64]
    centroid = np.array([(crop * xs).sum(), (crop * ys).sum()]) / crop.sum()
    np.testing.assert_allclose(centroid, crop_points(np.array([[210.0, 120.0]]), box, 64)[0], atol=0.05)
    # A box leaving the image is padded black, not an error.
    out = crop_image(img, (-50.0, -50.0, 50.0, 50.0), 32)
    assert out.shape == (32, 32, 3) and out[:10, :10].max() == 0


def test_collate_stacks_tensors_dicts_and_strings():
    s = {"a": torch.zeros(2, 3), "c": {"x": torch.ones(4)}, "name": "n"}
    b = collate([s, s])
    assert b["a"].shape == (2, 2, 3) and b["c"]["x"].shape == (2, 4) and b["name"] == ["n", "n"]
    with pytest.raises(ValueError, match="'a' has different shapes"):
        collate([s, {**s, "a": torch.zeros(3)}])


# ---- synthetic --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ict(ict_model_path):
    return FaceModel.from_npz(ict_model_path)


@pytest.fixture(scope="module")
def synthetic_set(ict):
    from jr2net.training.data.synthetic import SyntheticFaces

    cfg = SyntheticConfig(size=6, heldout_size=2, p_large=0.5)
    return SyntheticFaces(cfg, ict, 96)


def test_synthetic_samples_are_deterministic(ict, synthetic_set):
    from jr2net.training.data.synthetic import SyntheticFaces

    a = synthetic_set[3]
    b = SyntheticFaces(synthetic_set.cfg, ict, 96)[3]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["landmarks"], b["landmarks"])
    assert not torch.equal(a["image"], synthetic_set[4]["image"])
    held = SyntheticFaces(synthetic_set.cfg, ict, 96, "heldout")
    assert len(held) == 2 and not torch.equal(held[3 % 2]["image"], synthetic_set[1]["image"])


def test_synthetic_sample_contract_and_landmarks_on_the_face(ict, synthetic_set):
    from jr2net.face.coeffs import FaceCoefficients

    batch = collate([synthetic_set[i] for i in range(4)])
    S = 96
    assert batch["image"].shape == (4, 3, S, S) and batch["image"].dtype == torch.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["mask"].shape == (4, 1, S, S) and set(batch["mask"].unique().tolist()) <= {0, 1}
    assert batch["K"].shape == (4, 3, 3) and batch["landmarks"].shape == (4, 68, 2)
    assert batch["has_gt"].tolist() == [1.0] * 4
    c = batch["coeffs"]
    assert c["identity"].shape == (4, ict.n_identity) and c["light"].shape == (4, 9, 3)
    # The ground truth rendered under the crop K puts the landmark vertices (17-67; the jaw is
    # on the silhouette) exactly on the sample's landmarks, and brows + nose on the face mask.
    out = FaceRenderer(ict).render(FaceCoefficients(**c), batch["K"], (S, S))
    torch.testing.assert_close(out.landmarks2d[:, 17:], batch["landmarks"][:, 17:], atol=1e-3, rtol=0)
    lm = batch["landmarks"][:, 17:36].round().long()
    on_mask = batch["mask"][torch.arange(4)[:, None], 0, lm[..., 1], lm[..., 0]]
    assert on_mask.mean() > 0.9
    # The landmarks fill the crop as face_crop_box frames them.
    span = batch["landmarks"].amax(1) - batch["landmarks"].amin(1)
    assert ((span.amax(1) > 0.4 * S) & (span.amax(1) < S)).all()


def test_large_expression_prior_is_sparse_extreme_and_has_both_symmetries(ict):
    from jr2net.face.synthetic import _side_pairs, large_expression

    names = ict.expression_names
    pairs, _ = _side_pairs(names)
    rng = np.random.default_rng(0)
    sym = asym = 0
    for _ in range(200):
        b = large_expression(names, rng)
        on = b > 0
        assert 1 <= on.sum() <= 7 and b.max() >= 0.5 and b.max() <= 1.0
        for left, right in pairs:
            if b[left] > 0 and b[left] == b[right]:
                sym += 1
            elif abs(b[left] - b[right]) > 0.4:
                asym += 1
    assert sym > 30 and asym > 30


def test_unwrapped_texture_recovers_a_rendered_albedo(ict):
    from jr2net.face import synthetic as syn

    painted = syn.render_model(ict)
    rng = np.random.default_rng(3)
    c = syn.random_coeffs(ict, rng, yaw_max_deg=10.0)
    c.albedo = torch.zeros_like(c.albedo)
    K = default_intrinsics((256, 256))
    out = FaceRenderer(painted).render(c, K, (256, 256))
    image = (out.image[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    lm = out.landmarks2d[0].numpy()
    tex, conf = syn.unwrap_texture(painted, image, c, K, lm)
    truth = painted.albedo.mean.numpy()
    good = conf > 0.5
    assert good.sum() > 2000
    err = np.abs(tex[good] - truth[good]).mean()
    assert err < 0.03, err
    # Low-confidence vertices fall back to the fitted albedo (here the painted mean).
    assert np.abs(tex[conf == 0] - truth[conf == 0]).max() < 1e-5


def test_face_crop_box_is_square_around_the_landmarks():
    lm = np.stack([np.linspace(100, 200, 68), np.linspace(50, 120, 68)], 1)
    x0, y0, x1, y1 = face_crop_box(lm)
    assert x1 - x0 == pytest.approx(y1 - y0) and x0 < 100 and x1 > 200


def test_photo_texture_selection_keeps_painted_eyes(ict):
    from jr2net.face import synthetic as syn

    tex = np.full((1, ict.n_vertices, 3), 0.5, np.float32)
    m = syn.render_model(ict, tex)
    colors = m.albedo.colors(syn.render_albedo(torch.zeros(1, ict.n_albedo), 1, 0))[0].numpy()
    region = ict.region.numpy()
    face = region == ict.region_names.index("face")
    eyes = region == ict.region_names.index("eyeball_left")
    np.testing.assert_allclose(colors[face], 0.5, atol=1e-6)
    np.testing.assert_allclose(colors[eyes], syn.painted_albedo(ict)[eyes], atol=1e-6)
    # Without a texture the model's own coefficients apply.
    plain = m.albedo.colors(syn.render_albedo(torch.zeros(1, ict.n_albedo), 1, None))[0].numpy()
    np.testing.assert_allclose(plain, syn.painted_albedo(ict), atol=1e-6)
