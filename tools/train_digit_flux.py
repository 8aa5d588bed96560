"""Train the ComfyUI-native testbed (tests/comfyui/digit_flux.py) on MNIST t10k.

    COMFYUI_PATH=/path/to/ComfyUI python tools/train_digit_flux.py --data /path/to/mnist \
        [--out tests/comfyui/weights/digit_flux.safetensors]

The text encoder keeps its seeded random weights (it is never trained); the Flux learns the
rectified-flow velocity in ComfyUI's own parametrisation (see the module doc of ``digit_flux``)::

    x0 = fold(digit), noise ~ N(0, I), sigma ~ U(0, 1),  x = sigma noise + (1 - sigma) x0
    loss = || Flux(x, sigma, context(prompt), pooled(prompt)) - (noise - x0) ||^2

where the prompt is one of the four phrasings of the digit's label, replaced by the empty prompt for
10 % of the rows (the unconditional model classifier-free guidance needs). The optimisation is the
one of the first testbed (``otcache_core.testbed.train``: AdamW, warm-up then cosine decay, EMA of
the weights is what gets saved) and reuses its code; everything random draws from one seeded
generator and runs on a fixed number of threads, so the same arguments give a byte-identical file.

ComfyUI's Flux blocks add their residuals in place (``x += ...``), which inference can afford and
autograd cannot (the input of the block's norm is still needed for the backward pass). During
training only, :class:`OutOfPlaceAdd` turns ``Tensor.add_`` into ``torch.add``: the same numbers,
a new tensor instead of an overwritten one. Sampling never sees it.

The pieces every DigitFlux training needs (the ComfyUI set-up, the encoded prompt table, the batch
order, the optimisation loop, the reproducible save and the classifier check) are the functions of
this module; ``tools/distill_digit_flux.py`` (the guidance-distilled student) uses them too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

REPO = Path(__file__).resolve().parents[1]


class _Args(argparse.Namespace):
    data: str
    out: str
    seed: int
    steps: int
    batch_size: int
    lr: float
    threads: int
    check: int
    config: str


def _parse(argv: list[str] | None) -> _Args:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
    parser.add_argument("--out", default=str(REPO / "tests" / "comfyui" / "weights" / "digit_flux.safetensors"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=8000, help="optimizer steps (fixed, not time-based)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1, help="results are reproducible for a fixed thread count")
    parser.add_argument("--check", type=int, default=100, help="digits to sample and classify after training (0: none)")
    parser.add_argument("--config", default="{}", help="JSON overrides of digit_flux.FLUX_CONFIG (experiments)")
    return parser.parse_args(argv, namespace=_Args())


# --------------------------------------------------------------------------------------------------
# What every DigitFlux training needs
# --------------------------------------------------------------------------------------------------


def training_setup(args: Any, **settings: Any) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """What every training starts with: ComfyUI importable (:func:`prepare_comfy`), the optimisation
    settings from the common arguments (``--seed --steps --batch-size --lr --threads``, plus ``settings``),
    torch on their thread count, and MNIST t10k from ``--data``. Returns ``(config, images, labels)``."""
    prepare_comfy()
    from otcache_core.testbed.data import load_mnist
    from otcache_core.testbed.train import TrainConfig

    tc = TrainConfig(seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr, threads=args.threads,
                     **settings)
    torch.set_num_threads(tc.threads)
    images, labels = load_mnist(args.data)
    return tc, images, labels


def prepare_comfy() -> None:
    """Make the repository, ``tests/`` and ComfyUI (on the CPU) importable; exit if ComfyUI is not set."""
    if not os.environ.get("COMFYUI_PATH"):
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout")
    sys.path.insert(0, str(REPO / "tests"))
    sys.path.insert(0, str(REPO))
    import comfyui.conftest  # noqa: F401  (puts ComfyUI on the path, on the CPU)


class OutOfPlaceAdd(TorchFunctionMode):
    """``a.add_(b)`` (what ``a += b`` calls) becomes ``torch.add(a, b)``; see the module doc."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") == "add_" and not kwargs and len(args) == 2:
            return torch.add(args[0], args[1])
        return func(*args, **(kwargs or {}))


