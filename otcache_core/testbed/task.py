"""The testbed task shared by ``demo`` and ``bench``: model, samples, sampler, decoding, fidelity, timing.

Calibration and evaluation never share a sample: they use different noise seeds *and* different
digit classes (even digits calibrate, odd digits evaluate), so every reported number is on held-out
samples. Fidelity is always against the full-compute output of the same noise and class.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from ..metrics import perceptual_objective, psnr, psnr_per_image, relative_l1, ssim, worst_share_mean
from .flow import FlowSampler
from .sampler import DEFAULT_SHIFT, sigmas, to_unit_range

CALIBRATION_CLASSES: tuple[int, ...] = (0, 2, 4, 6, 8)
EVALUATION_CLASSES: tuple[int, ...] = (1, 3, 5, 7, 9)
#: Compute fractions of the default budgets: 25, 17, 13, 10 and 8 of 50 steps.
BUDGET_FRACTIONS: tuple[float, ...] = (0.5, 0.34, 0.26, 0.2, 0.16)


@dataclass(frozen=True)
class TaskConfig:
    """What the task samples: step count, guidance, sample counts and classes of both sets."""

    steps: int = 50
    cfg_scale: float = 4.0
    shift: float = DEFAULT_SHIFT
    calibration_samples: int = 16
    evaluation_samples: int = 16
    calibration_classes: tuple[int, ...] = CALIBRATION_CLASSES
    evaluation_classes: tuple[int, ...] = EVALUATION_CLASSES

    def __post_init__(self) -> None:
        if set(self.calibration_classes) & set(self.evaluation_classes):
            raise ValueError("calibration and evaluation classes must differ (held-out evaluation)")


@dataclass(frozen=True)
class SampleSet:
    """A batch of starting noises and class labels, from one seed."""

    name: str
    noise: torch.Tensor
    labels: torch.Tensor
    seed: int

    def subset(self, count: int) -> SampleSet:
        """The first ``count`` samples (e.g. fewer samples for the costly ``global`` edge errors)."""
        return SampleSet(self.name, self.noise[:count], self.labels[:count], self.seed)

    def split(self) -> tuple[SampleSet, SampleSet | None]:
        """``(search, validation)``: the first half (rounded up) and the rest (``None`` for one sample),
        as OTCache Calibrate splits its seeds."""
        half = (len(self) + 1) // 2
        rest = None if half == len(self) else SampleSet(f"{self.name}-validation", self.noise[half:],
                                                         self.labels[half:], self.seed)
        return self.subset(half), rest

    def __len__(self) -> int:
        return int(self.noise.shape[0])


def make_samples(name: str, count: int, classes: Sequence[int], seed: int, shape: Sequence[int]) -> SampleSet:
    """``count`` standard-normal noises from ``seed`` with labels cycling through ``classes``."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((count, *shape), generator=gen)
    labels = torch.tensor([classes[i % len(classes)] for i in range(count)], dtype=torch.long)
    return SampleSet(name, noise, labels, seed)


@dataclass
class Task:
    """The model and the two sample sets; makes samplers over either set."""

    model: nn.Module
    config: TaskConfig
    calibration: SampleSet
    evaluation: SampleSet
    null_class: int
    model_info: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return self.config.steps

    def sigmas(self) -> torch.Tensor:
        return sigmas(self.config.steps, self.config.shift)

    def sampler(self, samples: SampleSet, mode: str = "blocks") -> FlowSampler:
        """A cached Euler-CFG sampler over ``samples`` (implements the calibration ``Sampler``)."""
        return FlowSampler(self.model, samples.noise, samples.labels, self.sigmas(),
                           cfg_scale=self.config.cfg_scale, null_class=self.null_class, mode=mode)

    def sampler_info(self, mode: str = "blocks") -> dict[str, Any]:
        c = self.config
        return {"sampler": "euler", "schedule": "rectified-flow", "shift": c.shift, "cfg": c.cfg_scale,
                "steps": c.steps, "mode": mode, "calibration_classes": list(c.calibration_classes),
                "calibration_seed": self.calibration.seed}

    def budgets(self) -> list[int]:
        """The default budgets for this step count (25, 17, 13, 10, 8 at T = 50), largest first."""
        return default_budgets(self.steps)


