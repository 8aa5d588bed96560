"""GGUF files of small real ComfyUI models, for the tests with the ComfyUI-GGUF pack (city96/ComfyUI-GGUF).

The files are laid out the way the pack's own converter (``tools/convert.py``) writes them and its
loader (``loader.py``) reads them: ``general.architecture`` names the model (``flux``, ``wan``), tensor
names are the diffusion model's own state-dict keys, 2-D weights of more than 1024 values are
quantized, everything else (biases, norms, Wan's ``modulation`` parameters, the 5-D patch embedding)
stays F32. Writing uses the ``gguf`` package (PyPI): ``GGUFWriter`` and ``gguf.quants.quantize`` for
Q8_0. The package has no encoder for the K-quants (it only decodes them), so :func:`quantize_q6_k`
encodes Q6_K here; the tests check it against the package's decoder and the pack's own.

Which models: the pack's loader builds the model with ComfyUI's detection
(``comfy.sd.load_diffusion_model_state_dict``), which reads a Wan's sizes from its tensors (the tiny Wan
of ``comfy_server.py``, dim 256, loads) but fixes a Flux at hidden size 3072, 24 heads and a 4096-wide
text input; its depth is counted and must include a double block. So the Flux here is the smallest one
that detection builds: one double block, no single block, no guidance embedding (391 M parameters;
about 4 s per model call on one CPU thread, almost all of it the pack dequantizing the weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

Q8_0 = "Q8_0"
Q6_K = "Q6_K"
QTYPES = (Q8_0, Q6_K)
"""The quantizations the tests write: the common 8-bit one and a K-quant."""

QUANTIZE_ABOVE = 1024
"""Tensors of at most this many values stay F32 (as the pack's converter does)."""

SMALLEST_FLUX_CONFIG = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=16, context_in_dim=4096,
                            hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=1, depth_single_blocks=0,
                            axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=False)
"""The smallest Flux ComfyUI's detection builds from a state dict (see the module doc)."""

FLUX_CONTEXT, FLUX_POOLED = 4096, 16
WAN_CONTEXT = 4096


# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------

def quantize_q6_k(data: np.ndarray) -> np.ndarray:
    """Q6_K blocks of ``data`` (last axis a multiple of 256), one row of bytes per row of ``data``.

    A block of 256 values holds 16 sub-blocks of 16: 6-bit values ``q - 32`` times an int8 scale per
    sub-block times one fp16 ``d`` per block; bytes: 128 low nibbles, 64 bytes of high 2-bit pairs, 16
    scales, ``d`` (the layout ``gguf.quants.Q6_K.dequantize_blocks`` reads). Plain rounding, no error
    search (llama.cpp searches scales; any valid block decodes the same way).
    """
    rows = np.asarray(data, dtype=np.float32).reshape(-1, data.shape[-1])
    if rows.shape[1] % 256:
        raise ValueError(f"Q6_K needs rows of a multiple of 256 values, got {rows.shape[1]}")
    blocks = rows.reshape(-1, 16, 16)
    sub_scale = np.abs(blocks).max(axis=2) / 31.0  # every value then rounds into [-31, 31]
    d = (sub_scale.max(axis=1, keepdims=True) / 127.0).astype(np.float16)
    d32 = d.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        scales = np.where(d32 > 0, np.rint(sub_scale / d32), 0).clip(0, 127).astype(np.int8)
        step = d32 * scales.astype(np.float32)
        q = np.where(step[..., None] > 0, np.rint(blocks / step[..., None]), 0)
    q = (q.clip(-32, 31) + 32).astype(np.uint8).reshape(-1, 256)
    ql = np.empty((q.shape[0], 128), dtype=np.uint8)
    qh = np.zeros((q.shape[0], 64), dtype=np.uint8)
    for half in range(2):
        part = q[:, 128 * half: 128 * (half + 1)]
        ql[:, 64 * half: 64 * (half + 1)] = (part[:, :64] & 0x0F) | ((part[:, 64:] & 0x0F) << 4)
        for shift in range(4):
            qh[:, 32 * half: 32 * (half + 1)] |= ((part[:, 32 * shift: 32 * (shift + 1)] >> 4) & 0x03) << (2 * shift)
    packed = np.concatenate([ql, qh, scales.view(np.uint8), d.view(np.uint8)], axis=1)
    return packed.reshape(rows.shape[0], -1)


