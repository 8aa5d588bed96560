"""Tiny real control models (ControlNet, T2I-Adapter) and main models they fit, for tests.

Each control model is ComfyUI's own class with deterministic random weights, written to a checkpoint
in a key layout ComfyUI's loader recognises and loaded back through ``comfy.controlnet.load_controlnet``
(what the "Load ControlNet Model" node calls), so detection, wrapping and ``get_control`` are the
user's path; only the numbers are made up.

The loader decides some sizes itself, and the main models are built to match:

* FLUX ControlNet (XLabs layout, ``comfy.ldm.flux.controlnet.ControlNetFlux``): the loader assumes
  FLUX.1's width (hidden 3072, 24 heads, text 4096, rope axes 16/56/56) whatever the checkpoint, so the
  smallest loadable one has one double block at full width (~390M parameters); the main Flux has the
  same width with one double and one single block (~540M).
* SD1.5-layout ControlNet (``comfy.cldm.cldm.ControlNet``): detected from the checkpoint's shapes with
  64-channel attention heads, so the UNet has 64 base channels; it has SD1.5's four levels of two
  blocks so that a T2I-Adapter's features land on blocks of their size.
* T2I-Adapter (``comfy.t2i_adapter.adapter.Adapter``, SD1.5 layout), features 64/128/256/256.

Imports ``comfy`` only inside functions (see ``tiny_models``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .tiny_models import TinyModel, _build_patcher, _cond_maker, _latent_maker, _no_extras, _pooled, init_weights

#: The Flux width ``comfy.model_detection`` assumes for a FLUX ControlNet checkpoint at this commit.
FLUX_WIDTH = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=64, context_in_dim=4096,
                  hidden_size=3072, mlp_ratio=4.0, num_heads=24, axes_dim=[16, 56, 56], theta=10000, patch_size=2,
                  qkv_bias=True, guidance_embed=True)

#: SD1.5 layout at 64 base channels (the loader's 64-channel heads need at least that).
UNET_FOR_CONTROLS = dict(use_checkpoint=False, image_size=32, use_spatial_transformer=True, legacy=False,
                         adm_in_channels=None, in_channels=4, out_channels=4, model_channels=64,
                         num_res_blocks=[2, 2, 2, 2], transformer_depth=[1] * 8, transformer_depth_output=[1] * 12,
                         channel_mult=[1, 2, 4, 4], transformer_depth_middle=1, use_linear_in_transformer=False,
                         context_dim=32, use_temporal_resblock=False, use_temporal_attention=False, num_heads=8)


def build_flux_for_controlnet(seed: int = 0) -> TinyModel:
    """Flux at the width FLUX ControlNets load with: 1 double + 1 single block."""
    uc = dict(FLUX_WIDTH, depth=1, depth_single_blocks=1)
    return TinyModel(
        patcher=_build_patcher("Flux", uc, seed), family="flux", config_class="Flux", unet_config=dict(uc),
        make_cond=_cond_maker(4096, _pooled(64)), make_latent=_latent_maker(16, False, 1), double_blocks=1,
        single_blocks=1, replace_mode="dit",
        block_path=("diffusion_model.double_blocks", "diffusion_model.single_blocks"), latent_channels=16,
        video=False, hidden_size=3072)


def build_unet_for_controls(seed: int = 0) -> TinyModel:
    """SD1.5-layout UNet that the tiny ControlNet and T2I-Adapter below fit."""
    uc = dict(UNET_FOR_CONTROLS)
    return TinyModel(
        patcher=_build_patcher("SD15", uc, seed), family="sd15", config_class="SD15", unet_config=dict(uc),
        make_cond=_cond_maker(32, _no_extras), make_latent=_latent_maker(4, False, 1), double_blocks=0,
        single_blocks=0, replace_mode="none", block_path=(), latent_channels=4, video=False, hidden_size=64)


def _write(module: torch.nn.Module, path: Path, seed: int) -> Path:
    """Fill ``module`` from ``seed`` and save it as a half-precision safetensors checkpoint (as most are)."""
    import safetensors.torch

    init_weights(module, seed)
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in module.state_dict().items()}
    safetensors.torch.save_file(sd, str(path))
    return path


def write_flux_controlnet(path: Path, seed: int = 1) -> Path:
    """An XLabs-layout FLUX ControlNet checkpoint: one double block, image hint, no VAE needed."""
    import comfy.ldm.flux.controlnet
    import comfy.ops

    config = {k: v for k, v in FLUX_WIDTH.items() if k != "image_model"}
    net = comfy.ldm.flux.controlnet.ControlNetFlux(depth=1, depth_single_blocks=0, dtype=torch.float32, device="cpu",
                                                  operations=comfy.ops.disable_weight_init, **config)
    return _write(net, path, seed)


def write_unet_controlnet(path: Path, seed: int = 1) -> Path:
    """An SD1.5-layout ControlNet checkpoint (``zero_convs`` / ``input_hint_block`` keys) for the UNet above."""
    import comfy.cldm.cldm
    import comfy.ops

    config = {k: v for k, v in UNET_FOR_CONTROLS.items() if k not in ("out_channels", "transformer_depth_output")}
    net = comfy.cldm.cldm.ControlNet(hint_channels=3, dtype=torch.float32, device="cpu",
                                     operations=comfy.ops.disable_weight_init, **config)
    return _write(net, path, seed)


def write_t2i_adapter(path: Path, seed: int = 2) -> Path:
    """An SD1.5-layout T2I-Adapter checkpoint (``conv_in`` / ``body`` keys) for the UNet above."""
    import comfy.t2i_adapter.adapter

    net = comfy.t2i_adapter.adapter.Adapter(cin=3 * 64, channels=[64, 128, 256, 256], nums_rb=2, ksize=1, sk=True,
                                            use_conv=False, xl=False)
    return _write(net, path, seed)


def load_control(path: Path):
    """The checkpoint loaded the way ComfyUI's ControlNet loader node loads it."""
    import comfy.controlnet

    control = comfy.controlnet.load_controlnet(str(path))
    if control is None:
        raise RuntimeError(f"ComfyUI did not recognise {path.name} as a control model")
    return control


def hint_image(latent: torch.Tensor, seed: int = 5) -> torch.Tensor:
    """A random IMAGE (``[1, H, W, 3]`` in 0..1) at the pixel size of ``latent`` (8x its side)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((1, latent.shape[-2] * 8, latent.shape[-1] * 8, 3), generator=g)


def build_flux_controlnet_like(m: TinyModel, double: int, single: int, seed: int = 1):
    """A FLUX ControlNet at ``m``'s width, as ComfyUI's loader wraps one (XLabs layout: image hint, no VAE).

    Built directly: the loader only builds FLUX.1's width (see the module doc), so benchmarks at a
    small width construct ComfyUI's own classes the way ``load_controlnet_flux_xlabs_mistoline`` does.
    """
    import comfy.controlnet
    import comfy.ldm.flux.controlnet
    import comfy.ops

    config = {k: v for k, v in m.unet_config.items() if k not in ("image_model", "depth", "depth_single_blocks")}
    net = comfy.ldm.flux.controlnet.ControlNetFlux(depth=double, depth_single_blocks=single, dtype=torch.float32,
                                                  device="cpu", operations=comfy.ops.disable_weight_init, **config)
    init_weights(net, seed)
    return comfy.controlnet.ControlNet(net, load_device=torch.device("cpu"), manual_cast_dtype=None,
                                       extra_conds=["y", "guidance"])