def default_budgets(steps: int) -> list[int]:
    """``round(f T)`` for the fractions in :data:`BUDGET_FRACTIONS`, distinct, at least 2, descending."""
    found = {max(2, min(steps, int(f * steps + 0.5))) for f in BUDGET_FRACTIONS}
    return sorted(found, reverse=True)


def sample_seeds(seed: int) -> tuple[int, int]:
    """Noise seeds of the calibration and the evaluation set: distinct for every ``seed``."""
    base = 10_000 * (seed + 1)
    return base + 1, base + 2


def load_task(config: TaskConfig | None = None, seed: int = 0, model: nn.Module | None = None,
              model_info: dict[str, Any] | None = None) -> Task:
    """The task on ``model`` (default: the shipped trained testbed, which must exist)."""
    config = config or TaskConfig()
    if model is None:
        from . import WEIGHTS_DIR, load_testbed
        from .model import DIT_FILE

        model, _ = load_testbed()
        model_info = model_info or {"family": "testbed-tinydit", "name": DIT_FILE,
                                    "hash": file_hash(WEIGHTS_DIR / DIT_FILE)}
    model = model.eval().requires_grad_(False)
    model_config = getattr(model, "config", None)
    null_class = int(getattr(model_config, "null_class", 10))
    shape = (getattr(model_config, "in_channels", 1), getattr(model_config, "image_size", 28),
             getattr(model_config, "image_size", 28))
    cal_seed, eval_seed = sample_seeds(seed)
    return Task(
        model=model,
        config=config,
        calibration=make_samples("calibration", config.calibration_samples, config.calibration_classes, cal_seed, shape),
        evaluation=make_samples("evaluation", config.evaluation_samples, config.evaluation_classes, eval_seed, shape),
        null_class=null_class,
        model_info=model_info or {"family": "testbed-tinydit", "name": "custom"},
    )


