"""OTCache Compare: a cached image batch against the full-compute batch of the same seed.

Thin on purpose: figures and map come from :mod:`otcache_core.compare` (the metrics every benchmark here
uses), so what the node shows is what the README's tables mean.
"""

from __future__ import annotations

from ..otcache_core.compare import as_uint8, compare_images, difference_map
from .previews import temp_preview


class OTCacheCompare:
    """OTCache Compare."""

    DESCRIPTION = (
        "Compare two image batches, e.g. the same seed sampled with and without OTCache: PSNR (dB), SSIM and "
        "LPIPS (where installed) per image against the reference, and a map of where they differ."
    )
    CATEGORY = "OTCache"
    FUNCTION = "compare"
    OUTPUT_NODE = True  # it shows its map on itself: the node and its two inputs make a valid prompt
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("report", "difference")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "reference": ("IMAGE", {"tooltip": "The full-compute images (the sampler without OTCache)."}),
                "image": ("IMAGE", {"tooltip": "The images to judge (the same seed and size, with OTCache)."}),
                "scale": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Difference that shows as white in the map (0: each image's own largest difference; e.g. 0.1 to compare several maps on one scale)."}),
            },
        }

    def compare(self, reference, image, scale=0.0):
        report = compare_images(image, reference).describe()
        heat = difference_map(image, reference, scale=scale)
        return {"ui": {"images": [temp_preview(as_uint8(heat), "OTCache_compare")]}, "result": (report, heat)}
