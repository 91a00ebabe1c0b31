"""The PyTorch port of dlib's face-recognition ResNet against dlib itself, on the shared photos."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from jr2net.face.landmarks import detect_faces
from jr2net.io.images import load_image
from jr2net.models.dlib_dat import DlibDatError, read_dnn
from jr2net.models.face_id import (
    FaceIdNet,
    align_face_chips,
    convert_face_id_weights,
    dat_path,
    dnn_structure,
    load_face_id_net,
    weights_path,
)

dlib = pytest.importorskip("dlib")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A fresh user cache holding weights converted from the real .dat."""
    root = tmp_path_factory.mktemp("jr2net_cache")
    old = os.environ.get("JR2NET_CACHE")
    os.environ["JR2NET_CACHE"] = str(root)
    convert_face_id_weights()
    yield root
    if old is None:
        os.environ.pop("JR2NET_CACHE", None)
    else:
        os.environ["JR2NET_CACHE"] = old


@pytest.fixture(scope="module")
def net(cache) -> FaceIdNet:
    torch.set_num_threads(1)
    return load_face_id_net()


@pytest.fixture(scope="module")
def rec():
    """dlib's own face-recognition model, from the same .dat."""
    return dlib.face_recognition_model_v1(str(dat_path()))


@pytest.fixture(scope="module")
def faces(images_dir) -> dict[str, tuple[np.ndarray, object]]:
    """Every shared photo with a face: (RGB image, its largest dlib full_object_detection)."""
    out = {}
    for path in sorted(images_dir.iterdir()):
        img = load_image(path)
        dets = detect_faces(img)
        if not dets:
            continue
        d = dets[0]
        parts = [dlib.point(int(round(x)), int(round(y))) for x, y in d.landmarks]
        box = dlib.rectangle(*[int(round(v)) for v in d.box])
        out[path.name] = (img, dlib.full_object_detection(box, parts))
    assert len(out) >= 10, sorted(out)
    return out


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0


def _landmarks(shape) -> torch.Tensor:
    return torch.tensor([[p.x, p.y] for p in shape.parts()], dtype=torch.float32)[None]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_descriptors_match_dlib_on_the_same_chips(net, faces, rec):
    names = sorted(faces)
    chips = [dlib.get_face_chip(faces[n][0], faces[n][1], size=150, padding=0.25) for n in names]
    with torch.no_grad():
        ours = net(torch.cat([_tensor(c) for c in chips])).numpy()
    worst_cos, worst_abs = 1.0, 0.0
    for name, chip, desc in zip(names, chips, ours, strict=True):
        ref = np.asarray(rec.compute_face_descriptor(chip))
        cos, err = _cos(desc, ref), float(np.abs(desc - ref).max())
        assert cos >= 0.999 and err < 1e-4, (name, cos, err)
        worst_cos, worst_abs = min(worst_cos, cos), max(worst_abs, err)
    print(f"{len(names)} faces: min cosine {worst_cos:.7f}, max abs difference {worst_abs:.2e}")


def test_descriptors_are_not_normalised(net, faces, rec):
    img, shape = faces["obama.jpg"]
    chip = dlib.get_face_chip(img, shape)
    with torch.no_grad():
        norm = float(net(_tensor(chip)).norm())
    ref = float(np.linalg.norm(np.asarray(rec.compute_face_descriptor(chip))))
    assert abs(norm - ref) < 1e-4 and abs(norm - 1.0) > 0.05


def _assert_like_dlib_chip(ours: torch.Tensor, ref: np.ndarray, name: str) -> None:
    """Grey levels (0-255) of our chip [1,3,S,S] vs dlib's uint8 chip, 8 px border left out."""
    diff = np.abs(ours[0].permute(1, 2, 0).numpy() * 255 - ref)[8:-8, 8:-8]
    assert diff.mean() < 1.5 and np.percentile(diff, 99) < 6.0, (name, diff.mean())


def test_align_face_chips_matches_dlib_get_face_chip(faces):
    # dlib truncates to uint8 (its chips and each pyramid level, ~0.5 grey level darker each),
    # and anchors its pyramid at its own crop box, so a few edge pixels differ more.
    for name, (img, shape) in sorted(faces.items()):
        ref = dlib.get_face_chip(img, shape, size=150, padding=0.25).astype(np.float64)
        _assert_like_dlib_chip(align_face_chips(_tensor(img), _landmarks(shape)), ref, name)


def test_align_face_chips_other_size_and_padding(faces):
    img, shape = faces["obama.jpg"]
    ref = dlib.get_face_chip(img, shape, size=112, padding=0.4).astype(np.float64)
    ours = align_face_chips(_tensor(img), _landmarks(shape), size=112, padding=0.4)
    assert ours.shape == (1, 3, 112, 112)
    _assert_like_dlib_chip(ours, ref, "obama.jpg")


