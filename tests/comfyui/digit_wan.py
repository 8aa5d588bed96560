"""DigitWan: the ComfyUI-native video testbed (a trained Wan 2.1 T2V that draws moving MNIST digits).

Everything that runs is ComfyUI's own code: the denoiser is a ``comfy.ldm.wan.model.WanModel`` built
from a ``comfy.supported_models.WAN21_T2V`` config (so ComfyUI's Wan model sampling: discrete flow,
``CONST``, shift 8.0), the text encoder is DigitFlux's (``digit_flux.build_clip``: ComfyUI's CLIP
tokenizer, a two-layer CLIP text model 16 wide with random fixed weights, read from the DigitFlux
weight file, so a prompt encodes exactly as it does there), prompts are encoded the way
``CLIPTextEncode`` does it and sampling goes through ``comfy.sample``. Only the numbers are small: the
Wan has 4 blocks, dim 128, and was trained here on a 2-core CPU by :mod:`tools.train_digit_wan`
(reproducible: same arguments and thread count, same file).

Parametrisation (ComfyUI's ``ModelSamplingDiscreteFlow`` with ``CONST``): with ``sigma`` in ``[0, 1]``
the model input is ``x = sigma * noise + (1 - sigma) * x0``, the Wan receives the timestep
``1000 * sigma`` and its output ``v`` is turned into ``x0_hat = x - sigma * v``: the model is trained
on the rectified-flow velocity ``v = noise - x0``. Wan's shift 8 puts most sampling steps at high
noise: the ``simple`` scheduler at 30 steps runs ``sigma = 8 t / (1 + 7 t)`` at ``t = 1, 0.967, ...,
0.034`` (sigma 1.0, 0.996, ..., 0.22, then 0), so half the steps lie above sigma 0.9 and the last one
jumps from 0.22 to 0; the training draws sigma from that distribution mixed with uniform sigma.

Clips: :data:`FRAMES` frames of 32x32 pixels in ``[-1, 1]``: an MNIST digit downscaled to 16x16 on a
-1 background, gliding :data:`SPEED` pixels per frame left, right, up or down and bouncing off the
border (:func:`positions`). A clip starts at random within :data:`START_SPREAD` pixels of the border
behind its motion (so "moving left" starts on the right, may bounce off the left border near the end,
and always ends at least :data:`MIN_TRAVEL` pixels further left than it began); the other coordinate
is random within :data:`ACROSS_SPREAD` pixels of the middle and stays fixed. The spreads are narrow on
purpose: with starts anywhere (the first design) the digit's position was most of a clip's variance,
the prompt explained little of it, and a 1500-step trial learned no conditioning at all.

Latent space (a lossless "VAE" of our own, no temporal compression): each frame is folded by
space-to-depth 4 into ``16 x 8 x 8`` (each channel one pixel of a 4x4 block), so a clip is
``[16, 8, 8, 8]`` (C, T, H, W), then centred and scaled to a standard deviation of :data:`SIGNAL_STD`
(:func:`to_model_space`). ComfyUI's Wan 2.1 latent format maps a latent ``z`` to the model's space as
``(z - mean) / std`` per channel; :func:`encode_frames` applies the inverse, so the model's space *is*
the scaled folded pixel space and :func:`decode_latent` is exact. The Wan patchifies (1, 2, 2): a clip
is 8 x 4 x 4 = 128 tokens of 8x8 pixels.

Why the scale: Wan's shift 8 is made for latents of tens of thousands of tokens; on 128 tokens it puts
most steps where a unit-variance signal is drowned. With signal standard deviation ``c`` the
signal-to-noise ratio is ``c^2 ((1 - sigma) / sigma)^2``, 1 at ``sigma = c / (1 + c)``: 0.23 for the raw
pixels (variance 0.09), 0.5 standardised, 0.75 at ``c = 3``, where the 30-step shift-8 schedule still
has dense steps (14 of 30 steps lie where the ratio is between 0.05 and 5, against 9 at ``c = 1``).
Raw pixels learned no conditioning in a 1500-step trial.

Prompts: "a digit {word} moving {motion}" (:func:`prompt`; 7 tokens with start and end, within the
encoder's :data:`digit_flux.TEXT_TOKENS` = 8). The empty prompt is the unconditional input (10 % of
training prompts were dropped to it), so classifier-free guidance works with an empty negative.
Held-out protocol: calibrate on even digits, evaluate on odd digits, every motion
(:func:`calibration_prompts`, :func:`evaluation_prompts`), with the seeds of :data:`CALIBRATION_SEEDS`
and :data:`EVALUATION_SEEDS`.

Judging samples (:func:`judge`): per frame the digit is found by the centre of mass of its bright
pixels, a 16x16 window around it is resized to 28x28 and classified by the shipped MNIST classifier;
a clip moves the requested way when the centre of mass of its last frame lies at least
:data:`MIN_MOVE` pixels from the first one in that direction, and further along it than across it.

The shipped weights (``tools/train_digit_wan.py`` at its defaults: 12,000 AdamW steps of 4 clips, seed
0, one thread; 21.6 minutes on the 2-core development machine, 1.25 M parameters, 2.4 MB in fp16). Its
end-of-training check (one clip of each of the 40 prompts, seeds 1000 + k): every clip moves the
requested way; 68 % of frames show the requested digit and 81 % of clips show it in most frames (95 %
of the even-digit calibration prompts, 68 % of the odd held-out ones, where 4 / 9 and 3 / 8 get
confused); the judge itself reaches 98 % of frames on rendered training clips. It is a caching testbed:
what matters is that its trajectories are a trained video model's (conditioned, moving, at Wan's
shift), not that it draws every digit well.

This module imports ``comfy`` only inside functions; the ComfyUI checkout must be importable and set
to the CPU first (``tests/comfyui/conftest.py`` does both).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import digit_flux

#: The shipped weights (the Wan only, fp16; the text encoder is DigitFlux's, named by SHA-256 and digest).
WEIGHTS = Path(__file__).resolve().parent / "weights" / "digit_wan.safetensors"
WEIGHTS_FORMAT = "otcache.testbed.digit_wan"
#: Where the text encoder comes from (``digit_flux.WEIGHTS``; checked by its digest when loading).
TEXT_ENCODER_WEIGHTS = digit_flux.WEIGHTS

DIGIT_WORDS = digit_flux.DIGIT_WORDS
MOTIONS = ("left", "right", "up", "down")
#: Unit step per motion as (dy, dx) in pixel rows / columns (up = towards row 0).
MOTION_STEPS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
TEMPLATE = "a digit {word} moving {motion}"

#: ``comfy.supported_models.WAN21_T2V`` unet config: text_dim is the CLIP's width.
WAN_CONFIG = {
    "image_model": "wan2.1", "model_type": "t2v", "dim": 128, "ffn_dim": 512, "num_heads": 4, "num_layers": 4,
    "text_dim": digit_flux.CLIP_CONFIG["hidden_size"], "in_dim": 16, "out_dim": 16, "patch_size": [1, 2, 2],
    "freq_dim": 256, "window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6,
}

FRAMES = 8
SIZE = 32          # frame side, pixels
DIGIT = 16         # the downscaled digit's side, pixels
ROOM = SIZE - DIGIT  # positions 0..ROOM of the digit's box along each axis
SPEED = 2          # pixels per frame
MIN_TRAVEL = 4     # training clips end at least this far along the requested direction
START_SPREAD = 4   # ... and start at most this far from the border behind them
ACROSS_SPREAD = 1  # the other coordinate lies at most this far from the frame's middle
MIN_MOVE = 2.0     # a judged clip must have moved at least this far (centre of mass, pixels)
FOLD = 4
LATENT = SIZE // FOLD  # 8
#: Mean and standard deviation of the training clips' pixels (-0.933 and 0.306 measured on 500 clips)
#: and the standard deviation the model's space gives them (:func:`to_model_space`). See the module doc.
PIXEL_MEAN = -0.93
PIXEL_STD = 0.31
SIGNAL_STD = 3.0
CHANNELS = 16

#: The sampling setting the testbed is trained for and measured at.
STEPS = 30
CFG = 4.0
SAMPLER = "euler"
SCHEDULER = "simple"

#: Seeds of the held-out protocol: calibration samples use these, evaluation samples the others.
CALIBRATION_SEEDS = (0, 1)
EVALUATION_SEEDS = (100, 101)


def motion_index(motion: int | str) -> int:
    return MOTIONS.index(motion) if isinstance(motion, str) else int(motion)


def prompt(digit: int, motion: int | str) -> str:
    """The prompt for ``digit`` (0..9) moving ``motion`` (a name of :data:`MOTIONS` or its index)."""
    return TEMPLATE.format(word=DIGIT_WORDS[digit], motion=MOTIONS[motion_index(motion)])


def all_prompts() -> list[str]:
    """Every training prompt: digit-major, ``prompt(d, m)`` at index ``d * len(MOTIONS) + m``."""
    return digit_flux.digit_prompts(digit_flux.ALL_DIGITS, len(MOTIONS), prompt)


def calibration_prompts() -> list[str]:
    """The calibration side of the held-out split: even digits, every motion."""
    return digit_flux.digit_prompts(digit_flux.CALIBRATION_DIGITS, len(MOTIONS), prompt)


def evaluation_prompts() -> list[str]:
    """The evaluation side: odd digits, every motion (never used to calibrate)."""
    return digit_flux.digit_prompts(digit_flux.EVALUATION_DIGITS, len(MOTIONS), prompt)


def parse_prompt(text: str) -> tuple[int, int]:
    """``(digit, motion index)`` a testbed prompt asks for (``ValueError`` for other text)."""
    for d in range(10):
        for m in range(len(MOTIONS)):
            if text == prompt(d, m):
                return d, m
    raise ValueError(f"not a DigitWan prompt: {text!r}")


# --------------------------------------------------------------------------
# Clips
# --------------------------------------------------------------------------

def shrink(images: torch.Tensor) -> torch.Tensor:
    """MNIST digits ``[N, 1, 28, 28]`` in [-1, 1] -> ``[N, 1, 16, 16]`` (antialiased bicubic: sharper
    strokes than bilinear, which the classifier recognises better after :func:`crop_digits`)."""
    small = F.interpolate(images, size=(DIGIT, DIGIT), mode="bicubic", antialias=True, align_corners=False)
    return small.clamp(-1.0, 1.0)


def _bounce(p: torch.Tensor) -> torch.Tensor:
    """Fold unconstrained positions into ``0..ROOM`` by reflection at both borders."""
    p = torch.remainder(p, 2 * ROOM)
    return torch.where(p > ROOM, 2 * ROOM - p, p)


def positions(motions: torch.Tensor, along: torch.Tensor, across: torch.Tensor) -> torch.Tensor:
    """Top-left corners ``[B, FRAMES, 2]`` (row, column) of the digit's box in each frame.

    ``along`` is the start on the motion's axis, ``across`` the fixed coordinate on the other one."""
    steps = torch.tensor([MOTION_STEPS[m] for m in MOTIONS])[motions]  # [B, 2]
    vertical = steps[:, 0] != 0
    sign = steps.sum(1)
    k = torch.arange(FRAMES)
    moving = _bounce(along[:, None] + sign[:, None] * SPEED * k[None, :])  # [B, FRAMES]
    fixed = across[:, None].expand(-1, FRAMES)
    rows = torch.where(vertical[:, None], moving, fixed)
    cols = torch.where(vertical[:, None], fixed, moving)
    return torch.stack([rows, cols], dim=-1)


