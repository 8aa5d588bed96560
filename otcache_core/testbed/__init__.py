"""The testbed: a small trained class-conditional DiT on MNIST, its sampler, and a digit classifier.

It is the embedded default model of OTCache and the quality ground truth of the test suite: real
trained weights, small enough to sample on a CPU in seconds.

    from otcache_core.testbed import load_testbed, load_classifier
    from otcache_core.testbed.sampler import sample_euler
    model, config = load_testbed()
    x = sample_euler(model, torch.randn(16, 1, 28, 28), labels, steps=50, cfg_scale=4.0)

The weights are trained by :mod:`otcache_core.testbed.train` (see there for the command) and shipped
in ``otcache_core/testbed/weights/`` as fp16 safetensors; they load into float32 modules.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import FileFormatError, OTCacheError
from .classifier import CLASSIFIER_FILE, CLASSIFIER_FORMAT, DigitClassifier
from .model import DIT_FILE, DIT_FORMAT, TinyDiT, TinyDiTConfig
from .sampler import DEFAULT_SHIFT, sample_euler, sigmas, velocity

__all__ = [
    "WEIGHTS_DIR",
    "DEFAULT_CFG_SCALE",
    "DEFAULT_SHIFT",
    "DigitClassifier",
    "TinyDiT",
    "TinyDiTConfig",
    "load_classifier",
    "load_testbed",
    "sample_euler",
    "sigmas",
    "velocity",
]

#: Folder of the shipped weight files.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

#: Guidance scale at which the shipped model is tested. Class agreement of the shipped classifier with
#: the requested digit at T = 50 (500 samples): 96.4% at cfg 3, 98.2% at cfg 4 (67-71% at cfg 1).
DEFAULT_CFG_SCALE = 4.0


def _read_safetensors(path: Path, expected_format: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read tensors and metadata, checking that the file exists and says it holds ``expected_format``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    if not path.is_file():
        raise OTCacheError(
            f"testbed weight file not found: {path}. Reinstall the package, or train it with "
            f"'python -m otcache_core.testbed.train --data <mnist folder> --out {path.parent}'."
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise FileFormatError(f"{path} is not a readable safetensors file ({exc}).") from exc
    if meta.get("format") != expected_format:
        raise FileFormatError(f"{path} holds {meta.get('format')!r}, expected {expected_format!r}.")
    return tensors, meta


def _to_float32(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp16 on disk -> float32 in memory (integer buffers such as BN counters stay as they are)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}


def load_testbed(
    device: str | torch.device = "cpu", path: str | os.PathLike[str] | None = None
) -> tuple[TinyDiT, TinyDiTConfig]:
    """Load the shipped TinyDiT (float32, eval mode, no grad) and its config from ``path`` or the default."""
    file = Path(path) if path is not None else WEIGHTS_DIR / DIT_FILE
    tensors, meta = _read_safetensors(file, DIT_FORMAT)
    try:
        config = TinyDiTConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise FileFormatError(f"{file}: missing or invalid 'config' metadata ({exc}).") from exc
    model = TinyDiT(config)
    try:
        model.load_state_dict(_to_float32(tensors))
    except RuntimeError as exc:
        raise FileFormatError(f"{file}: weights do not match the config in its metadata ({exc}).") from exc
    return model.to(device).eval().requires_grad_(False), config


def load_classifier(
    device: str | torch.device = "cpu", path: str | os.PathLike[str] | None = None
) -> DigitClassifier:
    """Load the shipped MNIST classifier (float32, eval mode); ``predict(x)`` takes images in [-1, 1]."""
    file = Path(path) if path is not None else WEIGHTS_DIR / CLASSIFIER_FILE
    tensors, _ = _read_safetensors(file, CLASSIFIER_FORMAT)
    model = DigitClassifier()
    try:
        model.load_state_dict(_to_float32(tensors))
    except RuntimeError as exc:
        raise FileFormatError(f"{file}: weights do not match the classifier architecture ({exc}).") from exc
    return model.to(device).eval().requires_grad_(False)
