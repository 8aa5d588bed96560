"""Test-only ComfyUI nodes, loaded only by the test servers (a second custom node folder); never shipped.

No real text encoder is available offline, so conditioning comes from a node that emits fixed tensors
of the shape a tiny Wan 2.1 (4096-dim text context) expects. A second node slows the model down and
counts its calls, so that a test can cancel a calibration inside a chosen stage and count what a
resumed run pays. A third shows a latent as an image (the tiny Wan has no VAE), for OTCache Compare. Everything else in the tests' graphs is ComfyUI's own nodes and this pack.
"""

import time

import comfy.patcher_extension
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


class CountingDelay:
    """``DIFFUSION_MODEL`` wrapper: append one byte to ``counter_file``, sleep, then run the model."""

    def __init__(self, delay_ms, counter_file):
        self.delay, self.counter_file = delay_ms / 1000.0, counter_file

    def __call__(self, executor, *args, **kwargs):
        with open(self.counter_file, "ab") as handle:
            handle.write(b".")
        time.sleep(self.delay)
        return executor(*args, **kwargs)


class OTCacheTestSlowModel:
    """The model, with every diffusion-model call slowed by ``delay_ms`` and counted in ``counter_file``
    (its size in bytes). In OTCache's ``model`` reuse mode a reused step never reaches the diffusion
    model, so the count is the number of full model computations."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "delay_ms": ("INT", {"default": 0, "min": 0, "max": 10000}),
                             "counter_file": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "slow"
    CATEGORY = "testing"

    def slow(self, model, delay_ms, counter_file):
        model = model.clone()
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "otcache_test_slow",
                                   CountingDelay(delay_ms, counter_file))
        return (model,)


class OTCacheTestLatentImage:
    """A latent as an IMAGE batch, for graphs without a VAE (the tiny Wan has none): the first frame's first
    three channels, squashed into [0, 1] by a fixed sigmoid."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "show"
    CATEGORY = "testing"

    def show(self, samples):
        x = samples["samples"]
        x = x[:, :3, 0] if x.ndim == 5 else x[:, :3]
        return (torch.sigmoid(x).movedim(1, -1).float(),)


NODE_CLASS_MAPPINGS = {"OTCacheTestConditioning": OTCacheTestConditioning,
                       "OTCacheTestSlowModel": OTCacheTestSlowModel,
                       "OTCacheTestLatentImage": OTCacheTestLatentImage}
