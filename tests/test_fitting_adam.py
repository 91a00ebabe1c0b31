"""The source fit's hand-written Adam (``jr2net.face.fitting.adam``) makes torch.optim.Adam's
updates, and a source fit no longer imports torch._dynamo (what torch.optim costs at start-up)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from jr2net.face.fitting.adam import Adam

# The fitter's groups: identity, expression, albedo, angles, translation, light (one tensor each).
SHAPES = [(1, 100), (1, 53), (1, 80), (1, 3), (1, 3), (1, 27)]
LRS = [0.1, 0.04, 0.1, 0.006, 1.0, 0.04]


def _run(make_optimizer, steps: int, skip_grad_of: int | None = None) -> list[list[torch.Tensor]]:
    """Parameters after each step of a fitter-like problem (a clamped group, one group whose
    gradient is missing every third step)."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).requires_grad_(True) for s in SHAPES]
    targets = [torch.randn(s, generator=gen) for s in SHAPES]
    opt = make_optimizer([{"params": [p], "lr": lr} for p, lr in zip(params, LRS, strict=True)])
    history = []
    for i in range(steps):
        loss = sum(
            ((p - t) ** 2 * (1 + p.abs())).sum() + p.sum().sin()
            for k, (p, t) in enumerate(zip(params, targets, strict=True))
            if not (k == skip_grad_of and i % 3 == 2)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            params[1].clamp_(0.0, 1.0)  # as the fitter clamps the expression
        history.append([p.detach().clone() for p in params])
    return history


@pytest.mark.parametrize("skip", [None, 2])
def test_updates_match_torch_optim_adam(skip):
    ours = _run(Adam, 60, skip)
    theirs = _run(torch.optim.Adam, 60, skip)
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            assert torch.allclose(x, y, rtol=0, atol=1e-6), (step, k, (x - y).abs().max())
    moved = max(float((a - b).abs().max()) for a, b in zip(ours[-1], ours[0], strict=True))
    assert moved > 0.01  # the problem does move the parameters


def test_zero_grad_keeps_or_drops_the_gradients():
    p = torch.ones(3, requires_grad=True)
    opt = Adam([{"params": [p], "lr": 0.1}])
    (p * 2).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert p.grad is not None and torch.equal(p.grad, torch.zeros(3))
    opt.zero_grad()
    assert p.grad is None
    opt.step()  # no gradient: nothing moves
    assert torch.equal(p.detach(), torch.ones(3))
    with pytest.raises(ValueError):
        Adam([{"params": [p], "lr": -1.0}])


def test_a_source_fit_does_not_import_torch_dynamo(ict_model_path, images_dir):
    code = (
        "import sys\n"
        "from jr2net.face.fitting import SourceFitter\n"
        "from jr2net.face.model import load_face_model\n"
        "from jr2net.io.images import load_image\n"
        f"fit = SourceFitter(load_face_model({str(ict_model_path)!r})).fit("
        f"load_image({str(images_dir / 'obama.jpg')!r}))\n"
        "assert fit.residual_iod < 0.05, fit.residual_iod\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_prepare_builds_the_one_time_data_and_changes_no_fit(ict_model_path, images_dir):
    """``SourceFitter.prepare`` (run in a thread by GeometricReenactor) builds the renderer and
    the surface metric up front; the fit is the same as a fresh fitter's."""
    from jr2net.face.fitting import SourceFitter
    from jr2net.face.landmarks import find_largest_face
    from jr2net.face.model import load_face_model
    from jr2net.io.images import load_image

    model = load_face_model(ict_model_path)
    image = load_image(images_dir / "obama.jpg")
    detection = find_largest_face(image)
    prepared = SourceFitter(model)
    prepared.prepare()
    assert prepared._renderer is not None and prepared._metric is not None
    metric = prepared._metric
    a = prepared.fit(image, detection)
    b = SourceFitter(model).fit(image, detection)
    assert prepared._metric is metric  # not built again
    for name in ("identity", "expression", "albedo", "angles", "translation", "light"):
        x, y = getattr(a.coeffs, name), getattr(b.coeffs, name)
        assert torch.allclose(x, y, rtol=0, atol=1e-5), name
