"""Small LoRA files for the tiny test models, in the key format ComfyUI's LoRA loader reads.

``diffusion_model.<module>.lora_up.weight`` / ``.lora_down.weight`` / ``.alpha`` (the "generic" format
``comfy.lora.model_lora_keys_unet`` maps to ``diffusion_model.<module>.weight``), on the attention and
feed-forward weights of every transformer block; random, rank 4, deterministic per seed. Loaded by
ComfyUI's own ``LoraLoaderModelOnly`` from a ``loras`` model folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

RANK = 4
BLOCK_PREFIXES = ("double_blocks.", "single_blocks.", "blocks.", "transformer_blocks.")
"""Where the targeted weights live (Flux, Wan, Qwen-Image)."""


def lora_tensors(model_state: dict[str, torch.Tensor], seed: int, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """A LoRA over every 2-D block weight of ``model_state`` (the diffusion model's own keys)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key in sorted(model_state):
        shape = tuple(model_state[key].shape)
        if not (key.endswith(".weight") and key.startswith(BLOCK_PREFIXES) and len(shape) == 2):
            continue
        module = f"diffusion_model.{key[:-len('.weight')]}"
        rows, cols = shape
        out[f"{module}.lora_down.weight"] = torch.randn(RANK, cols, generator=g) / cols ** 0.5
        out[f"{module}.lora_up.weight"] = torch.randn(rows, RANK, generator=g) * scale / RANK ** 0.5
        out[f"{module}.alpha"] = torch.tensor(float(RANK))
    if not out:
        raise ValueError("no block weights to put a LoRA on")
    return out


def save_lora(path: Path, model_state: dict[str, torch.Tensor], seed: int, scale: float = 0.5) -> Path:
    from safetensors.torch import save_file

    save_file(lora_tensors(model_state, seed, scale), str(path))
    return path
