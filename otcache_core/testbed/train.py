"""Train the testbed: TinyDiT by rectified flow on MNIST t10k, then the digit classifier.

    python -m otcache_core.testbed.train --data /path/to/mnist --out otcache_core/testbed/weights

Objective (rectified flow, velocity prediction)::

    x0 ~ data, noise ~ N(0, I), t ~ U(0, 1)            (or logit-normal t = sigmoid(N(0, 1)), as SD3)
    x_t = (1 - t) x0 + t noise,     loss = || model(x_t, t, y) - (noise - x0) ||^2

with the label replaced by the null class for 10% of the rows, which trains the unconditional model
that classifier-free guidance needs. A fixed number of AdamW steps, linear warm-up then cosine decay,
an exponential moving average (EMA) of the weights that is what gets shipped. Everything random
draws from one seeded generator, so the same seed gives the same weights on the same machine and
torch build *with the same thread count* (the matmul reduction order depends on it).

Why these settings (measured on a shared 2-core CPU, where the compute budget is ~40k digit passes):
in that regime the number of optimizer updates matters most, so small batches (8) at a high learning
rate (3e-3) won clearly over batch 32/64 in runs of equal wall time, ~5-6 min each (class agreement
at T=20, cfg 5: 0.94 vs 0.74/0.46). One thread, not two: next to another busy process, two OpenMP
threads ran 4x slower (2.6 s vs 0.62 s per batch-64 step). Uniform t was as good as logit-normal at
equal steps. The defaults below are the shipped run (seed 0): ~9-10 min on that machine.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .classifier import CLASSIFIER_FILE, save_classifier, train_classifier
from .data import load_mnist
from .files import save_reproducible
from .model import DIT_FILE, DIT_FORMAT, TinyDiT, TinyDiTConfig, count_parameters


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation hyperparameters; stored in the weight file metadata next to the model config."""

    seed: int = 0
    steps: int = 5000
    batch_size: int = 8
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.998
    label_dropout: float = 0.1
    t_sampling: str = "uniform"
    threads: int = 1


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr``."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    progress = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return tc.lr * (tc.min_lr_ratio + (1.0 - tc.min_lr_ratio) * cosine)


def sample_t(n: int, generator: torch.Generator, kind: str = "uniform") -> torch.Tensor:
    """Training times: ``U(0, 1)`` or logit-normal ``sigmoid(N(0, 1))`` (more weight on mid-range t)."""
    if kind == "uniform":
        return torch.rand(n, generator=generator)
    if kind == "logit_normal":
        return torch.sigmoid(torch.randn(n, generator=generator))
    raise ValueError(f"t_sampling must be 'uniform' or 'logit_normal', got {kind!r}")


