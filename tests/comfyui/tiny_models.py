"""Tiny, deterministic, *real* ComfyUI models for tests.

Each builder instantiates a model class from ``comfy.supported_models`` with a
miniature ``unet_config`` (hidden size 32-256, a handful of blocks), fills every
parameter from a seed, and wraps it in a ``comfy.model_patcher.ModelPatcher`` on
the CPU in float32. The forward code that runs is ComfyUI's own, so patches,
wrappers and block replacements behave exactly as they do on full-size
checkpoints; only the numbers are made up.

Why the weights need care: ComfyUI builds its layers with
``disable_weight_init`` (memory is left uninitialised because a checkpoint is
expected to overwrite it). We fill weights with ``N(0, 1/fan_in)``, norms with
~1, biases and free tensors with small noise. Random gates are what makes this
useful for caching tests: real DiTs are trained, but adaLN-Zero style *zero*
gates would make every block an identity and a block cache trivially exact.

This module imports ``comfy`` only inside functions, so the family list can be
read (e.g. for test parametrisation) on a machine without ComfyUI. The ComfyUI
checkout must be importable (``tests/comfyui/conftest.py`` arranges that) and
``comfy.cli_args.args.cpu`` must be set before ``comfy.model_management`` is
first imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

CPU = torch.device("cpu")

#: Default number of text tokens in generated conditioning.
COND_TOKENS = 8

#: Buffers that ComfyUI allocates with ``torch.empty`` and expects a checkpoint
#: to fill. Other buffers (e.g. ``model_sampling.sigmas``) are computed at
#: construction and must be left alone.
_UNINITIALISED_BUFFERS = frozenset({"pos_embed"})

Conditioning = list  # ComfyUI format: [[context_tensor, extras_dict], ...]


@dataclass
class TinyModel:
    """A built tiny model plus what a test needs to sample from it.

    Attributes:
        patcher: the ``comfy.model_patcher.ModelPatcher`` (clone it before patching).
        family: registry name, e.g. ``"flux"``.
        config_class: name of the ``comfy.supported_models`` class used.
        unet_config: the config passed to that class (a copy).
        make_cond: ``(seed, batch) -> conditioning`` in ComfyUI's list format.
        make_latent: ``(batch, height, width, frames) -> zeros`` latent in the
            model's native layout (``frames=None`` means the family default).
        double_blocks: number of ``("double_block", i)`` replacement keys the
            model honours; for ``replace_mode == "object_patch"`` the number of
            main layers; 0 for a UNet.
        single_blocks: number of ``("single_block", i)`` keys honoured.
        replace_mode: ``"dit"`` (``patches_replace["dit"]``), ``"object_patch"``
            (no block replacement; patch ``block_path.<i>.forward``) or
            ``"none"`` (UNet: model-level caching only).
        block_path: attribute path of the block list(s) below the ``BaseModel``,
            for reference and object patches.
        latent_channels: channels of the latent.
        video: whether the latent has a frame axis ``[B, C, T, H, W]``.
    """

    patcher: Any
    family: str
    config_class: str
    unet_config: dict
    make_cond: Callable[..., Conditioning]
    make_latent: Callable[..., torch.Tensor]
    double_blocks: int
    single_blocks: int
    replace_mode: str
    block_path: tuple[str, ...]
    latent_channels: int
    video: bool
    hidden_size: int = 0
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def total_blocks(self) -> int:
        """Blocks a block-level cache can skip."""
        return self.double_blocks + self.single_blocks

    def positive(self, batch: int = 1, seed: int = 101) -> Conditioning:
        """Deterministic positive conditioning."""
        return self.make_cond(seed, batch)

    def negative(self, batch: int = 1, seed: int = 202) -> Conditioning:
        """Deterministic negative conditioning (different seed from positive)."""
        return self.make_cond(seed, batch)

    def noise(self, latent: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Noise exactly as ComfyUI's KSampler node makes it for ``latent``."""
        import comfy.sample

        return comfy.sample.prepare_noise(latent, seed)


# --------------------------------------------------------------------------
# Deterministic weight filling
# --------------------------------------------------------------------------

def _is_norm(module: torch.nn.Module) -> bool:
    """LayerNorm, RMSNorm (torch's and ComfyUI's), GroupNorm, ..."""
    return "Norm" in type(module).__name__


