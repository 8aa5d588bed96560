"""DigitFlux: the ComfyUI-native fidelity testbed (a trained ComfyUI Flux that draws MNIST digits).

Everything that runs is ComfyUI's own code: the denoiser is a ``comfy.ldm.flux.model.Flux`` built from
a ``comfy.supported_models.Flux`` config, the text encoder is a ``comfy.sd.CLIP`` with ComfyUI's CLIP
tokenizer files (a two-layer CLIP text model, 16 wide, random fixed weights), prompts are encoded the
way ``CLIPTextEncode`` does it and sampling goes through ``comfy.sample``. Only the numbers are small:
the Flux has 2 double and 4 single blocks, hidden 96, and was trained here for minutes on a CPU by
:mod:`tools.train_digit_flux` (reproducible: same seed and thread count, same file).

Parametrisation (what ComfyUI's ``ModelSamplingFlux`` with ``CONST`` expects): with ``sigma`` in
``[0, 1]`` the model input is ``x = sigma * noise + (1 - sigma) * x0`` and the denoiser's output ``v``
is turned into ``x0_hat = x - sigma * v``; the Flux receives ``sigma`` itself as its timestep. So the
model is trained on the rectified-flow velocity ``v = noise - x0`` at ``t = sigma``.

Latent space (a lossless "VAE" of our own): a 28x28 digit in ``[-1, 1]`` is padded with background
(-1) to 32x32 and folded by space-to-depth into ``16 x 8 x 8`` (each channel one pixel of a 4x4
block); the Flux then patchifies 2x2, so an image is 16 tokens of 8x8 pixels. ComfyUI's Flux latent
format maps a latent ``z`` to the model's space as ``(z - shift) * scale``; :func:`encode_pixels`
applies the inverse, so the model's space *is* the folded pixel space and :func:`decode_latent` is
exact.

Prompts: ten digit words in four phrasings (:data:`TEMPLATES`), e.g. "a handwritten digit three".
The empty prompt is the unconditional input (the model was trained with 10 % of prompts dropped to
it), so classifier-free guidance works with an empty negative. Held-out protocol: calibrate on even
digits, evaluate on odd digits with other seeds (:func:`calibration_prompts`, :func:`evaluation_prompts`).

The distilled variant (FLUX.1-dev's regime): ``load(variant="distilled")`` is a student Flux of the
same size with a guidance embedding (``guidance_embed: True``, the architecture of FLUX.1-dev),
distilled from this model by :mod:`tools.distill_digit_flux`: called once per step at cfg 1 with the
strength in the conditioning's ``guidance`` (as the ``FluxGuidance`` node sets it), it gives what the
teacher gives with classifier-free guidance at that scale. It is sampled at :data:`DISTILLED_CFG`
with guidance :data:`DISTILLED_GUIDANCE`; its file holds only the Flux and takes the text encoder from
the teacher's file (checked by digest).

This module imports ``comfy`` only inside functions; the ComfyUI checkout must be importable and set
to the CPU first (``tests/comfyui/conftest.py`` does both).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

#: The shipped weights (text encoder and Flux in one fp16 safetensors file).
WEIGHTS = Path(__file__).resolve().parent / "weights" / "digit_flux.safetensors"
WEIGHTS_FORMAT = "otcache.testbed.digit_flux"

#: The guidance-distilled student (only its Flux, fp16; the text encoder is the teacher's).
DISTILLED_WEIGHTS = WEIGHTS.with_name("digit_flux_distilled.safetensors")
DISTILLED_FORMAT = "otcache.testbed.digit_flux.distilled"

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: Phrasings of a digit prompt; ``{word}`` is the digit's name, ``{numeral}`` the digit itself.
TEMPLATES = (
    "a handwritten digit {word}",
    "the number {numeral}",
    "{word}, written by hand",
    "a picture of the digit {word}",
)

#: Prompt tokens after padding: start token, up to 6 words, end token (longer prompts are chunked).
TEXT_TOKENS = 8

#: The CLIP text model (ComfyUI ``comfy.clip_model.CLIPTextModel`` config keys; vocabulary of ComfyUI's
#: CLIP tokenizer).
CLIP_CONFIG = {
    "hidden_act": "quick_gelu", "hidden_size": 16, "intermediate_size": 64, "layer_norm_eps": 1e-05,
    "max_position_embeddings": TEXT_TOKENS, "num_attention_heads": 2, "num_hidden_layers": 2,
    "projection_dim": 16, "vocab_size": 49408, "eos_token_id": 49407, "bos_token_id": 0,
}

#: ``comfy.supported_models.Flux`` unet config: schnell-style (no guidance embedding: real CFG).
FLUX_CONFIG = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 16, "context_in_dim": 16,
    "hidden_size": 96, "mlp_ratio": 4.0, "num_heads": 4, "depth": 2, "depth_single_blocks": 4,
    "axes_dim": [8, 8, 8], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": False,
}

#: The distilled student's unet config: FLUX.1-dev's architecture (a guidance embedding), else the same.
DISTILLED_FLUX_CONFIG = {**FLUX_CONFIG, "guidance_embed": True}

#: Seed of the text encoder's random weights (drawn by ``tiny_models.init_weights``; then shipped).
CLIP_SEED = 1234

IMAGE = 28
PADDED = 32
FOLD = 4
LATENT = PADDED // FOLD  # 8
CHANNELS = 16

#: The sampling setting the testbed is trained for and measured at.
STEPS = 30
CFG = 4.0
SAMPLER = "euler"
SCHEDULER = "simple"

#: The distilled variant's setting (same steps, sampler and scheduler): cfg 1, so one model call per
#: step, and the guidance strength it is sampled at (the teacher's cfg, which it was distilled to give).
DISTILLED_CFG = 1.0
DISTILLED_GUIDANCE = 4.0


def prompt(digit: int, template: int = 0) -> str:
    """The prompt for ``digit`` (0..9) in phrasing ``template`` (index into :data:`TEMPLATES`)."""
    return TEMPLATES[template].format(word=DIGIT_WORDS[digit], numeral=str(digit))


ALL_DIGITS, CALIBRATION_DIGITS, EVALUATION_DIGITS = range(10), range(0, 10, 2), range(1, 10, 2)
"""The held-out protocol of every digit testbed: calibrate on even digits, evaluate on odd ones."""


def digit_prompts(digits: range, variants: int, make: Callable[[int, int], str]) -> list[str]:
    """``make(d, v)`` for each of ``digits`` and every variant ``v`` (a phrasing, a motion), digit-major."""
    return [make(d, v) for d in digits for v in range(variants)]


def all_prompts() -> list[str]:
    """Every training prompt: digit-major, ``prompt(d, t)`` at index ``d * len(TEMPLATES) + t``."""
    return digit_prompts(ALL_DIGITS, len(TEMPLATES), prompt)


def calibration_prompts() -> list[str]:
    """The calibration side of the held-out split: even digits, every phrasing."""
    return digit_prompts(CALIBRATION_DIGITS, len(TEMPLATES), prompt)


def evaluation_prompts() -> list[str]:
    """The evaluation side: odd digits, every phrasing (never used to calibrate)."""
    return digit_prompts(EVALUATION_DIGITS, len(TEMPLATES), prompt)


def prompt_digit(text: str) -> int:
    """The digit a testbed prompt asks for (``ValueError`` for other text)."""
    for d in range(10):
        if text in (prompt(d, t) for t in range(len(TEMPLATES))):
            return d
    raise ValueError(f"not a testbed prompt: {text!r}")


# --------------------------------------------------------------------------
# Latent space
# --------------------------------------------------------------------------

def _latent_format() -> Any:
    import comfy.latent_formats

    return comfy.latent_formats.Flux()


def fold(pixels: torch.Tensor) -> torch.Tensor:
    """``[N, 1, 28, 28]`` in [-1, 1] -> model space ``[N, 16, 8, 8]`` (background padding, space-to-depth)."""
    pad = (PADDED - IMAGE) // 2
    padded = F.pad(pixels, (pad, pad, pad, pad), value=-1.0)
    return F.pixel_unshuffle(padded, FOLD)


def unfold(model_space: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fold`: ``[N, 16, 8, 8]`` -> ``[N, 1, 28, 28]``."""
    pad = (PADDED - IMAGE) // 2
    return F.pixel_shuffle(model_space, FOLD)[:, :, pad : pad + IMAGE, pad : pad + IMAGE]


