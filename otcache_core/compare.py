"""Two batches of images side by side: how far a cached run is from full compute, per image and as a map.

OTCache Compare (``nodes/compare_node.py``) is a thin wrapper: the figures are :mod:`otcache_core.metrics`'
own, so a number it shows is the number every benchmark here reports.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np
import torch

from .errors import OTCacheError
from .metrics import load_lpips, lpips_unavailable_reason, psnr_per_image, ssim
from .quality import MAX_DB


@dataclass(frozen=True)
class Comparison:
    """Per-image figures of ``image`` against ``reference`` (the full-compute output of the same seed)."""

    psnr: tuple[float, ...]
    """dB; an identical image counts as :data:`~otcache_core.quality.MAX_DB`."""
    ssim: tuple[float, ...]
    lpips: tuple[float, ...] | None
    lpips_note: str = ""
    """Why LPIPS is missing, where it is."""

    def describe(self) -> str:
        n = len(self.psnr)
        worst = f" (worst {min(self.psnr):.2f} dB)" if n > 1 else ""
        lines = [f"PSNR {statistics.fmean(self.psnr):.2f} dB{worst} vs the reference, {n} image{'s' if n > 1 else ''}",
                 f"SSIM {statistics.fmean(self.ssim):.4f}" + (f" (worst {min(self.ssim):.4f})" if n > 1 else "")]
        if self.lpips is not None:
            lines.append(f"LPIPS {statistics.fmean(self.lpips):.4f}" + (f" (worst {max(self.lpips):.4f})" if n > 1 else ""))
        else:
            lines.append(f"LPIPS not measured: {self.lpips_note}")
        if n > 1:
            lines.append("per image PSNR: " + ", ".join(f"{p:.2f}" for p in self.psnr))
        return "\n".join(lines)


def as_nchw(images: torch.Tensor, name: str) -> torch.Tensor:
    """A ComfyUI IMAGE ``[N, H, W, C]`` in [0, 1] -> ``[N, C, H, W]`` float64; an error names the input."""
    if not torch.is_tensor(images) or images.ndim != 4:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise OTCacheError(f"'{name}' must be an IMAGE batch [N, H, W, C], got {shape}")
    return images.detach().to(torch.float64).cpu().movedim(-1, 1)


def check_pair(image: torch.Tensor, reference: torch.Tensor) -> None:
    if image.shape != reference.shape:
        def size(x: torch.Tensor) -> str:
            return f"{x.shape[0]} image(s) of {x.shape[3]}x{x.shape[2]} with {x.shape[1]} channel(s)"
        raise OTCacheError(f"'image' has {size(image)} but 'reference' has {size(reference)}: compare the same batch "
                           "size and latent size (the same seed with and without OTCache)")


def compare_images(image: torch.Tensor, reference: torch.Tensor, *, lpips: bool = True) -> Comparison:
    """Figures of ComfyUI IMAGE batches (``[N, H, W, C]`` in [0, 1]), image by image."""
    a, b = as_nchw(image, "image"), as_nchw(reference, "reference")
    check_pair(a, b)
    psnrs = tuple(min(float(p), MAX_DB) for p in psnr_per_image(a, b, 1.0, MAX_DB))
    ssims = tuple(ssim(a[i : i + 1], b[i : i + 1]) for i in range(a.shape[0]))
    note = lpips_unavailable_reason() if lpips else "not asked for"
    if note is None:
        distance = load_lpips()
        return Comparison(psnrs, ssims, tuple(distance(a[i : i + 1], b[i : i + 1]) for i in range(a.shape[0])))
    return Comparison(psnrs, ssims, None, note)


def difference_map(image: torch.Tensor, reference: torch.Tensor, *, scale: float = 0.0) -> torch.Tensor:
    """Where the images differ, as an IMAGE batch ``[N, H, W, 3]``: ``|image - reference|`` averaged over
    channels, divided by ``scale`` (0: each image's own largest difference), on a black-red-yellow-white
    ramp. Identical images are black."""
    a, b = as_nchw(image, "image"), as_nchw(reference, "reference")
    check_pair(a, b)
    diff = (a - b).abs().mean(dim=1)  # [N, H, W]
    top = diff.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1) if scale <= 0 else torch.tensor(float(scale))
    t = (diff / top).clamp(0, 1)
    ramp = torch.stack([(3 * t).clamp(0, 1), (3 * t - 1).clamp(0, 1), (3 * t - 2).clamp(0, 1)], dim=-1)
    return ramp.float()


def as_uint8(images: torch.Tensor) -> np.ndarray:
    """The first image of an IMAGE batch as ``H x W x 3`` uint8 (for figures)."""
    return (images[0].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