def test_align_face_chips_five_point_template(faces):
    from jr2net.face.landmarks import models_dir

    predictor = dlib.shape_predictor(str(models_dir() / "shape_predictor_5_face_landmarks.dat"))
    for name in ("obama.jpg", "d9.jpg"):
        img, shape68 = faces[name]
        shape5 = predictor(img, shape68.rect)
        ref = dlib.get_face_chip(img, shape5, size=150, padding=0.25).astype(np.float64)
        ours = align_face_chips(_tensor(img), _landmarks(shape5))
        _assert_like_dlib_chip(ours, ref, name)


def test_own_alignment_gives_dlib_pipeline_descriptors(net, faces, rec):
    for name in ("obama.jpg", "biden.jpg", "s12.jpg"):
        img, shape = faces[name]
        ref = np.asarray(rec.compute_face_descriptor(img, shape))
        with torch.no_grad():
            ours = net(align_face_chips(_tensor(img), _landmarks(shape)))[0].numpy()
        assert _cos(ours, ref) > 0.999, name


def test_gradients_reach_chips_and_images(net, faces):
    img, shape = faces["s12.jpg"]
    image = _tensor(img).requires_grad_(True)
    chips = align_face_chips(image, _landmarks(shape))
    chips.retain_grad()
    target = torch.randn(1, 128)
    loss = (net(chips) - target).pow(2).sum() + sum(f.mean() for f in net.features(chips))
    loss.backward()
    for g in (chips.grad, image.grad):
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())


def test_features_shapes(net):
    feats = net.features(torch.rand(2, 3, 150, 150))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (32, 35, 35), (32, 35, 35), (64, 17, 17), (128, 8, 8), (256, 4, 4), (256, 2, 2)
    ]  # fmt: skip


def test_identity_distance_same_person_smaller(net, faces, rec):
    names = ("obama.jpg", "obama_partial_face.jpg", "biden.jpg")
    ref = [np.asarray(rec.compute_face_descriptor(faces[n][0], faces[n][1])) for n in names]
    with torch.no_grad():
        ours = [
            net(align_face_chips(_tensor(faces[n][0]), _landmarks(faces[n][1])))[0].numpy()
            for n in names
        ]
    for d in (ref, ours):  # it holds for dlib, and must for the port
        same = np.linalg.norm(d[0] - d[1])
        assert same < 0.6 < min(np.linalg.norm(d[0] - d[2]), np.linalg.norm(d[1] - d[2]))


def test_load_converts_into_an_empty_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JR2NET_CACHE", str(tmp_path))
    net = load_face_id_net()
    assert weights_path() == tmp_path / "models" / "face_id_resnet.pt" and weights_path().is_file()
    assert "converting" in capsys.readouterr().err
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    load_face_id_net()
    assert capsys.readouterr().err == ""


def test_corrupt_cache_file_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("JR2NET_CACHE", str(tmp_path))
    weights_path().parent.mkdir(parents=True)
    weights_path().write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read face-id weights"):
        load_face_id_net()


def test_truncated_dat_gives_clear_error(tmp_path):
    data = dat_path().read_bytes()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DlibDatError, match="truncated"):
        read_dnn(cut, dnn_structure())


def test_corrupt_dat_gives_clear_error(tmp_path):
    data = bytearray(dat_path().read_bytes())
    data[4:17] = b"loss_hinge_22"  # another loss layer name, same length
    bad = tmp_path / "bad.dat"
    bad.write_bytes(bytes(data))
    with pytest.raises(DlibDatError, match="unsupported loss layer"):
        convert_face_id_weights(bad, tmp_path / "out.pt")
    with pytest.raises(DlibDatError, match="where the network has"):
        read_dnn(dat_path(), ["relu"] + dnn_structure()[1:])  # wrong layer type
    with pytest.raises(FileNotFoundError):
        read_dnn(tmp_path / "missing.dat", dnn_structure())


def test_bad_inputs_are_rejected(net):
    with pytest.raises(TypeError):
        net(np.zeros((1, 3, 150, 150), np.float32))
    with pytest.raises(ValueError, match="shape"):
        net(torch.zeros(1, 150, 150, 3))
    with pytest.raises(ValueError, match=">= 103"):
        net.features(torch.zeros(1, 3, 102, 102))
    with pytest.raises(ValueError, match="landmarks68"):
        align_face_chips(torch.zeros(2, 3, 64, 64), torch.zeros(2, 67, 2))


def test_assets_face_id_command(tmp_path, capsys):
    from jr2net.cli import main

    out = tmp_path / "fid.pt"
    assert main(["assets", "face-id", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert str(out) in text and "60 tensors" in text and "sha256" in text
    assert torch.load(out, weights_only=True)["format"] == "jr2net.face_id/1"
    _, _, sha = convert_face_id_weights(out=tmp_path / "again.pt")
    assert f"sha256 {sha}" in text  # the conversion is reproducible byte for byte
