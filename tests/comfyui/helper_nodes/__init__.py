"""Test-only ComfyUI nodes, loaded only by the test servers (a second custom node folder); never shipped.

No real text encoder is available offline, so conditioning comes from a node that emits fixed tensors
of the shape a tiny Wan 2.1 (4096-dim text context) expects. Everything else in the tests' graphs is
ComfyUI's own nodes and this pack.
"""

import torch


class OTCacheTestConditioning:
    """Fixed random text-encoder output for a tiny Wan (4096-dim context)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, seed):
        g = torch.Generator().manual_seed(seed)
        return ([[torch.randn(1, 8, 4096, generator=g), {}]],)


NODE_CLASS_MAPPINGS = {"OTCacheTestConditioning": OTCacheTestConditioning}