def encode_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """Digits ``[N, 1, 28, 28]`` in [-1, 1] -> a ComfyUI latent whose ``process_in`` is :func:`fold`."""
    return _latent_format().process_out(fold(pixels))


def decode_latent(latent: torch.Tensor) -> torch.Tensor:
    """A ComfyUI latent (what ``comfy.sample.sample`` returns) -> digits ``[N, 1, 28, 28]`` in [-1, 1]."""
    return unfold(_latent_format().process_in(latent.float()))


class DigitVAE:
    """The lossless "VAE" as a ComfyUI ``VAE`` is used: ``decode`` takes a ComfyUI latent and returns
    images ``[N, 28, 28, 1]`` in [0, 1] (what a VAE Decode node outputs), so it can be connected where a
    workflow connects its VAE (OTCache Calibrate's ``vae``)."""

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return ((decode_latent(latent) + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1)


def empty_latent(batch: int = 1) -> torch.Tensor:
    """The ``EmptyLatentImage``-style starting latent for ``batch`` digits."""
    return torch.zeros((batch, CHANNELS, LATENT, LATENT))


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------

def _clip_target() -> Any:
    import comfy.sd1_clip
    import comfy.supported_models_base

    tokenizer = partial(comfy.sd1_clip.SDTokenizer, max_length=TEXT_TOKENS, embedding_size=CLIP_CONFIG["hidden_size"])
    clip_model = partial(comfy.sd1_clip.SDClipModel, max_length=TEXT_TOKENS, textmodel_json_config=dict(CLIP_CONFIG),
                         return_projected_pooled=True)
    return comfy.supported_models_base.ClipTarget(
        partial(comfy.sd1_clip.SD1Tokenizer, tokenizer=tokenizer),
        partial(comfy.sd1_clip.SD1ClipModel, clip_model=clip_model),
    )


def build_clip(state: dict[str, torch.Tensor] | None = None) -> Any:
    """A ``comfy.sd.CLIP`` on the CPU in float32, with ``state`` loaded (or fresh seeded weights)."""
    import comfy.sd

    from .tiny_models import init_weights

    clip = comfy.sd.CLIP(target=_clip_target(), model_options={"dtype": torch.float32,
                                                                "load_device": torch.device("cpu"),
                                                                "offload_device": torch.device("cpu")})
    module = clip.cond_stage_model
    if state is None:
        init_weights(module, CLIP_SEED)
    else:
        _load_exactly(module, state, "text encoder")
    return clip


def build_flux(state: dict[str, torch.Tensor] | None = None, seed: int = 0, config: dict | None = None) -> Any:
    """A ``ModelPatcher`` of the testbed Flux on the CPU in float32.

    ``state`` is loaded when given; otherwise the weights are the training start: seeded random
    weights with the modulations and the final layer zeroed (adaLN-Zero, as DiT trains from scratch:
    every block starts as the identity and the model's output as zero).
    """
    import comfy.model_patcher
    import comfy.supported_models

    from .tiny_models import init_weights

    model_config = comfy.supported_models.Flux(dict(config or FLUX_CONFIG))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    dm = model.diffusion_model
    if state is None:
        init_weights(dm, seed)
        with torch.no_grad():
            zeroed = [m.lin for m in dm.modules() if type(m).__name__ == "Modulation"]
            zeroed += [dm.final_layer.linear, dm.final_layer.adaLN_modulation[-1]]
            for layer in zeroed:
                layer.weight.zero_()
                layer.bias.zero_()
    else:
        _load_exactly(dm, state, "Flux")
    model.eval()
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def _load_exactly(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load ``state`` (cast to the module's dtypes); every parameter must be there and fit."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"DigitFlux {what} weights do not fit the config "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


@dataclass
class DigitFlux:
    """The loaded testbed: the Flux ``patcher`` (clone before patching), the ``clip``, the file metadata
    and the sampling setting: ``cfg`` and, for the distilled variant, the ``guidance`` strength."""

    patcher: Any
    clip: Any
    metadata: dict[str, str]
    cfg: float = CFG
    guidance: float | None = None

    def encode(self, text: str) -> list:
        """Conditioning of ``text`` exactly as ComfyUI's ``CLIPTextEncode`` node makes it."""
        return encode(self.clip, text)

    def positive(self, text: str) -> list:
        """The positive to sample with: ``CLIPTextEncode``, then ``FluxGuidance`` at :attr:`guidance`
        for the distilled variant (the teacher's conditioning has no guidance)."""
        cond = self.encode(text)
        return cond if self.guidance is None else with_guidance(cond, self.guidance)

    def negative(self) -> list:
        """The unconditional input: the empty prompt. The distilled variant, at cfg 1, never runs it
        (ComfyUI skips the negative at cfg 1); it is the input its teacher was guided against."""
        return self.encode("")


def encode(clip: Any, text: str) -> list:
    """``CLIPTextEncode``: tokenize, then encode with the CLIP's scheduled encoding."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def with_guidance(conditioning: list, guidance: float) -> list:
    """``FluxGuidance``: a copy of ``conditioning`` with its ``guidance`` set, which ComfyUI's Flux
    model (``comfy.model_base.Flux.extra_conds``) feeds to the guidance embedding."""
    import node_helpers

    return node_helpers.conditioning_set_values(conditioning, {"guidance": guidance})


def split_state(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A weight file's tensors -> (text encoder state, Flux state), by their key prefix."""
    clip = {k[len("text_encoder."):]: v for k, v in tensors.items() if k.startswith("text_encoder.")}
    flux = {k[len("diffusion_model."):]: v for k, v in tensors.items() if k.startswith("diffusion_model.")}
    return clip, flux


#: variant -> (its default file, its format, the tool that makes it).
VARIANTS = {
    "teacher": (WEIGHTS, WEIGHTS_FORMAT, "tools/train_digit_flux.py --data <mnist>"),
    "distilled": (DISTILLED_WEIGHTS, DISTILLED_FORMAT, "tools/distill_digit_flux.py --data <mnist>"),
}


def _read(file: Path, variant: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and tensors of a ``variant`` weight file, checked to be one."""
    from safetensors.torch import load_file, safe_open

    _, expected, tool = VARIANTS[variant]
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: make it with 'python {tool}'")
    with safe_open(str(file), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    if metadata.get("format") != expected:
        raise ValueError(f"{file} holds {metadata.get('format')!r}, expected {expected!r} (variant {variant!r})")
    return metadata, load_file(str(file))


def text_encoder_digest(clip: Any) -> str:
    """Fingerprint of the text encoder's weights (what the distilled file checks its teacher's CLIP by)."""
    from otcache_core.testbed.train import state_digest

    return state_digest(clip.cond_stage_model)


def with_another_text_encoder(file: str | Path, out: str | Path) -> Path:
    """A copy of the weight ``file`` at ``out`` whose text encoder differs by one changed tensor (the rest,
    metadata included, as it was): what the files that borrow DigitFlux's encoder must refuse."""
    from safetensors.torch import load_file, safe_open, save_file

    with safe_open(str(file), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(file))
    key = next(k for k in sorted(tensors) if k.startswith("text_encoder."))
    tensors[key] = tensors[key] + 1
    save_file(tensors, str(out), metadata=metadata)
    return Path(out)


def load(path: str | Path | None = None, variant: str = "teacher", teacher: str | Path | None = None) -> DigitFlux:
    """Load the shipped testbed (or ``path``), float32 on the CPU.

    ``variant="teacher"`` (the default) is DigitFlux itself, sampled with real CFG at :data:`CFG`;
    ``variant="distilled"`` is its guidance-distilled student, sampled at :data:`DISTILLED_CFG` with
    guidance :data:`DISTILLED_GUIDANCE`, whose text encoder comes from ``teacher`` (default
    :data:`WEIGHTS`) and must be the one it was distilled with.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    if teacher is not None and variant != "distilled":
        raise ValueError("teacher= names the text encoder's file of the distilled variant; pass variant='distilled'")
    file = Path(path) if path is not None else VARIANTS[variant][0]
    metadata, tensors = _read(file, variant)
    clip_state, flux_state = split_state(tensors)
    flux = build_flux(flux_state, config=json.loads(metadata["flux_config"]))
    if variant == "teacher":
        return DigitFlux(flux, build_clip(clip_state), metadata)
    teacher_file = Path(teacher) if teacher is not None else WEIGHTS
    clip = build_clip(split_state(_read(teacher_file, "teacher")[1])[0])
    if text_encoder_digest(clip) != metadata["text_encoder_digest"]:
        raise ValueError(f"{file} was distilled with another text encoder than the one in {teacher_file}: "
                         f"pass the teacher it names ({metadata.get('teacher')}, SHA-256 "
                         f"{metadata.get('teacher_sha256', '?')[:16]}...) or distil it again")
    return DigitFlux(flux, clip, metadata, cfg=DISTILLED_CFG, guidance=DISTILLED_GUIDANCE)
