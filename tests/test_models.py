"""Backbones (torchvision layout), RecNet, ETNet and RecAugNet."""

from __future__ import annotations

import pytest
import torch

from jr2net.face.camera import (
    crop_intrinsics,
    default_intrinsics,
    intrinsics,
    model_to_camera,
    project,
)
from jr2net.face.coeffs import neutral_light
from jr2net.face.model import load_face_model
from jr2net.models.etnet import ETNet, RecAugNet
from jr2net.models.recnet import (
    CROP_SCALE,
    CROP_SHIFT,
    HEADS,
    RecNet,
    face_crop_box,
    solve_default_translation,
    to_canonical_camera,
    to_image_camera,
    unit_interval,
)
from jr2net.models.resnet import ResNet, load_torchvision_weights, resnet
from jr2net.models.vgg import VGG19, VGG_LAYERS

# ---- torchvision's architectures, written out independently of jr2net.models -------------------


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.weight": (c,),
        f"{prefix}.bias": (c,),
        f"{prefix}.running_mean": (c,),
        f"{prefix}.running_var": (c,),
        f"{prefix}.num_batches_tracked": (),
    }


def torchvision_resnet_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape of torchvision.models.<name>() (torchvision 0.x, v1.5 ResNets)."""
    blocks = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3], "resnet50": [3, 4, 6, 3]}[name]
    bottleneck = name == "resnet50"
    exp = 4 if bottleneck else 1
    out = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    cin = 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks, strict=True), start=1):
        for b in range(n):
            p = f"layer{stage}.{b}"
            if bottleneck:
                out[f"{p}.conv1.weight"] = (planes, cin, 1, 1)
                out.update(_bn(f"{p}.bn1", planes))
                out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                out.update(_bn(f"{p}.bn2", planes))
                out[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
                out.update(_bn(f"{p}.bn3", planes * 4))
            else:
                out[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
                out.update(_bn(f"{p}.bn1", planes))
                out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                out.update(_bn(f"{p}.bn2", planes))
            if b == 0 and (stage > 1 or cin != planes * exp):
                out[f"{p}.downsample.0.weight"] = (planes * exp, cin, 1, 1)
                out.update(_bn(f"{p}.downsample.1", planes * exp))
            cin = planes * exp
    out["fc.weight"] = (1000, 512 * exp)
    out["fc.bias"] = (1000,)
    return out


def torchvision_vgg19_shapes() -> dict[str, tuple[int, ...]]:
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
           512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]  # fmt: skip
    out: dict[str, tuple[int, ...]] = {}
    idx, cin = 0, 3
    for v in cfg:
        if v == "M":
            idx += 1
            continue
        out[f"features.{idx}.weight"] = (v, cin, 3, 3)
        out[f"features.{idx}.bias"] = (v,)
        idx, cin = idx + 2, v
    for i, (o, n) in {0: (4096, 25088), 3: (4096, 4096), 6: (1000, 4096)}.items():
        out[f"classifier.{i}.weight"] = (o, n)
        out[f"classifier.{i}.bias"] = (o,)
    return out


PARAM_COUNTS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_resnet_matches_torchvision_keys_shapes_and_parameter_count(name: str) -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        net = ResNet(name, num_classes=1000)
    assert _shapes(net) == torchvision_resnet_shapes(name)
    assert sum(p.numel() for p in net.parameters()) == PARAM_COUNTS[name]


def test_vgg19_matches_torchvision_keys_shapes_and_parameter_count() -> None:
    with torch.device("meta"):
        net = VGG19()
    assert _shapes(net) == torchvision_vgg19_shapes()
    assert sum(p.numel() for p in net.parameters()) == 143_667_240


def test_torchvision_state_dict_round_trips_strictly_and_a_feature_extractor_drops_fc(tmp_path):
    src = ResNet("resnet18", num_classes=1000)
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    full = load_torchvision_weights(ResNet("resnet18", num_classes=1000), path)
    for k, v in src.state_dict().items():
        assert torch.equal(full.state_dict()[k], v), k
    feats = load_torchvision_weights(resnet("resnet18"), path)
    assert "fc.weight" not in feats.state_dict()
    assert torch.equal(feats.conv1.weight, src.conv1.weight)
    x = torch.rand(1, 3, 64, 64)
    full.eval(), feats.eval()
    assert torch.allclose(full.fc(feats(x)), full(x), atol=1e-5)


def test_a_mismatched_state_dict_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "r34.pth"
    torch.save(ResNet("resnet34", width=0.25, num_classes=10).state_dict(), path)
    with pytest.raises(ValueError, match=r"unexpected keys \(e.g. \['layer1.2"):
        load_torchvision_weights(ResNet("resnet18", width=0.25, num_classes=10), path)
    with pytest.raises(ValueError, match=r"missing keys \(e.g. \['layer1.0.bn3"):
        load_torchvision_weights(ResNet("resnet50", width=0.25, num_classes=10), path)
    torch.save(ResNet("resnet18", width=0.125, num_classes=10).state_dict(), path)
    with pytest.raises(ValueError, match=r"shape mismatches.*conv1.weight"):
        load_torchvision_weights(ResNet("resnet18", width=0.25, num_classes=10), path)
    torch.save({"conv1.weight": "not a tensor"}, path)
    with pytest.raises(ValueError, match="state dict of tensors"):
        load_torchvision_weights(ResNet("resnet18", width=0.25, num_classes=10), path)
    with pytest.raises(FileNotFoundError):
        load_torchvision_weights(resnet("resnet18"), tmp_path / "nope.pth")


def test_vgg_features_at_returns_the_pix2pixhd_relu_layers_and_loads_without_classifier(tmp_path):
    src = VGG19(classifier=False)
    state = dict(src.state_dict())
    # A torchvision file also holds the classifier (stand-in tensors: a feature-only VGG drops them).
    state.update({"classifier.0.weight": torch.zeros(2, 2), "classifier.6.bias": torch.zeros(2)})
    path = tmp_path / "vgg.pth"
    torch.save(state, path)
    feats_only = load_torchvision_weights(VGG19(classifier=False), path)
    x = torch.rand(1, 3, 64, 64)
    outs = feats_only.features_at(x)
    assert [o.shape[1] for o in outs] == [64, 128, 256, 512, 512]
    assert [o.shape[-1] for o in outs] == [64, 32, 16, 8, 4]
    assert all((o >= 0).all() for o in outs)  # after ReLU
    ref = src.features_at(x, ["relu3_1"])[0]
    assert torch.allclose(ref, outs[2], atol=1e-5)
    # features.11 is relu3_1: the conv before it, ReLU-ed, on the torchvision-normalised input.
    y = (x - feats_only.mean) / feats_only.std
    assert torch.allclose(feats_only.features[:12](y), outs[2], atol=1e-5)
    assert set(VGG_LAYERS) >= {"relu1_1", "relu5_1"}
    with pytest.raises(ValueError, match="unknown VGG layer"):
        src.features_at(x, ["relu9_9"])
    with pytest.raises(RuntimeError, match="classifier=False"):
        src(y)


def test_resnet_width_multiplier_scales_channels_and_rejects_bad_names() -> None:
    net = resnet("resnet18", width=0.25)
    assert net.out_channels == 128 and net.fc is None
    assert net(torch.rand(2, 3, 64, 64)).shape == (2, 128)
    assert resnet("resnet50").out_channels == 2048
    with pytest.raises(ValueError, match="unknown ResNet"):
        resnet("resnet101")


# ---- RecNet -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def face_model():
    return load_face_model("generic")


@pytest.fixture(scope="module")
def recnet(face_model):
    torch.manual_seed(0)
    return RecNet.from_face_model(face_model, backbone="resnet18", crop_size=128, width=0.25,
                                  n_identity=20, n_albedo=12)  # fmt: skip


def _landmarks(face_model, coeffs, K):
    verts = face_model.shape(coeffs.identity, coeffs.expression)
    cam = model_to_camera(verts[:, face_model.landmarks68], coeffs.angles, coeffs.translation)
    return project(cam, K)


def test_untrained_recnet_predicts_the_mean_face_framed_like_the_canonical_crop(face_model, recnet):
    c = recnet(torch.rand(3, 3, 128, 128))
    assert c.identity.shape == (3, 20) and c.albedo.shape == (3, 12)
    assert c.expression.shape == (3, face_model.n_expression)
    for t in (c.identity, c.expression, c.albedo, c.angles):
        assert torch.count_nonzero(t) == 0
    assert torch.allclose(c.light, neutral_light(3))
    lm = _landmarks(face_model, c, recnet.K_canon[None])
    assert (lm > 0).all() and (lm < 127).all()
    box = face_crop_box(lm)
    assert torch.allclose(box, torch.tensor([0.0, 0.0, 128.0, 128.0]).expand(3, 4), atol=0.05)
    # Independently of face_crop_box: centred (pixel centres 0..127), scaled, shifted down.
    lo, hi = lm[0].detach().min(0).values, lm[0].detach().max(0).values
    assert float((lo[0] + hi[0]) / 2) == pytest.approx(63.5, abs=0.05)
    assert float((hi - lo).max()) == pytest.approx(128 / CROP_SCALE, abs=0.05)
    assert float((lo[1] + hi[1]) / 2) == pytest.approx(
        63.5 + CROP_SHIFT * float(hi[1] - lo[1]), abs=0.05
    )


def test_default_translation_frames_the_ict_mean_face_at_any_crop_size(ict_model_path) -> None:
    from jr2net.face.model import FaceModel

    model = FaceModel.from_npz(ict_model_path)
    t = solve_default_translation(model, 224)
    assert torch.allclose(t, solve_default_translation(model, 128), atol=1e-3)
    lm = model.vertices[model.landmarks68][None]
    for size in (128, 224):
        pix = project(model_to_camera(lm, torch.zeros(1, 3), t[None]), default_intrinsics(size))
        box = face_crop_box(pix)
        assert torch.allclose(box, torch.tensor([[0.0, 0.0, size, size]]), atol=1e-3 * size)


def test_face_crop_box_frames_the_landmarks_with_margin_and_accepts_numpy() -> None:
    torch.manual_seed(1)
    lm = torch.rand(68, 2) * torch.tensor([80.0, 100.0]) + torch.tensor([200.0, 150.0])
    x0, y0, x1, y1 = face_crop_box(lm.numpy())
    assert x1 - x0 == pytest.approx(y1 - y0)
    assert x0 < float(lm[:, 0].min()) - 10 and x1 > float(lm[:, 0].max()) + 10
    assert y0 < float(lm[:, 1].min()) - 10 and y1 > float(lm[:, 1].max())
    with pytest.raises(ValueError, match="68,2"):
        face_crop_box(lm[:10])


def test_gradients_reach_the_backbone_from_every_head():
    images = torch.rand(2, 3, 64, 64)
    for name in HEADS:
        net = RecNet(backbone="resnet18", crop_size=64, n_identity=4, n_albedo=3, width=0.25)
        opt = torch.optim.SGD(net.heads[name].parameters(), lr=1e-3)
        for step in range(2):
            opt.zero_grad()
            net.backbone.zero_grad()
            c = net(images)
            target = getattr(c, name)
            # Push away from the init value; expression pushes upwards (β starts at the 0 bound).
            loss = ((target - target.detach() - 0.5) ** 2).sum()
            loss.backward()
            if step == 0:
                assert net.heads[name].weight.grad.abs().sum() > 0, name
                opt.step()
        grad = net.backbone.conv1.weight.grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_expression_parametrisation_keeps_unit_range_and_inward_gradients() -> None:
    x = torch.tensor([-0.5, 0.0, 0.5, 1.5], requires_grad=True)
    b = unit_interval(x)
    assert b.tolist() == [0.0, 0.0, 0.5, 1.0]
    b.sum().backward()  # descent would lower every value: allowed inside, refused below 0
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0]
    x.grad = None
    (-unit_interval(x)).sum().backward()  # descent raises every value: refused above 1
    assert x.grad.tolist() == [-1.0, -1.0, -1.0, 0.0]


def _image_camera_case(face_model, recnet, flat: bool):
    """A canonical prediction, a 640x480 image camera and the crop that holds the face."""
    K_img = intrinsics(700.0, 320.0, 240.0)
    box = (250.0, 120.0, 420.0, 290.0)
    K_act = crop_intrinsics(K_img, box, 128)
    c = recnet(torch.rand(1, 3, 128, 128)).detach()
    # A flat face stays flat in the camera only under roll; the real one turns too.
    angles = [0.0, 0.0, -0.2] if flat else [0.1, 0.3, -0.05]
    c = c.replace(angles=torch.tensor([angles]),
                  translation=c.translation + torch.tensor([[4.0, -3.0, 20.0]]))  # fmt: skip
    return c, K_act, K_img, box


@pytest.mark.parametrize("flat", [True, False])
def test_to_image_camera_keeps_the_projected_landmarks(face_model, recnet, flat):
    c, K_act, K_img, box = _image_camera_case(face_model, recnet, flat)
    verts = face_model.shape(c.identity, c.expression)
    lm_model = verts[:, face_model.landmarks68]
    if flat:  # weak-perspective-sized head: no depth extent around the anchor
        lm_model = lm_model * torch.tensor([1.0, 1.0, 0.0]) + recnet.anchor * torch.tensor(
            [0, 0, 1.0]
        )
    K_canon = recnet.K_canon[None]
    before = project(model_to_camera(lm_model, c.angles, c.translation), K_canon)
    moved = recnet.to_image_camera(c, K_act)
    after = project(model_to_camera(lm_model, moved.angles, moved.translation), K_act)
    err = (after - before).norm(dim=-1).max()
    print(f"flat={flat}: max landmark error {float(err):.3f} px of 128")
    assert err < (0.05 if flat else 0.05 * 128), float(err)
    # The full image camera sees the same face at crop pixels mapped back through the box.
    full = project(model_to_camera(lm_model, moved.angles, moved.translation), K_img)
    s = (box[2] - box[0]) / 128
    assert torch.allclose(full, (after + 0.5) * s + torch.tensor(box[:2]) - 0.5, atol=1e-2)
    back = to_canonical_camera(moved, K_act, recnet.K_canon, recnet.anchor)
    assert torch.allclose(back.translation, c.translation, atol=1e-3)
    assert torch.allclose(
        to_image_camera(c, K_act, recnet.K_canon, recnet.anchor).translation, moved.translation
    )


def test_recnet_rejects_wrong_crop_sizes_cameras_and_expressions(recnet) -> None:
    with pytest.raises(ValueError, match=r"\[B,3,128,128\]"):
        recnet(torch.rand(1, 3, 96, 96))
    assert torch.equal(recnet.K_canon, default_intrinsics(128)[0])
    coeffs = recnet(torch.rand(2, 3, 128, 128))
    with pytest.raises(ValueError, match=r"K_actual must be \[2,3,3\]"):
        recnet.to_image_camera(coeffs, torch.eye(3).expand(3, 3, 3))
    with pytest.raises(ValueError, match=r"expression must be \[2,"):
        recnet(torch.rand(2, 3, 128, 128), expression=torch.zeros(2, 3))


# ---- ETNet / RecAugNet ------------------------------------------------------------------------


def test_etnet_predicts_unit_range_expressions_and_recaugnet_swaps_them_in(recnet):
    et = ETNet(backbone="resnet18", crop_size=128, n_expression=recnet.n_expression, width=0.25)
    torch.manual_seed(3)
    with torch.no_grad():
        et.head.weight.normal_(std=2.0)
        et.head.bias.normal_(std=1.0)
    images = torch.rand(2, 3, 128, 128)
    beta = et(images)
    assert beta.shape == (2, recnet.n_expression)
    assert (beta >= 0).all() and (beta <= 1).all() and beta.max() > 0
    aug = RecAugNet(recnet, et)
    out = aug(images)
    ref = recnet(images)
    assert torch.equal(out.expression, beta)
    assert torch.equal(out.identity, ref.identity) and torch.equal(out.translation, ref.translation)
    out.expression.sum().backward()
    assert et.backbone.conv1.weight.grad is not None
    assert not any(p.requires_grad for p in aug.recnet.heads["expression"].parameters())
    with pytest.raises(ValueError, match="expressions"):
        RecAugNet(recnet, ETNet("resnet18", crop_size=128, n_expression=3, width=0.25))