@dataclass
class PromptTable:
    """Every training prompt (``digit_flux.all_prompts()``, digit-major) and then the empty prompt,
    encoded once by the testbed's CLIP: row ``i`` of ``context`` / ``pooled`` is prompt ``i``."""

    context: torch.Tensor
    pooled: torch.Tensor
    templates: int

    @property
    def empty(self) -> int:
        """Row of the empty prompt (the unconditional input)."""
        return self.context.shape[0] - 1

    def draw(self, digits: torch.Tensor, gen: torch.Generator, dropout: float) -> torch.Tensor:
        """Rows for ``digits``: a random phrasing each, replaced by the empty prompt with probability ``dropout``."""
        which = digits * self.templates + torch.randint(0, self.templates, (len(digits),), generator=gen)
        return torch.where(torch.rand(len(digits), generator=gen) < dropout, self.empty, which)


def encode_prompts(clip: Any) -> PromptTable:
    """The :class:`PromptTable` of the testbed's prompts, encoded as ``CLIPTextEncode`` does."""
    from comfyui import digit_flux as df

    with torch.no_grad():
        conds = [df.encode(clip, p)[0] for p in df.all_prompts() + [""]]
    return PromptTable(torch.cat([c[0] for c in conds]).float(), torch.cat([c[1]["pooled_output"] for c in conds]).float(),
                       len(df.TEMPLATES))


class Epochs:
    """Batches of digit indices, epoch by epoch from seeded permutations (the ragged tail is dropped).

    The first permutation is drawn when the object is made, so the order of draws from ``gen`` is
    part of what a training run reproduces."""

    def __init__(self, n: int, gen: torch.Generator) -> None:
        self.n, self.gen = n, gen
        self.order, self.cursor = torch.randperm(n, generator=gen), 0

    def take(self, count: int) -> torch.Tensor:
        if self.cursor + count > self.n:
            self.order, self.cursor = torch.randperm(self.n, generator=self.gen), 0
        idx = self.order[self.cursor : self.cursor + count]
        self.cursor += count
        return idx