def _fill_value(module: torch.nn.Module, name: str, p: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The deterministic initial value of one parameter.

    Scales keep every layer's output O(1) for O(1) inputs, so activations stay
    finite through a dozen residual blocks, while gates and modulations stay
    clearly non-zero so that blocks really change the hidden state.
    """
    noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
    if _is_norm(module):
        # Affine norm weights near 1 (identity-ish), biases near 0.
        return noise * 0.02 if name == "bias" else 1.0 + 0.05 * noise
    if name == "bias":
        return noise * 0.02
    if name == "weight" and p.ndim >= 2:
        fan_in = p[0].numel()  # in_features * kernel volume
        return noise / math.sqrt(fan_in)
    # Free tensors: Wan modulation, AuraFlow positional encoding and registers.
    return noise * 0.1


@torch.no_grad()
def init_weights(module: torch.nn.Module, seed: int) -> None:
    """Fill every parameter (and known uninitialised buffer) of ``module``.

    Iteration order is ``named_modules`` order, which is fixed by the model's
    constructor, so the same config and seed always give the same weights.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    for _, mod in module.named_modules():
        for name, p in mod.named_parameters(recurse=False):
            p.copy_(_fill_value(mod, name, p, g).to(p.dtype))
        for name, b in mod.named_buffers(recurse=False):
            if name in _UNINITIALISED_BUFFERS and b.is_floating_point():
                b.copy_((torch.randn(b.shape, generator=g) * 0.1).to(b.dtype))


def _build_patcher(config_class: str, unet_config: dict, seed: int) -> Any:
    """Instantiate ``comfy.supported_models.<config_class>`` tiny and wrap it."""
    import comfy.model_patcher
    import comfy.supported_models

    cfg = getattr(comfy.supported_models, config_class)(unet_config)
    cfg.set_inference_dtype(torch.float32, None)
    model = cfg.get_model({}, device=CPU)
    init_weights(model.diffusion_model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)


# --------------------------------------------------------------------------
# Conditioning and latents
# --------------------------------------------------------------------------

Extras = Callable[[torch.Generator, int, int], dict]  # (generator, batch, tokens) -> extras dict


def _cond_maker(context_dim: int, extras: Extras) -> Callable[..., Conditioning]:
    """Return ``make_cond(seed, batch=1, tokens=COND_TOKENS)`` for one family."""

    def make_cond(seed: int, batch: int = 1, tokens: int = COND_TOKENS) -> Conditioning:
        g = torch.Generator(device="cpu").manual_seed(seed)
        context = torch.randn((batch, tokens, context_dim), generator=g)
        return [[context, extras(g, batch, tokens)]]

    return make_cond


def _no_extras(g: torch.Generator, batch: int, tokens: int) -> dict:
    return {}


def _pooled(dim: int) -> Extras:
    """Extras with a ``pooled_output`` (Flux, HunyuanVideo, SD3 need it)."""

    def extras(g: torch.Generator, batch: int, tokens: int) -> dict:
        return {"pooled_output": torch.randn((batch, dim), generator=g)}

    return extras


def _chroma_extras(g: torch.Generator, batch: int, tokens: int) -> dict:
    # Chroma inherits Flux's encode_adm, which indexes kwargs["pooled_output"]:
    # the key must exist (None, as Chroma's T5 encoder gives) or sampling fails.
    return {"pooled_output": None}


def _lumina_mask(g: torch.Generator, batch: int, tokens: int) -> dict:
    # Lumina2 derives ``num_tokens`` from an *integer* mask; without it the
    # forward fails. All ones is what an unpadded prompt gives.
    return {"attention_mask": torch.ones((batch, tokens), dtype=torch.long)}


def _latent_maker(channels: int, video: bool, default_frames: int) -> Callable[..., torch.Tensor]:
    """Return ``make_latent(batch=1, height=8, width=8, frames=None)``.

    Sizes are in latent pixels. Image families reject ``frames != 1``; Qwen-Image
    is image-only but uses a 5-D latent with one frame.
    """

    def make_latent(batch: int = 1, height: int = 8, width: int = 8, frames: Optional[int] = None) -> torch.Tensor:
        t = default_frames if frames is None else frames
        if not video:
            if t != 1:
                raise ValueError(f"image latent: frames must be 1, got {t}")
            return torch.zeros((batch, channels, height, width))
        return torch.zeros((batch, channels, t, height, width))

    return make_latent


def _qwen_latent(batch: int = 1, height: int = 8, width: int = 8, frames: Optional[int] = None) -> torch.Tensor:
    """Qwen-Image: ``[B, 16, 1, H, W]`` (its patchify folds exactly one frame)."""
    if frames not in (None, 1):
        raise ValueError(f"Qwen-Image latent: frames must be 1, got {frames}")
    return torch.zeros((batch, 16, 1, height, width))


# --------------------------------------------------------------------------
# Builders, one per family
# --------------------------------------------------------------------------

def _flux_config(hidden: int, heads: int, depth: int, single: int, ctx: int, vec: int) -> dict:
    head_dim = hidden // heads
    third = (head_dim // 3) // 2 * 2  # rope axes must be even and sum to head_dim
    axes = [head_dim - 2 * third, third, third]
    return dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=vec,
                context_in_dim=ctx, hidden_size=hidden, mlp_ratio=4.0, num_heads=heads,
                depth=depth, depth_single_blocks=single, axes_dim=axes, theta=10000,
                patch_size=2, qkv_bias=True, guidance_embed=True)


def build_flux(seed: int = 0) -> TinyModel:
    """Flux dev-style (guidance embed): 2 double + 2 single blocks, hidden 64."""
    uc = _flux_config(hidden=64, heads=4, depth=2, single=2, ctx=32, vec=32)
    return TinyModel(
        patcher=_build_patcher("Flux", uc, seed), family="flux", config_class="Flux",
        unet_config=dict(uc), make_cond=_cond_maker(32, _pooled(32)),
        make_latent=_latent_maker(16, False, 1), double_blocks=2, single_blocks=2,
        replace_mode="dit", block_path=("diffusion_model.double_blocks", "diffusion_model.single_blocks"),
        latent_channels=16, video=False, hidden_size=64)


def build_flux_bench(seed: int = 0) -> TinyModel:
    """Larger Flux for benchmarks: 4 double + 8 single blocks, hidden 256."""
    uc = _flux_config(hidden=256, heads=4, depth=4, single=8, ctx=64, vec=64)
    return TinyModel(
        patcher=_build_patcher("Flux", uc, seed), family="flux_bench", config_class="Flux",
        unet_config=dict(uc), make_cond=_cond_maker(64, _pooled(64)),
        make_latent=_latent_maker(16, False, 1), double_blocks=4, single_blocks=8,
        replace_mode="dit", block_path=("diffusion_model.double_blocks", "diffusion_model.single_blocks"),
        latent_channels=16, video=False, hidden_size=256)


def build_chroma(seed: int = 0) -> TinyModel:
    """Chroma: Flux layout with a modulation approximator instead of vec."""
    # img_in takes patchified channels (16 * 2 * 2 = 64); the approximator input
    # is 16 (timestep) + 16 (guidance) + 32 (modulation index) = 64 and its
    # output must equal the hidden size.
    uc = dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=32,
              hidden_size=64, mlp_ratio=4.0, num_heads=4, depth=2, depth_single_blocks=2,
              axes_dim=[4, 6, 6], theta=10000, patch_size=2, qkv_bias=True,
              in_dim=64, out_dim=64, hidden_dim=64, n_layers=2)
    return TinyModel(
        patcher=_build_patcher("Chroma", uc, seed), family="chroma", config_class="Chroma",
        unet_config=dict(uc), make_cond=_cond_maker(32, _chroma_extras),
        make_latent=_latent_maker(16, False, 1), double_blocks=2, single_blocks=2,
        replace_mode="dit", block_path=("diffusion_model.double_blocks", "diffusion_model.single_blocks"),
        latent_channels=16, video=False, hidden_size=64,
        notes="blocks listed in diffusion_model.skip_mmdit / skip_dit are not called at all")