def valid_starts(motion: int | str) -> list[int]:
    """Starts on the motion's axis: at most :data:`START_SPREAD` pixels from the border behind the
    motion, and the last frame at least :data:`MIN_TRAVEL` further along it (bounces included)."""
    m = motion_index(motion)
    sign = sum(MOTION_STEPS[MOTIONS[m]])
    starts = []
    for p in range(ROOM + 1):
        end = int(_bounce(torch.tensor(p + sign * SPEED * (FRAMES - 1))))
        behind = p if sign > 0 else ROOM - p
        if behind <= START_SPREAD and (end - p) * sign >= MIN_TRAVEL:
            starts.append(p)
    return starts


def valid_across() -> list[int]:
    """Positions across the motion: within :data:`ACROSS_SPREAD` pixels of the middle."""
    return list(range(ROOM // 2 - ACROSS_SPREAD, ROOM // 2 + ACROSS_SPREAD + 1))


def render(digits: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """Clips ``[B, FRAMES, 1, 32, 32]`` in [-1, 1]: each small digit ``[B, 1, 16, 16]`` drawn at its corners."""
    batch = digits.shape[0]
    frames = torch.full((batch, FRAMES, 1, SIZE, SIZE), -1.0)
    for b in range(batch):
        for f in range(FRAMES):
            r, c = int(corners[b, f, 0]), int(corners[b, f, 1])
            frames[b, f, :, r : r + DIGIT, c : c + DIGIT] = digits[b]
    return frames


# --------------------------------------------------------------------------
# Latent space
# --------------------------------------------------------------------------

def _latent_format() -> Any:
    import comfy.latent_formats

    return comfy.latent_formats.Wan21()


def fold(frames: torch.Tensor) -> torch.Tensor:
    """Clips ``[B, T, 1, 32, 32]`` -> model space ``[B, 16, T, 8, 8]`` (space-to-depth 4 per frame)."""
    b, t = frames.shape[:2]
    folded = F.pixel_unshuffle(frames.reshape(b * t, 1, SIZE, SIZE), FOLD)
    return folded.reshape(b, t, CHANNELS, LATENT, LATENT).movedim(1, 2)


def unfold(model_space: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fold`: ``[B, 16, T, 8, 8]`` -> ``[B, T, 1, 32, 32]``."""
    b, _, t = model_space.shape[:3]
    per_frame = model_space.movedim(2, 1).reshape(b * t, CHANNELS, LATENT, LATENT)
    return F.pixel_shuffle(per_frame, FOLD).reshape(b, t, 1, SIZE, SIZE)


def to_model_space(frames: torch.Tensor) -> torch.Tensor:
    """Clips ``[B, T, 1, 32, 32]`` in [-1, 1] -> the Wan's space: folded, centred by the training clips'
    pixel mean and scaled to a standard deviation of :data:`SIGNAL_STD`."""
    return (fold(frames) - PIXEL_MEAN) * (SIGNAL_STD / PIXEL_STD)


def from_model_space(model_space: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_model_space`."""
    return unfold(model_space * (PIXEL_STD / SIGNAL_STD) + PIXEL_MEAN)


def encode_frames(frames: torch.Tensor) -> torch.Tensor:
    """Clips ``[B, T, 1, 32, 32]`` in [-1, 1] -> a ComfyUI latent whose ``process_in`` is :func:`to_model_space`."""
    return _latent_format().process_out(to_model_space(frames))


def decode_latent(latent: torch.Tensor) -> torch.Tensor:
    """A ComfyUI latent (what ``comfy.sample.sample`` returns) -> clips ``[B, T, 1, 32, 32]`` in [-1, 1]."""
    return from_model_space(_latent_format().process_in(latent.float()))


class DigitWanVAE:
    """The lossless "VAE" as a ComfyUI ``VAE`` is used: ``decode`` takes a ComfyUI latent and returns the
    frames ``[B * T, 32, 32, 1]`` in [0, 1] (what a VAE Decode node outputs for video: the clips' frames
    one after the other), so it can be connected where a workflow connects its VAE."""

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        frames = ((decode_latent(latent) + 1.0) / 2.0).clamp(0.0, 1.0)
        return frames.reshape(-1, 1, SIZE, SIZE).movedim(1, -1)


def empty_latent(batch: int = 1) -> torch.Tensor:
    """The ``EmptyHunyuanLatentVideo``-style starting latent for ``batch`` clips: ``[B, 16, 8, 8, 8]``."""
    return torch.zeros((batch, CHANNELS, FRAMES, LATENT, LATENT))


# --------------------------------------------------------------------------
# Judging clips: which digit, which way
# --------------------------------------------------------------------------

def locate(frames: torch.Tensor) -> torch.Tensor:
    """Centre of mass ``[..., 2]`` (row, column) of the bright pixels of frames ``[..., 1, 32, 32]``.

    Weights are the brightness above mid-grey; a frame with none gets the frame's centre."""
    weight = frames.float()[..., 0, :, :].clamp(min=0.0)
    total = weight.sum((-1, -2))
    grid = torch.arange(SIZE, dtype=torch.float32)
    row = (weight.sum(-1) * grid).sum(-1) / total.clamp(min=1e-6)
    col = (weight.sum(-2) * grid).sum(-1) / total.clamp(min=1e-6)
    centre = torch.full_like(row, (SIZE - 1) / 2)
    empty = total <= 1e-6
    return torch.stack([torch.where(empty, centre, row), torch.where(empty, centre, col)], dim=-1)


def crop_digits(frames: torch.Tensor) -> torch.Tensor:
    """Each frame's digit as an MNIST-like ``[N, 1, 28, 28]`` in [-1, 1] (``N`` = all frames, in order):
    the 16x16 window centred on the bright pixels' centre of mass, resized to 28x28 (bicubic) and its
    contrast doubled around mid-grey (MNIST strokes are saturated; resizing twice blurs them). On
    rendered training clips the shipped classifier recognises 97-98 % of the frames this way (78 %
    with a plain bilinear resize)."""
    flat = frames.reshape(-1, 1, SIZE, SIZE).float()
    centres = locate(flat)
    tops = (centres - (DIGIT - 1) / 2).round().clamp(0, ROOM).long()
    crops = torch.stack([flat[i, :, r : r + DIGIT, c : c + DIGIT]
                         for i, (r, c) in enumerate(tops.tolist())])
    return (2.0 * F.interpolate(crops, size=(28, 28), mode="bicubic", align_corners=False)).clamp(-1.0, 1.0)


def moved_as_asked(frames: torch.Tensor, motions: torch.Tensor) -> torch.Tensor:
    """Per clip ``[B]`` bool: the last frame's centre of mass lies at least :data:`MIN_MOVE` pixels from
    the first frame's in the requested direction, and further along it than across it."""
    centres = locate(frames)  # [B, T, 2]
    delta = centres[:, -1] - centres[:, 0]
    unit = torch.tensor([MOTION_STEPS[m] for m in MOTIONS], dtype=torch.float32)[motions]
    along = (delta * unit).sum(-1)
    across = (delta * unit.flip(-1)).sum(-1).abs()
    return (along >= MIN_MOVE) & (along > across)


@torch.no_grad()
def judge(frames: torch.Tensor, digits: torch.Tensor, motions: torch.Tensor, classifier: Any) -> dict[str, Any]:
    """Figures of clips ``[B, T, 1, 32, 32]`` asked to show ``digits`` moving ``motions`` (index tensors):
    ``frame_agreement`` (share of frames classified as the asked digit), ``motion_agreement`` (share of
    clips that :func:`moved_as_asked`), ``clip_agreement`` (share of clips whose frames' majority vote is
    the asked digit) and the per-frame ``predicted`` classes ``[B, T]``."""
    b, t = frames.shape[:2]
    predicted = classifier(crop_digits(frames)).argmax(1).reshape(b, t)
    right = predicted == digits[:, None]
    majority = torch.mode(predicted, dim=1).values
    moved = moved_as_asked(frames, motions)
    return {"frame_agreement": right.float().mean().item(), "clip_agreement": (majority == digits).float().mean().item(),
            "motion_agreement": moved.float().mean().item(), "predicted": predicted, "moved": moved}


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------

def wan_config(config: dict | None = None) -> dict:
    """A unet config as ComfyUI's Wan takes it (tuples where the JSON has lists)."""
    cfg = dict(config or WAN_CONFIG)
    cfg["patch_size"] = tuple(cfg["patch_size"])
    cfg["window_size"] = tuple(cfg["window_size"])
    return cfg


def build_wan(state: dict[str, torch.Tensor] | None = None, seed: int = 0, config: dict | None = None) -> Any:
    """A ``ModelPatcher`` of the testbed Wan on the CPU in float32.

    ``state`` is loaded when given; otherwise the weights are the training start: seeded random
    weights with the time projection, every block modulation and the head's output layer zeroed
    (adaLN-Zero: every gate starts at zero and the model's output as zero).
    """
    import comfy.model_patcher
    import comfy.supported_models

    from .tiny_models import init_weights

    model_config = comfy.supported_models.WAN21_T2V(wan_config(config))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    dm = model.diffusion_model
    if state is None:
        init_weights(dm, seed)
        with torch.no_grad():
            for layer in (dm.time_projection[1], dm.head.head):
                layer.weight.zero_()
                layer.bias.zero_()
            for block in dm.blocks:
                block.modulation.zero_()
            dm.head.modulation.zero_()
    else:
        digit_flux._load_exactly(dm, state, "Wan")
    model.eval()
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def text_encoder(file: str | Path | None = None) -> tuple[Any, str]:
    """DigitFlux's text encoder (a ``comfy.sd.CLIP``) read from ``file`` (default its shipped weights),
    and that file's SHA-256."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    file = Path(file) if file is not None else TEXT_ENCODER_WEIGHTS
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: DigitWan takes its text encoder from DigitFlux's weights")
    with safe_open(str(file), framework="pt") as f:
        fmt = (f.metadata() or {}).get("format")
    if fmt != digit_flux.WEIGHTS_FORMAT:
        raise ValueError(f"{file} holds {fmt!r}, expected DigitFlux's {digit_flux.WEIGHTS_FORMAT!r}")
    clip_state, _ = digit_flux.split_state(load_file(str(file)))
    return digit_flux.build_clip(clip_state), hashlib.sha256(file.read_bytes()).hexdigest()


@dataclass
class DigitWan:
    """The loaded testbed: the Wan ``patcher`` (clone before patching), the ``clip``, the file metadata
    and the sampling setting ``cfg`` (steps, sampler and scheduler are the module's constants)."""

    patcher: Any
    clip: Any
    metadata: dict[str, str]
    cfg: float = CFG

    def encode(self, text: str) -> list:
        """Conditioning of ``text`` exactly as ComfyUI's ``CLIPTextEncode`` node makes it."""
        return digit_flux.encode(self.clip, text)

    def positive(self, text: str) -> list:
        return self.encode(text)

    def negative(self) -> list:
        """The unconditional input: the empty prompt."""
        return self.encode("")

    @property
    def vae(self) -> DigitWanVAE:
        return DigitWanVAE()


def load(path: str | Path | None = None, text_encoder_file: str | Path | None = None) -> DigitWan:
    """Load the shipped testbed (or ``path``), float32 on the CPU, with DigitFlux's text encoder from
    ``text_encoder_file`` (default :data:`TEXT_ENCODER_WEIGHTS`), which must be the one it was trained with."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    file = Path(path) if path is not None else WEIGHTS
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: make it with 'python tools/train_digit_wan.py --data <mnist>'")
    with safe_open(str(file), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    if metadata.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{file} holds {metadata.get('format')!r}, expected {WEIGHTS_FORMAT!r}")
    tensors = load_file(str(file))
    state = {k[len("diffusion_model."):]: v for k, v in tensors.items() if k.startswith("diffusion_model.")}
    space = json.loads(metadata.get("model_space", "{}"))
    ours = {"pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD, "signal_std": SIGNAL_STD}
    if space != ours:
        raise ValueError(f"{file} was trained in another model space ({space}) than this module's ({ours})")
    patcher = build_wan(state, config=json.loads(metadata["wan_config"]))
    clip, _ = text_encoder(text_encoder_file)
    if digit_flux.text_encoder_digest(clip) != metadata["text_encoder_digest"]:
        raise ValueError(f"{file} was trained with another text encoder than the one in "
                         f"{text_encoder_file or TEXT_ENCODER_WEIGHTS}: pass the file it names "
                         f"({metadata.get('text_encoder')}, SHA-256 {metadata.get('text_encoder_sha256', '?')[:16]}...) "
                         f"or train it again")
    return DigitWan(patcher, clip, metadata)


def sample(testbed: DigitWan, prompts: list[str], seeds: list[int], *, model: Any = None, steps: int | None = None,
           cfg: float | None = None) -> torch.Tensor:
    """Decoded clips ``[B, T, 1, 32, 32]`` in [-1, 1] of ``prompts[i]`` with ``seeds[i]``: one batched
    ``comfy.sample.sample`` call at the testbed's setting (noise per row as ``KSampler`` makes it for
    seed ``seeds[i]``); ``model`` replaces the testbed's patcher (e.g. a patched clone)."""
    import comfy.sample

    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    conds = [testbed.positive(p)[0] for p in prompts]
    positive = [[torch.cat([c[0] for c in conds]), {"pooled_output": torch.cat([c[1]["pooled_output"] for c in conds])}]]
    noise = torch.cat([comfy.sample.prepare_noise(empty_latent(1), s) for s in seeds])
    out = comfy.sample.sample(model or testbed.patcher, noise, steps or STEPS, testbed.cfg if cfg is None else cfg,
                              SAMPLER, SCHEDULER, positive, testbed.negative(), empty_latent(len(prompts)),
                              seed=0, disable_pbar=True)
    return decode_latent(out)