def flow_batch(
    x0: torch.Tensor,
    y: torch.Tensor,
    null_class: int,
    label_dropout: float,
    generator: torch.Generator,
    t_sampling: str = "uniform",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One rectified-flow training batch: ``(x_t, t, y_dropped, v_target)`` with ``v = noise - x0``."""
    n = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator)
    t = sample_t(n, generator, t_sampling)
    tb = t[:, None, None, None]
    x_t = (1.0 - tb) * x0 + tb * noise
    drop = torch.rand(n, generator=generator) < label_dropout
    y = torch.where(drop, torch.full_like(y, null_class), y)
    return x_t, t, y, noise - x0


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for every parameter."""
    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(pm, 1.0 - decay)


def train_dit(
    images: torch.Tensor, labels: torch.Tensor, tc: TrainConfig, mc: TinyDiTConfig, log_every: int = 250
) -> TinyDiT:
    """Train TinyDiT for exactly ``tc.steps`` optimizer steps and return the EMA model (eval mode).

    Batches are drawn epoch by epoch from a seeded permutation. The EMA decay ramps up as
    ``min(ema_decay, (1 + n) / (10 + n))`` so the short run is not dominated by the random start.
    """
    torch.manual_seed(tc.seed)  # parameter initialisation
    gen = torch.Generator().manual_seed(tc.seed)  # data order, noise, t, label dropout
    model = TinyDiT(mc)
    ema = copy.deepcopy(model).requires_grad_(False)
    # No weight decay on 1-D tensors (biases), as is usual.
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=tc.lr, betas=(0.9, 0.99),
    )
    n = images.shape[0]
    order = torch.randperm(n, generator=gen)
    cursor = 0
    start = time.perf_counter()
    running = 0.0
    for step in range(tc.steps):
        if cursor + tc.batch_size > n:  # a new epoch: fresh permutation, drop the ragged tail
            order, cursor = torch.randperm(n, generator=gen), 0
        idx = order[cursor : cursor + tc.batch_size]
        cursor += tc.batch_size
        x_t, t, y, v = flow_batch(images[idx], labels[idx], mc.null_class, tc.label_dropout, gen, tc.t_sampling)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc)
        loss = (model(x_t, t, y) - v).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        ema_update(ema, model, min(tc.ema_decay, (1 + step) / (10 + step)))
        running += loss.item()
        if (step + 1) % log_every == 0 or step + 1 == tc.steps:
            elapsed = time.perf_counter() - start
            eta = elapsed / (step + 1) * (tc.steps - step - 1)
            print(f"dit step {step + 1}/{tc.steps} loss {running / log_every:.4f} lr {lr_at(step, tc):.2e} "
                  f"{elapsed:.0f}s elapsed, ~{eta:.0f}s left", flush=True)
            running = 0.0
    return ema.eval()


def state_digest(model: nn.Module) -> str:
    """SHA-256 (first 16 hex) of the fp16 state dict: a quick reproducibility fingerprint."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().half().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_dit(model: TinyDiT, path: str | Path, tc: TrainConfig, extra: dict[str, str] | None = None) -> Path:
    """Save the model as fp16 safetensors; metadata holds the model and training configs as JSON."""
    tensors = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": DIT_FORMAT, "config": json.dumps(model.config.to_dict()), "train": json.dumps(asdict(tc))}
    meta.update(extra or {})
    return save_reproducible(tensors, path, meta)


def main(argv: list[str] | None = None) -> None:
    """Command line: train the DiT (and, unless ``--skip-classifier``, the classifier) into ``--out``."""
    parser = argparse.ArgumentParser(description="Train the OTCache testbed (TinyDiT + classifier) on MNIST t10k.")
    parser.add_argument("--data", required=True,
                        help="folder with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
    parser.add_argument("--out", required=True, help="output folder for the .safetensors files")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps, help="optimizer steps (fixed, not time-based)")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--threads", type=int, default=TrainConfig.threads,
                        help="torch CPU threads; results are reproducible for a fixed thread count")
    parser.add_argument("--skip-classifier", action="store_true")
    args = parser.parse_args(argv)

    tc = TrainConfig(seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr, threads=args.threads)
    mc = TinyDiTConfig()
    torch.set_num_threads(tc.threads)  # fixed thread count: part of what makes the run reproducible
    images, labels = load_mnist(args.data)
    out = Path(args.out)
    print(f"data: {images.shape[0]} digits; model: {count_parameters(TinyDiT(mc)):,} parameters; {tc}", flush=True)

    start = time.perf_counter()
    ema = train_dit(images, labels, tc, mc)
    dit_seconds = time.perf_counter() - start
    digest = state_digest(ema)
    # No timings in the metadata: the same seed must give a byte-identical file.
    dit_path = save_dit(ema, out / DIT_FILE, tc, {"digest": digest})
    report = {"dit": str(dit_path), "dit_seconds": round(dit_seconds, 1), "dit_digest": digest}

    if not args.skip_classifier:
        c_start = time.perf_counter()
        clf, acc = train_classifier(images, labels, seed=tc.seed)  # same thread count as set above
        report["classifier"] = str(save_classifier(clf, out / CLASSIFIER_FILE, acc, tc.seed))
        report["classifier_heldout_accuracy"] = round(acc, 4)
        report["classifier_seconds"] = round(time.perf_counter() - c_start, 1)
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=1), flush=True)


if __name__ == "__main__":
    main()