def build_qwen_image(seed: int = 0) -> TinyModel:
    """Qwen-Image: 3 joint blocks (``double_block`` keys only), inner dim 64."""
    uc = dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16,
              num_layers=3, attention_head_dim=16, num_attention_heads=4,
              joint_attention_dim=32, axes_dims_rope=(4, 6, 6))
    return TinyModel(
        patcher=_build_patcher("QwenImage", uc, seed), family="qwen_image", config_class="QwenImage",
        unet_config=dict(uc), make_cond=_cond_maker(32, _no_extras),
        make_latent=_qwen_latent, double_blocks=3, single_blocks=0,
        replace_mode="dit", block_path=("diffusion_model.transformer_blocks",),
        latent_channels=16, video=False, hidden_size=64)


def build_hunyuan_video(seed: int = 0) -> TinyModel:
    """HunyuanVideo: 2 double + 2 single blocks, hidden 64, 3-D patches."""
    uc = dict(image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=32,
              context_in_dim=32, hidden_size=64, mlp_ratio=4.0, num_heads=4, depth=2,
              depth_single_blocks=2, axes_dim=[4, 6, 6], theta=256, patch_size=[1, 2, 2],
              qkv_bias=True, guidance_embed=True, byt5=False, meanflow=False)
    return TinyModel(
        patcher=_build_patcher("HunyuanVideo", uc, seed), family="hunyuan_video",
        config_class="HunyuanVideo", unet_config=dict(uc), make_cond=_cond_maker(32, _pooled(32)),
        make_latent=_latent_maker(16, True, 2), double_blocks=2, single_blocks=2,
        replace_mode="dit", block_path=("diffusion_model.double_blocks", "diffusion_model.single_blocks"),
        latent_channels=16, video=True, hidden_size=64)