def optimise(model: torch.nn.Module, tc: Any, step_loss: Callable[[int], torch.Tensor], *, teacher_loop: bool = False,
             on_log: Callable[[dict[str, torch.Tensor]], str] | None = None, log_every: int = 250) -> float:
    """Run ``tc.steps`` AdamW steps on ``step_loss(step)`` and leave the EMA weights in ``model`` (eval mode).

    The schedule is the first testbed's (``otcache_core.testbed.train``: warm-up then cosine decay,
    gradient clipping, no weight decay on 1-D tensors, EMA ramped as ``min(decay, (1 + n) / (10 + n))``).
    ``step_loss`` runs under :class:`OutOfPlaceAdd`. ``teacher_loop=True`` reproduces the shipped
    teacher's loop, which ran the whole step (optimiser included) under it: there AdamW's
    ``step_t += 1`` rebinds a copy, its step counter stays 0 and every update is bias-corrected as
    the first one (the same update once the moving averages have warmed up, i.e. after the warm-up).
    ``on_log(ema_state)`` may add a measurement to each log line; it must not draw from the
    training's generator. Returns the training's wall time in seconds.
    """
    from otcache_core.testbed.train import lr_at

    model.train().requires_grad_(True)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.99))
    whole_step, forward = (OutOfPlaceAdd(), nullcontext()) if teacher_loop else (nullcontext(), OutOfPlaceAdd())
    start, running, since = time.perf_counter(), 0.0, 0
    with whole_step:
        for step in range(tc.steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, tc)
            with forward:
                loss = step_loss(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            with torch.no_grad():
                weight = 1.0 - min(tc.ema_decay, (1 + step) / (10 + step))
                for k, v in model.state_dict().items():
                    ema[k].lerp_(v, weight) if v.is_floating_point() else ema[k].copy_(v)
            running, since = running + loss.item(), since + 1
            if (step + 1) % log_every == 0 or step + 1 == tc.steps:
                elapsed = time.perf_counter() - start
                extra = f" {on_log(ema)}" if on_log is not None else ""
                print(f"step {step + 1}/{tc.steps} loss {running / since:.4f} lr {lr_at(step, tc):.2e}{extra} "
                      f"{elapsed:.0f}s, ~{elapsed / (step + 1) * (tc.steps - step - 1):.0f}s left", flush=True)
                running, since = 0.0, 0
    seconds = time.perf_counter() - start
    model.load_state_dict(ema)
    model.eval().requires_grad_(False)
    return seconds


def fp16_tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state as contiguous fp16 tensors named ``prefix.<key>`` (how the weight files store them)."""
    return {f"{prefix}.{k}": v.detach().half().contiguous() for k, v in module.state_dict().items()}


def save_weights(tensors: dict[str, torch.Tensor], out: str | Path, meta: dict[str, str]) -> dict[str, Any]:
    """Save reproducibly (sorted metadata); the report: path, size and the file's SHA-256."""
    from otcache_core.testbed.files import save_reproducible

    path = save_reproducible(tensors, out, meta)
    return {"weights": str(path), "bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def class_agreement(count: int, testbed: Any) -> dict[str, float]:
    """Sample ``count`` digits (digit ``k % 10``, phrasing ``k % 4``, seed ``1000 + k``) from ``testbed``
    through ``comfy.sample`` at its own setting (``testbed.cfg``, ``testbed.positive``) and classify them."""
    import comfy.sample

    from comfyui import digit_flux as df
    from otcache_core.testbed import load_classifier

    classifier = load_classifier()
    hits = 0
    for k in range(count):
        digit = k % 10
        latent = df.empty_latent(1)
        positive = testbed.positive(df.prompt(digit, k % len(df.TEMPLATES)))
        out = comfy.sample.sample(testbed.patcher, comfy.sample.prepare_noise(latent, 1000 + k), df.STEPS, testbed.cfg,
                                  df.SAMPLER, df.SCHEDULER, positive, testbed.negative(), latent, seed=1000 + k,
                                  disable_pbar=True)
        with torch.no_grad():
            hits += int(classifier(df.decode_latent(out)).argmax(1).item() == digit)
    return {"class_agreement": hits / count}


# --------------------------------------------------------------------------------------------------
# The teacher: DigitFlux trained from scratch
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    tc, images, labels = training_setup(args)

    from comfyui import digit_flux as df
    from otcache_core.testbed.train import sample_t, state_digest

    x0_all = df.fold(images)

    clip = df.build_clip()
    prompts = encode_prompts(clip)

    flux_config = {**df.FLUX_CONFIG, **json.loads(args.config)}
    patcher = df.build_flux(seed=tc.seed, config=flux_config)
    model = patcher.model.diffusion_model
    n_params = sum(p.numel() for p in model.parameters())
    print(f"data: {images.shape[0]} digits; Flux {n_params:,} parameters; {tc}", flush=True)

    gen = torch.Generator().manual_seed(tc.seed)
    epochs = Epochs(x0_all.shape[0], gen)

    def step_loss(step: int) -> torch.Tensor:
        idx = epochs.take(tc.batch_size)
        x0 = x0_all[idx]
        noise = torch.randn(x0.shape, generator=gen)
        sigma = sample_t(len(idx), gen, tc.t_sampling)
        which = prompts.draw(labels[idx], gen, tc.label_dropout)
        s = sigma[:, None, None, None]
        x = s * noise + (1.0 - s) * x0
        return (model(x, sigma, prompts.context[which], y=prompts.pooled[which]) - (noise - x0)).square().mean()

    train_seconds = optimise(model, tc, step_loss, teacher_loop=True)

    tensors = fp16_tensors("text_encoder", clip.cond_stage_model)
    tensors.update(fp16_tensors("diffusion_model", model))
    digest = state_digest(model)
    meta = {"format": df.WEIGHTS_FORMAT, "flux_config": json.dumps(flux_config),
            "clip_config": json.dumps(df.CLIP_CONFIG), "train": json.dumps(asdict(tc)), "digest": digest,
            "prompts": json.dumps(df.TEMPLATES)}
    report = save_weights(tensors, args.out, meta)
    report.update({"flux_digest": digest, "train_seconds": round(train_seconds, 1)})
    if args.check:
        report.update(class_agreement(args.check, df.load(report["weights"])))
    print(json.dumps(report, indent=1), flush=True)


if __name__ == "__main__":
    main()
