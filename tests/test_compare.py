"""OTCache Compare's figures and map (the node is a thin wrapper over these)."""

from __future__ import annotations

import pytest
import torch

from otcache_core.compare import compare_images, difference_map
from otcache_core.errors import OTCacheError
from otcache_core.metrics import psnr, ssim


def images(n: int = 2, h: int = 16, w: int = 12, seed: int = 0) -> torch.Tensor:
    """A ComfyUI IMAGE batch ``[N, H, W, 3]`` in [0, 1]."""
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


def noisy(x: torch.Tensor, amount: float) -> torch.Tensor:
    return (x + amount * torch.randn(x.shape, generator=torch.Generator().manual_seed(9))).clamp(0, 1)


def test_psnr_and_ssim_are_the_metrics_modules_own_per_image():
    reference = images()
    cached = noisy(reference, 0.03)
    result = compare_images(cached, reference, lpips=False)
    nchw = lambda x: x.movedim(-1, 1)  # noqa: E731
    for i in range(2):
        assert result.psnr[i] == pytest.approx(psnr(nchw(cached[i : i + 1]), nchw(reference[i : i + 1])), abs=1e-9)
        assert result.ssim[i] == pytest.approx(ssim(nchw(cached[i : i + 1]), nchw(reference[i : i + 1])), abs=1e-9)


def test_the_report_states_mean_worst_and_each_image():
    reference = images()
    cached = torch.cat([noisy(reference[:1], 0.01), noisy(reference[1:], 0.1)])
    result = compare_images(cached, reference, lpips=False)
    text = result.describe()
    assert f"PSNR {sum(result.psnr) / 2:.2f} dB (worst {min(result.psnr):.2f} dB)" in text
    assert "per image PSNR: " + ", ".join(f"{p:.2f}" for p in result.psnr) in text
    assert "LPIPS not measured" in text


def test_identical_images_are_at_the_cap_and_black_in_the_map():
    reference = images()
    assert compare_images(reference.clone(), reference, lpips=False).psnr == (100.0, 100.0)
    assert difference_map(reference.clone(), reference).abs().max() == 0


def test_the_map_is_an_image_batch_brightest_where_the_images_differ_most():
    reference = torch.zeros(1, 8, 8, 3)
    cached = reference.clone()
    cached[0, 2, 3] = 0.5
    cached[0, 5, 5] = 0.1
    heat = difference_map(cached, reference)
    assert heat.shape == (1, 8, 8, 3) and 0 <= heat.min() and heat.max() <= 1
    brightness = heat.sum(dim=-1)[0]
    assert brightness[2, 3] == brightness.max() == 3.0  # white: the largest difference
    assert 0 < brightness[5, 5] < brightness[2, 3]


def test_a_fixed_scale_puts_several_maps_on_one_ramp():
    reference = torch.zeros(1, 4, 4, 3)
    small, large = reference + 0.05, reference + 0.1
    assert difference_map(small, reference).max() == difference_map(large, reference).max()  # own scale: both white
    assert difference_map(small, reference, scale=0.1).sum() < difference_map(large, reference, scale=0.1).sum()


@pytest.mark.parametrize("other", [images(n=1), images(h=8), torch.rand(2, 16, 12)])
def test_batches_that_do_not_match_get_an_error_naming_the_inputs(other):
    with pytest.raises(OTCacheError, match="'image'|'reference'"):
        compare_images(other, images(), lpips=False)