def _wan_config(channels: int) -> dict:
    return dict(image_model="wan2.1", model_type="t2v", dim=64, ffn_dim=128, num_heads=4,
                num_layers=3, text_dim=32, in_dim=channels, out_dim=channels,
                patch_size=(1, 2, 2), freq_dim=256, window_size=(-1, -1), qk_norm=True,
                cross_attn_norm=True, eps=1e-6)


def build_wan21_t2v(seed: int = 0) -> TinyModel:
    """Wan 2.1 T2V: 3 blocks (``double_block`` keys only), dim 64."""
    uc = _wan_config(16)
    return TinyModel(
        patcher=_build_patcher("WAN21_T2V", uc, seed), family="wan21_t2v", config_class="WAN21_T2V",
        unet_config=dict(uc), make_cond=_cond_maker(32, _no_extras),
        make_latent=_latent_maker(16, True, 2), double_blocks=3, single_blocks=0,
        replace_mode="dit", block_path=("diffusion_model.blocks",),
        latent_channels=16, video=True, hidden_size=64)


def build_wan22_t2v(seed: int = 0) -> TinyModel:
    """Wan 2.2 TI2V-5B layout: 48-channel latent, otherwise as Wan 2.1."""
    uc = _wan_config(48)
    return TinyModel(
        patcher=_build_patcher("WAN22_T2V", uc, seed), family="wan22_t2v", config_class="WAN22_T2V",
        unet_config=dict(uc), make_cond=_cond_maker(32, _no_extras),
        make_latent=_latent_maker(48, True, 2), double_blocks=3, single_blocks=0,
        replace_mode="dit", block_path=("diffusion_model.blocks",),
        latent_channels=48, video=True, hidden_size=64)


def build_lumina2(seed: int = 0) -> TinyModel:
    """Lumina 2 (NextDiT): 3 main layers; no ``dit`` block replacement exists."""
    uc = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=64, n_layers=3,
              n_refiner_layers=1, n_heads=4, n_kv_heads=2, multiple_of=16, norm_eps=1e-5,
              qk_norm=True, cap_feat_dim=32, axes_dims=[4, 6, 6], axes_lens=[300, 512, 512])
    return TinyModel(
        patcher=_build_patcher("Lumina2", uc, seed), family="lumina2", config_class="Lumina2",
        unet_config=dict(uc), make_cond=_cond_maker(32, _lumina_mask),
        make_latent=_latent_maker(16, False, 1), double_blocks=3, single_blocks=0,
        replace_mode="object_patch", block_path=("diffusion_model.layers",),
        latent_channels=16, video=False, hidden_size=64)


