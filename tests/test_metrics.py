"""Fidelity metrics."""

import math
import sys

import pytest
import torch

from otcache_core.errors import MissingDependencyError
from otcache_core.metrics import load_lpips, perceptual_objective, psnr, relative_l1, ssim


def images(seed=0, n=2):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_psnr_of_identical_images_is_infinite():
    a = images()
    assert psnr(a, a.clone()) == math.inf


def test_psnr_matches_the_closed_form():
    a = torch.zeros(1, 1, 4, 4)
    b = torch.full((1, 1, 4, 4), 0.1)
    assert psnr(a, b) == pytest.approx(20.0)


def test_psnr_caps_identical_images_inside_a_differing_batch():
    a = images(n=2)
    b = a.clone()
    b[1] += 0.01
    assert psnr(a, b) == pytest.approx((100.0 + 40.0) / 2, rel=1e-6)


def test_ssim_is_one_for_identical_and_lower_for_noisy_images():
    a = images()
    assert ssim(a, a) == pytest.approx(1.0)
    noisy = (a + 0.2 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert ssim(a, noisy) < 0.9
    assert ssim(a, noisy) == pytest.approx(ssim(noisy, a))


def test_relative_l1_is_scale_free():
    a, b = images(0), images(1)
    assert relative_l1(a * 3, b * 3) == pytest.approx(relative_l1(a, b))
    assert relative_l1(b, b) == 0.0


def test_perceptual_objective_falls_back_with_a_note_when_lpips_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)
    objective = perceptual_objective("lpips")
    assert objective.name == "1-ssim" and "LPIPS unavailable" in objective.note
    a = images()
    assert objective.distance(a, a) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(MissingDependencyError, match="pip install"):
        load_lpips()


def test_latent_outputs_use_relative_l1():
    assert perceptual_objective("lpips", images=False).name == "rel_l1"


def test_worst_share_mean_averages_the_hardest_images():
    from otcache_core.metrics import worst_share_mean

    full = torch.zeros(4, 1, 8, 8)
    cached = full.clone()
    for i, level in enumerate([0.1, 0.4, 0.2, 0.3]):
        cached[i] += level
    mean_abs = lambda a, b: float((a - b).abs().mean())  # noqa: E731
    assert worst_share_mean(mean_abs, 0.5)(cached, full) == pytest.approx((0.4 + 0.3) / 2)
    assert worst_share_mean(mean_abs, 1.0)(cached, full) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        worst_share_mean(mean_abs, 0.0)