def file_hash(path: Path) -> str:
    """First 16 hex digits of the file's SHA-256 (model identity in calibration records)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


# -- decoding and fidelity ---------------------------------------------------------------------------


def decode(latent: torch.Tensor) -> torch.Tensor:
    """Testbed samples live in data space [-1, 1]; images are ``(x + 1) / 2`` clamped to [0, 1]."""
    return to_unit_range(latent)


@dataclass(frozen=True)
class Fidelity:
    """Cached vs full compute on the same samples: PSNR (dB, mean over images and the worst image) and
    SSIM on images, relative L1 on latents."""

    psnr: float
    ssim: float
    rel_l1: float
    psnr_worst: float = math.nan


def fidelity(cached: torch.Tensor, full: torch.Tensor) -> Fidelity:
    """PSNR and SSIM of the decoded images, ``mean|a - b| / mean|b|`` of the latents."""
    a, b = decode(cached), decode(full)
    return Fidelity(psnr(a, b), ssim(a, b), relative_l1(cached, full), float(psnr_per_image(a, b).min()))


def image_distance(distance: Callable[[torch.Tensor, torch.Tensor], float]) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """Lift an image distance to latents (for the anchor objective of :func:`calibrate`)."""
    return lambda cached, full: distance(decode(cached), decode(full))


def anchor_objective(share: float = 0.5) -> tuple[Callable[[torch.Tensor, torch.Tensor], float], str, str]:
    """The anchor's end-to-end objective on latents: the best available perceptual distance
    (:func:`~otcache_core.metrics.perceptual_objective`: LPIPS, else ``1 - SSIM``) per decoded image,
    averaged over the worst ``share`` of the calibration images.

    Returns ``(distance, name, note)``; ``note`` says why LPIPS was not used, if it was not.
    """
    objective = perceptual_objective()
    name = objective.name if share >= 1.0 else f"{objective.name}, worst {share:.0%} of images"
    distance = objective.distance if share >= 1.0 else worst_share_mean(objective.distance, share)
    return image_distance(distance), name, objective.note


# -- timing ------------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), wall seconds)``."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


@dataclass
class SpeedMeter:
    """Measured speedup: median wall time of full runs over median wall time of cached runs.

    Full and cached runs are timed in the same process, interleaved, so that load from other
    processes affects both alike; each median is over ``repeats`` runs.
    """

    run_full: Callable[[], Any]
    repeats: int = 3
    full_seconds: list[float] = field(default_factory=list)

    def refresh_full(self) -> float:
        """Time the full run ``repeats`` times (again) and return the median."""
        self.full_seconds = [timed(self.run_full)[1] for _ in range(self.repeats)]
        return statistics.median(self.full_seconds)

    def speedup(self, run_cached: Callable[[], Any], first_seconds: float | None = None) -> tuple[float, float]:
        """``(median full / median cached, median cached seconds)``; ``first_seconds`` is a timing of
        ``run_cached`` already made (e.g. the evaluation run itself), counted as one repeat."""
        if not self.full_seconds:
            self.refresh_full()
        times = [] if first_seconds is None else [first_seconds]
        while len(times) < self.repeats:
            times.append(timed(run_cached)[1])
        cached = statistics.median(times)
        return statistics.median(self.full_seconds) / cached, cached


# -- progress ----------------------------------------------------------------------------------------


class ProgressBar:
    """A one-line progress bar on stderr: ``stage [#####.....] done/total``.

    On a terminal it redraws in place; otherwise (a log file) it prints a line each time a stage
    reaches another quarter, so logs stay short. Callable as a calibration ``Progress``.
    """

    def __init__(self, stream: TextIO | None = None, width: int = 28) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last: tuple[str, int] | None = None
        self._open = False

    def __call__(self, stage: str, done: int, total: int) -> None:
        total = max(1, total)
        done = min(done, total)
        filled = int(self.width * done / total)
        line = f"{stage:<14} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total}"
        if self.tty:
            self.stream.write("\r" + line)
            self._open = True
            if done == total:
                self.stream.write("\n")
                self._open = False
        else:
            quarter = (4 * done) // total
            if self._last != (stage, quarter):
                self.stream.write(line + "\n")
                self._last = (stage, quarter)
        self.stream.flush()

    def message(self, text: str) -> None:
        """A log line that does not break the bar."""
        if self._open:
            self.stream.write("\n")
            self._open = False
        self.stream.write(text + "\n")
        self.stream.flush()


# -- a tiny stand-in for tests ---------------------------------------------------------------------------


def random_tinydit(hidden_size: int = 32, depth: int = 2, num_heads: int = 2, seed: int = 0) -> nn.Module:
    """A small TinyDiT with random weights everywhere (not adaLN-zero), so that every block matters.

    Untrained, so its samples are not digits; it exercises the whole pipeline in milliseconds.
    """
    from .model import TinyDiT, TinyDiTConfig

    model = TinyDiT(TinyDiTConfig(hidden_size=hidden_size, depth=depth, num_heads=num_heads))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / max(1, p.shape[-1]) ** 0.5)
    return model.eval()


def tiny_task(steps: int = 10, calibration_samples: int = 2, evaluation_samples: int = 2, seed: int = 0) -> Task:
    """The task on :func:`random_tinydit` with few steps and samples (tests of demo and bench)."""
    config = TaskConfig(steps=steps, calibration_samples=calibration_samples, evaluation_samples=evaluation_samples)
    return load_task(config, seed, model=random_tinydit(seed=seed),
                     model_info={"family": "testbed-tinydit", "name": "random-tiny"})