def _encoded(key: str, array: np.ndarray, qtype: str) -> tuple[np.ndarray, Any]:
    """``(bytes or values, GGML type)`` of one tensor; a shape the type cannot hold falls back to Q8_0 or F32."""
    import gguf

    T = gguf.GGMLQuantizationType
    if array.ndim != 2 or array.size <= QUANTIZE_ABOVE:
        return array, T.F32
    if qtype == Q6_K and array.shape[-1] % 256 == 0:
        return quantize_q6_k(array), T.Q6_K
    if array.shape[-1] % 32 == 0:
        return gguf.quants.quantize(array, T.Q8_0), T.Q8_0
    return array, T.F32


def write_gguf(path: Path, state_dict: dict[str, torch.Tensor], arch: str, qtype: str) -> dict[str, int]:
    """Write ``state_dict`` as a GGUF model file of architecture ``arch``; returns tensors per GGML type."""
    import gguf

    if qtype not in QTYPES:
        raise ValueError(f"qtype must be one of {QTYPES}, got {qtype!r}")
    writer = gguf.GGUFWriter(path=None, arch=arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if qtype == Q8_0 else gguf.LlamaFileType.MOSTLY_Q6_K)
    counts: dict[str, int] = {}
    for key, tensor in state_dict.items():
        data, ggml_type = _encoded(key, tensor.detach().float().numpy(), qtype)
        writer.add_tensor(key, data, raw_dtype=ggml_type)
        counts[ggml_type.name] = counts.get(ggml_type.name, 0) + 1
    writer.write_header_to_file(path=str(path))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts


# --------------------------------------------------------------------------------------------------
# The models
# --------------------------------------------------------------------------------------------------

def smallest_flux_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights of :data:`SMALLEST_FLUX_CONFIG`, filled as ``tiny_models`` fills every test model."""
    from .tiny_models import _build_patcher

    patcher = _build_patcher("Flux", SMALLEST_FLUX_CONFIG, seed=seed)
    return {k: v.contiguous() for k, v in patcher.model.diffusion_model.state_dict().items()}


def state_dict_of(family: str) -> dict[str, torch.Tensor]:
    """``flux`` (the smallest detected Flux) or ``wan`` (the tiny Wan of the test server)."""
    from .comfy_server import tiny_wan_state_dict

    if family == "flux":
        return smallest_flux_state_dict()
    if family == "wan":
        return tiny_wan_state_dict()
    raise ValueError(f"family must be flux or wan, got {family!r}")


@dataclass(frozen=True)
class GGUFFile:
    """One written model file."""

    family: str
    qtype: str
    path: Path
    counts: dict[str, int]
    """Tensors per GGML type (``{"Q6_K": 12, "Q8_0": 1, "F32": 40}``)."""


def tiny_model_of(patcher: Any, family: str):
    """A ``tiny_models.TinyModel`` around a loaded Flux or Wan patcher: its conditioning and latents."""
    from .tiny_models import TinyModel, _cond_maker, _latent_maker, _no_extras, _pooled

    if family == "flux":
        return TinyModel(patcher=patcher, family="flux", config_class="Flux", unet_config=dict(SMALLEST_FLUX_CONFIG),
                         make_cond=_cond_maker(FLUX_CONTEXT, _pooled(FLUX_POOLED)),
                         make_latent=_latent_maker(16, False, 1), double_blocks=1, single_blocks=0,
                         replace_mode="dit", block_path=("diffusion_model.double_blocks",), latent_channels=16,
                         video=False, hidden_size=3072)
    return TinyModel(patcher=patcher, family="wan21_t2v", config_class="WAN21_T2V", unet_config={},
                     make_cond=_cond_maker(WAN_CONTEXT, _no_extras), make_latent=_latent_maker(16, True, 1),
                     double_blocks=3, single_blocks=0, replace_mode="dit", block_path=("diffusion_model.blocks",),
                     latent_channels=16, video=True, hidden_size=256)


def load_unquantized(state_dict: dict[str, torch.Tensor]) -> Any:
    """The same weights in float32 through ComfyUI's own loading (what UNETLoader does with a safetensors file)."""
    import comfy.sd

    patcher = comfy.sd.load_diffusion_model_state_dict(dict(state_dict))
    if patcher is None:
        raise RuntimeError("ComfyUI did not recognise the model")
    return patcher
