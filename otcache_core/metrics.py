"""Fidelity metrics between a cached output and the full-compute output of the same seed.

Images are ``[N, C, H, W]`` tensors in ``[0, data_range]``. Each metric is computed per image and
averaged over the batch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import MissingDependencyError

Distance = Callable[[torch.Tensor, torch.Tensor], float]

# torchvision's AlexNet checkpoint, which lpips.LPIPS(net="alex") loads through torch.hub.
_ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"


def _as_images(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().to(torch.float64)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f"expected images shaped [N, C, H, W], got {tuple(x.shape)}")
    return x


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, max_db: float = 100.0) -> float:
    """Mean over images of ``10 log10(range^2 / MSE)``.

    Identical batches give ``inf``; within a batch that differs somewhere, an identical image counts as
    ``max_db`` so that one exact image does not make the mean infinite.
    """
    per_image = psnr_per_image(a, b, data_range, max_db)
    return math.inf if bool(torch.isinf(per_image).all()) else float(per_image.clamp(max=max_db).mean())


def psnr_per_image(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, max_db: float = 100.0) -> torch.Tensor:
    """``10 log10(range^2 / MSE)`` of each image; ``inf`` for identical images when all are identical,
    ``max_db`` for an identical image otherwise (see :func:`psnr`)."""
    a, b = _as_images(a), _as_images(b)
    mse = ((a - b) ** 2).flatten(1).mean(dim=1)
    if bool((mse == 0).all()):
        return torch.full_like(mse, math.inf)
    return (10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-300))).clamp(max=max_db)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    data_range: float = 1.0,
    window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Mean structural similarity (Wang et al. 2004), Gaussian window, per channel, valid region.

    ``SSIM = (2 mu_a mu_b + C1)(2 cov_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2))`` with
    ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``. The window shrinks to the image size for small images.
    """
    a, b = _as_images(a), _as_images(b)
    n, c, h, w = a.shape
    size = min(window, h, w)
    kernel = _gaussian_window(size, sigma).expand(c, 1, size, size).contiguous()

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, kernel, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.flatten(1).mean(dim=1).mean())


def relative_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    """``mean |a - b| / mean |b|``: the scale-free latent error (``b`` is the reference)."""
    a, b = a.detach().to(torch.float64), b.detach().to(torch.float64)
    denom = b.abs().mean()
    if denom == 0:
        return 0.0 if torch.equal(a, b) else math.inf
    return float((a - b).abs().mean() / denom)


def lpips_unavailable_reason() -> str | None:
    """Why LPIPS cannot be used here (``None`` if it can), without downloading anything."""
    try:
        import lpips  # noqa: F401
    except Exception as exc:  # lpips imports torchvision, which may be missing or broken
        return f"the lpips package is not importable ({exc.__class__.__name__}); pip install 'otcache[lpips]'"
    checkpoint = os.path.join(torch.hub.get_dir(), "checkpoints", _ALEXNET_CHECKPOINT)
    if not os.path.exists(checkpoint):
        return f"LPIPS needs torchvision's AlexNet weights at {checkpoint}, which are not downloaded"
    return None


def load_lpips() -> Distance:
    """LPIPS (AlexNet) as a distance on images in [0, 1]; raises if unavailable (never downloads)."""
    reason = lpips_unavailable_reason()
    if reason is not None:
        raise MissingDependencyError(f"LPIPS unavailable: {reason}")
    import lpips

    net = lpips.LPIPS(net="alex", verbose=False).eval()

    def distance(a: torch.Tensor, b: torch.Tensor) -> float:
        with torch.no_grad():
            a3, b3 = _rgb(_as_images(a).float()), _rgb(_as_images(b).float())
            return float(net(a3 * 2 - 1, b3 * 2 - 1).mean())

    return distance


def _rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]


@dataclass(frozen=True)
class Objective:
    """A named distance between a cached and a full-compute output (lower is better)."""

    name: str
    distance: Distance
    note: str = ""


def perceptual_objective(prefer: str = "lpips", *, images: bool = True) -> Objective:
    """The best available end-to-end distance: LPIPS, else ``1 - SSIM``, else latent relative L1.

    ``images=False`` means the outputs are latents, where only relative L1 is meaningful. The
    ``note`` says why a preferred metric was not used.
    """
    if prefer not in ("lpips", "ssim", "latent"):
        raise ValueError(f"objective must be lpips, ssim or latent, got {prefer!r}")
    note = ""
    if images and prefer == "lpips":
        reason = lpips_unavailable_reason()
        if reason is None:
            return Objective("lpips", load_lpips())
        note = f"LPIPS unavailable ({reason}); using 1 - SSIM"
        prefer = "ssim"
    if images and prefer == "ssim":
        return Objective("1-ssim", lambda a, b: 1.0 - ssim(a, b), note)
    if not images and prefer != "latent":
        note = "outputs are latents; using relative L1"
    return Objective("rel_l1", relative_l1, note)


def worst_share_mean(distance: Distance, share: float = 0.5) -> Distance:
    """``distance`` per image, averaged over the worst ``share`` of the batch (the upper tail, CVaR).

    With ``d_1 >= d_2 >= ... >= d_N`` the per-image distances, the result is the mean of
    ``d_1 .. d_m``, ``m = ceil(share N)``; ``share = 1`` is the plain mean over images. Scoring a
    schedule by its hard cases keeps the search from winning on easy samples; on the testbed the
    anchor found this way did slightly better on held-out classes than with the mean (0.1 dB at
    B = 10; benchmarks/RESULTS.md).
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be within (0, 1], got {share}")

    def tail(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = _as_images(a), _as_images(b)
        per_image = sorted((distance(a[i : i + 1], b[i : i + 1]) for i in range(a.shape[0])), reverse=True)
        m = max(1, math.ceil(share * len(per_image) - 1e-9))
        return float(sum(per_image[:m]) / m)

    return tail