def build_sd3(seed: int = 0) -> TinyModel:
    """SD3 MMDiT: 2 joint blocks (hidden is 64 * depth = 128, fixed by the model)."""
    uc = dict(in_channels=16, out_channels=16, patch_size=2, depth=2, adm_in_channels=32,
              context_embedder_config={"target": "torch.nn.Linear",
                                       "params": {"in_features": 32, "out_features": 128}},
              pos_embed_max_size=16, num_patches=256, pos_embed_scaling_factor=None,
              input_size=None, x_block_self_attn_layers=[])
    return TinyModel(
        patcher=_build_patcher("SD3", uc, seed), family="sd3", config_class="SD3",
        unet_config=dict(uc), make_cond=_cond_maker(32, _pooled(32)),
        make_latent=_latent_maker(16, False, 1), double_blocks=2, single_blocks=0,
        replace_mode="dit", block_path=("diffusion_model.joint_blocks",),
        latent_channels=16, video=False, hidden_size=128,
        notes="MMDiT.forward has no DIFFUSION_MODEL wrapper executor at this commit")


def build_auraflow(seed: int = 0) -> TinyModel:
    """AuraFlow: 2 double + 1 single block, dim 64, 4-channel SDXL latent."""
    uc = dict(in_channels=4, out_channels=4, patch_size=2, dim=64, n_layers=3,
              n_double_layers=2, n_heads=4, global_conddim=64, cond_seq_dim=32, max_seq=256)
    return TinyModel(
        patcher=_build_patcher("AuraFlow", uc, seed), family="auraflow", config_class="AuraFlow",
        unet_config=dict(uc), make_cond=_cond_maker(32, _no_extras),
        make_latent=_latent_maker(4, False, 1), double_blocks=2, single_blocks=1,
        replace_mode="dit", block_path=("diffusion_model.double_layers", "diffusion_model.single_layers"),
        latent_channels=4, video=False, hidden_size=64)


def build_sd15(seed: int = 0) -> TinyModel:
    """SD 1.5-style UNet, 2 levels, 32 base channels: no block replacement."""
    uc = dict(use_checkpoint=False, image_size=32, use_spatial_transformer=True, legacy=False,
              adm_in_channels=None, in_channels=4, out_channels=4, model_channels=32,
              num_res_blocks=[1, 1], transformer_depth=[1, 1],
              transformer_depth_output=[1, 1, 1, 1], channel_mult=[1, 2],
              transformer_depth_middle=1, use_linear_in_transformer=False, context_dim=32,
              use_temporal_resblock=False, use_temporal_attention=False)
    return TinyModel(
        patcher=_build_patcher("SD15", uc, seed), family="sd15", config_class="SD15",
        unet_config=dict(uc), make_cond=_cond_maker(32, _no_extras),
        make_latent=_latent_maker(4, False, 1), double_blocks=0, single_blocks=0,
        replace_mode="none", block_path=(), latent_channels=4, video=False, hidden_size=32)


#: Family name -> builder. Ordered: DiTs with block replacement first.
BUILDERS: dict[str, Callable[..., TinyModel]] = {
    "flux": build_flux,
    "chroma": build_chroma,
    "qwen_image": build_qwen_image,
    "hunyuan_video": build_hunyuan_video,
    "wan21_t2v": build_wan21_t2v,
    "wan22_t2v": build_wan22_t2v,
    "sd3": build_sd3,
    "auraflow": build_auraflow,
    "lumina2": build_lumina2,
    "sd15": build_sd15,
    "flux_bench": build_flux_bench,
}

#: Every family name (readable without ComfyUI).
FAMILIES: tuple[str, ...] = tuple(BUILDERS)

#: Families whose blocks are reachable through ``patches_replace["dit"]``.
DIT_FAMILIES: tuple[str, ...] = ("flux", "chroma", "qwen_image", "hunyuan_video",
                                 "wan21_t2v", "wan22_t2v", "sd3", "auraflow", "flux_bench")


def build(family: str, seed: int = 0) -> TinyModel:
    """Build the tiny model of ``family`` with weights drawn from ``seed``."""
    try:
        builder = BUILDERS[family]
    except KeyError:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}") from None
    return builder(seed)
