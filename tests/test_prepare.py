"""The prepare stage on a small real subset, the datasets over its cache, and frame pairs."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from jr2net.face.coeffs import FaceCoefficients
from jr2net.face.model import FaceModel
from jr2net.face.renderer import FaceRenderer
from jr2net.training.data.config import DataConfig, PrepareConfig
from jr2net.training.data.pairs import FramePairs
from jr2net.training.data.prepared import PreparedFaces, expression_bank, photo_textures
from jr2net.training.data.sample import collate
from jr2net.training.stages.prepare import run_prepare

# d0: frames 0-39, every 4th kept -> 10 kept; the tail (last 20 %) starts at frame 32.
PREP = PrepareConfig(video_stride=4, max_frames=40)


@pytest.fixture(scope="module")
def ict(ict_model_path):
    return FaceModel.from_npz(ict_model_path)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, images_dir, ict):
    root = tmp_path_factory.mktemp("prep")
    photos = root / "photos"
    photos.mkdir()
    im = Image.open(images_dir / "s42.jpg").convert("RGB")
    im.thumbnail((320, 320))
    im.save(photos / "s42_small.jpg")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    cfg = DataConfig(
        shared_videos=["d0"],
        shared_photos=["obama", "biden", "s31"],  # s31: a dog, no human face
        image_dirs=[str(photos)],
    )
    out = root / "run" / "prepare"
    t0 = time.perf_counter()
    summary = run_prepare(cfg, out, progress=False, prepare=PREP, model=ict)
    first = time.perf_counter() - t0
    return cfg, out, summary, first


def test_prepare_writes_the_cache_and_counts_no_face_and_corrupt(prepared):
    _, out, s, _ = prepared
    assert (out / "index.json").is_file() and (out / "summary.json").is_file()
    assert json.loads((out / "summary.json").read_text())["faces"] == s["faces"]
    per = s["per_source"]
    assert per["shared-video-d0"] == {
        "seen": 10, "faces": 10, "no_face": 0, "corrupt": 0, "rejected": 0
    }  # fmt: skip
    assert per["shared-photos"]["faces"] == 2 and per["shared-photos"]["no_face"] == 1
    (img_shard,) = [k for k in per if k.startswith("images-photos")]
    assert per[img_shard]["corrupt"] == 1 and per[img_shard]["faces"] == 1
    assert s["corrupt"] == 1 and s["no_face"] == 1 and s["faces"] == 13
    index = json.loads((out / "index.json").read_text())
    assert {sh["name"] for sh in index["shards"]} == set(per)
    crops = np.load(out / "shards" / "shared-video-d0" / "crops.npy", mmap_mode="r")
    assert crops.shape == (10, 256, 256, 3) and crops.dtype == np.uint8
    labels = np.load(out / "shards" / "shared-video-d0" / "labels.npz")
    assert labels["frame_index"].tolist() == list(range(0, 40, 4))
    assert labels["split"].tolist() == ["train"] * 8 + ["heldout"] * 2
    assert labels["source_fit"].tolist() == [True] + [False] * 9
    assert (labels["residual_iod"] < 0.05).all()


def test_second_prepare_reuses_the_cache(prepared, ict):
    cfg, out, s1, first = prepared
    before = (out / "shards" / "shared-video-d0" / "meta.json").stat().st_mtime_ns
    t0 = time.perf_counter()
    s2 = run_prepare(cfg, out, progress=False, prepare=PREP, model=ict)
    second = time.perf_counter() - t0
    assert s2["reused_shards"] == s2["sources"] == 3
    assert s2["faces"] == s1["faces"]
    assert (out / "shards" / "shared-video-d0" / "meta.json").stat().st_mtime_ns == before
    assert second < 0.2 * first, (second, first)


def test_missing_or_empty_dataset_folder_fails_before_any_work(tmp_path, ict):
    cfg = DataConfig(shared_videos=[], shared_photos=[], image_dirs=[str(tmp_path / "absent")])
    with pytest.raises(FileNotFoundError, match="absent"):
        run_prepare(cfg, tmp_path / "out", progress=False, prepare=PREP, model=ict)
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty").mkdir()
    cfg = DataConfig(shared_videos=[], shared_photos=[], video_dirs=[str(tmp_path / "empty")])
    with pytest.raises(ValueError, match="no videos in .*empty"):
        run_prepare(cfg, tmp_path / "out", progress=False, prepare=PREP, model=ict)


def test_corrupt_video_is_counted_not_raised(tmp_path, ict):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a real movie")
    cfg = DataConfig(shared_videos=[], shared_photos=[], video_dirs=[str(videos)])
    s = run_prepare(cfg, tmp_path / "out", progress=False, prepare=PREP, model=ict)
    assert s["corrupt"] == 1 and s["faces"] == 0 and s["sources"] == 1


def test_prepared_samples_follow_the_contract_and_the_crop_camera(prepared, ict):
    _, out, _, _ = prepared
    train = PreparedFaces(out, "train", 128)
    held = PreparedFaces(out, "heldout", 128)
    assert len(train) == 8 + 2 + 1 and len(held) == 2
    b = collate([train[i] for i in range(len(train))])
    assert b["image"].shape == (11, 3, 128, 128) and b["mask"].shape == (11, 1, 128, 128)
    assert b["has_gt"].sum() == 0 and set(b["identity"]) == {"d0", "obama", "biden", "s42_small"}
    assert b["coeffs"]["identity"].shape == (11, ict.n_identity)
    # The pseudo-label rendered under the crop K lands on the detected landmarks (fit residual).
    c = FaceCoefficients(**b["coeffs"])
    lm = FaceRenderer(ict).render(c, b["K"], (128, 128)).landmarks2d
    err = (lm[:, 17:] - b["landmarks"][:, 17:]).norm(dim=-1).mean(1)
    iod = (b["landmarks"][:, 45] - b["landmarks"][:, 36]).norm(dim=-1)
    assert (err / iod < 0.08).all(), err / iod
    assert 0.1 < b["mask"].mean() < 0.7


def test_frame_pairs_share_identity_and_never_cross_the_split(prepared):
    _, out, _, _ = prepared
    for split, n in (("train", 8), ("heldout", 2)):
        pairs = FramePairs(out, split, 64, seed=1)
        assert len(pairs) == n  # photos never pair; d0 has n frames in the split
        frames = set()
        for i in range(len(pairs)):
            ident, src, drv = pairs.pair_rows(i)
            assert ident == "d0" and src != drv
            for s, j in (src, drv):
                assert pairs.shards[s].labels["split"][j] == split
            frames.add(drv)
        assert len(frames) == n  # every frame is a driving frame once
    item = FramePairs(out, "train", 64)[0]
    assert item["source"]["image"].shape == (3, 64, 64) and item["driving"]["K"].shape == (3, 3)
    assert item["source"]["identity"] == item["driving"]["identity"] == item["identity"]
    assert FramePairs(out, "train", 64, seed=1).pair_rows(3) == FramePairs(out, "train", 64, seed=1).pair_rows(3)


def test_cache_feeds_the_synthetic_set(prepared, ict):
    from jr2net.training.data.config import SyntheticConfig
    from jr2net.training.data.synthetic import SyntheticFaces

    _, out, _, _ = prepared
    bank = expression_bank(out)
    assert bank.shape == (8, ict.n_expression)
    tex = photo_textures(out, ict, max_textures=2)
    assert tex.shape == (2, ict.n_vertices, 3) and 0 <= tex.min() and tex.max() <= 1
    cfg = SyntheticConfig(size=4, p_track=0.5, p_texture=1.0)
    ds = SyntheticFaces(cfg, ict, 64, textures=tex, expression_bank=bank)
    s = ds[0]
    assert s["image"].shape == (3, 64, 64) and torch.isfinite(s["coeffs"]["albedo"]).all()
