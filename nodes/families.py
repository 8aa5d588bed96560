"""Which models OTCache can patch at block level, and how.

Detection reads the class of the loaded diffusion model (its MRO, most specific first) and maps it to
a family with its block *stages*: the consecutive runs of transformer blocks whose combined residual
is cached (Flux: the double-stream blocks, then the single-stream blocks). Every model, whatever its
family, can use the ``model`` reuse mode; these specs only say where ``blocks`` mode is possible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StageSpec:
    """One stage: replacement key ``kind`` over the module list ``attr`` of the diffusion model."""

    kind: str
    """``"double_block"`` / ``"single_block"`` (dit replacement keys) or ``"layer"`` (object patch)."""
    attr: str
    skip_attr: str | None = None
    """A list attribute of block indices the model never calls (Chroma's ``skip_mmdit``/``skip_dit``)."""


@dataclass(frozen=True)
class FamilySpec:
    family: str
    stages: tuple[StageSpec, ...]
    patch: str
    """``"dit"``: ``set_model_patch_replace``; ``"object"``: ``add_object_patch`` on each block's
    ``forward``; ``"none"``: no block-level hook (model mode only)."""
    note: str = ""


_DOUBLE = StageSpec("double_block", "double_blocks")
_SINGLE = StageSpec("single_block", "single_blocks")

# Keys are "<module>.<class>" of the diffusion model (or a base class).
_FAMILIES: dict[str, FamilySpec] = {
    "comfy.ldm.chroma.model.Chroma": FamilySpec(
        "chroma",
        (StageSpec("double_block", "double_blocks", "skip_mmdit"), StageSpec("single_block", "single_blocks", "skip_dit")),
        "dit",
    ),
    "comfy.ldm.flux.model.Flux": FamilySpec("flux", (_DOUBLE, _SINGLE), "dit"),
    "comfy.ldm.hunyuan_video.model.HunyuanVideo": FamilySpec("hunyuan_video", (_DOUBLE, _SINGLE), "dit"),
    "comfy.ldm.qwen_image.model.QwenImageTransformer2DModel": FamilySpec(
        "qwen_image", (StageSpec("double_block", "transformer_blocks"),), "dit"
    ),
    "comfy.ldm.wan.model.WanModel_S2V": FamilySpec(
        "wan", (), "none", "Wan S2V passes no transformer_options to its blocks: model mode only"
    ),
    "comfy.ldm.wan.model.WanModel": FamilySpec("wan", (StageSpec("double_block", "blocks"),), "dit"),
    "comfy.ldm.lumina.model.NextDiT": FamilySpec("lumina2", (StageSpec("layer", "layers"),), "object"),
    "comfy.ldm.aura.mmdit.MMDiT": FamilySpec(
        "auraflow", (StageSpec("double_block", "double_layers"), StageSpec("single_block", "single_layers")), "dit"
    ),
    "comfy.ldm.modules.diffusionmodules.mmdit.MMDiT": FamilySpec(
        "sd3", (StageSpec("double_block", "joint_blocks"),), "dit"
    ),
    "comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel": FamilySpec("unet", (), "none"),
}


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def detect_family(diffusion_model: Any) -> FamilySpec:
    """The family of a loaded diffusion model; unknown models get a model-mode-only spec."""
    for cls in type(diffusion_model).__mro__:
        spec = _FAMILIES.get(_qualname(cls))
        if spec is not None:
            return spec
    name = type(diffusion_model).__name__
    return FamilySpec(name.lower(), (), "none", f"{name} has no known block-level hook: model mode only")


def stage_blocks(diffusion_model: Any, stage: StageSpec) -> list[int]:
    """Indices of the blocks of ``stage`` that the model actually calls, in call order."""
    blocks = getattr(diffusion_model, stage.attr, None)
    if blocks is None:
        return []
    skipped = set(getattr(diffusion_model, stage.skip_attr, None) or ()) if stage.skip_attr else set()
    return [i for i in range(len(blocks)) if i not in skipped]


def model_identity(patcher: Any) -> dict[str, str]:
    """What a calibration records about the model: family, config class and diffusion-model class."""
    base = patcher.model
    dm = base.diffusion_model
    return {
        "family": detect_family(dm).family,
        "config": type(getattr(base, "model_config", None)).__name__,
        "diffusion_model": _qualname(type(dm)),
    }
