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
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

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


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if not os.environ.get("COMFYUI_PATH"):
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout")
    sys.path.insert(0, str(REPO / "tests"))
    sys.path.insert(0, str(REPO))
    import comfyui.conftest  # noqa: F401  (puts ComfyUI on the path, on the CPU)

    import torch
    from torch.overrides import TorchFunctionMode

    from comfyui import digit_flux as df
    from otcache_core.testbed.data import load_mnist
    from otcache_core.testbed.files import save_reproducible
    from otcache_core.testbed.train import TrainConfig, ema_update, lr_at, sample_t, state_digest

    class OutOfPlaceAdd(TorchFunctionMode):
        """``a.add_(b)`` (what ``a += b`` calls) becomes ``torch.add(a, b)``; see the module doc."""

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") == "add_" and not kwargs and len(args) == 2:
                return torch.add(args[0], args[1])
            return func(*args, **(kwargs or {}))

    tc = TrainConfig(seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr, threads=args.threads)
    torch.set_num_threads(tc.threads)
    images, labels = load_mnist(args.data)
    x0_all = df.fold(images)

    clip = df.build_clip()
    prompts = df.all_prompts() + [""]
    with torch.no_grad():
        conds = [df.encode(clip, p)[0] for p in prompts]
    context = torch.cat([c[0] for c in conds]).float()
    pooled = torch.cat([c[1]["pooled_output"] for c in conds]).float()
    empty = len(prompts) - 1
    n_templates = len(df.TEMPLATES)

    flux_config = {**df.FLUX_CONFIG, **json.loads(args.config)}
    patcher = df.build_flux(seed=tc.seed, config=flux_config)
    model = patcher.model.diffusion_model.train().requires_grad_(True)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    n_params = sum(p.numel() for p in model.parameters())
    print(f"data: {images.shape[0]} digits; Flux {n_params:,} parameters; {tc}", flush=True)

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(tc.seed)
    n = x0_all.shape[0]
    order, cursor = torch.randperm(n, generator=gen), 0
    start, running = time.perf_counter(), 0.0
    with OutOfPlaceAdd():
        for step in range(tc.steps):
            if cursor + tc.batch_size > n:
                order, cursor = torch.randperm(n, generator=gen), 0
            idx = order[cursor : cursor + tc.batch_size]
            cursor += tc.batch_size
            x0 = x0_all[idx]
            noise = torch.randn(x0.shape, generator=gen)
            sigma = sample_t(len(idx), gen, tc.t_sampling)
            which = labels[idx] * n_templates + torch.randint(0, n_templates, (len(idx),), generator=gen)
            which = torch.where(torch.rand(len(idx), generator=gen) < tc.label_dropout, empty, which)
            s = sigma[:, None, None, None]
            x = s * noise + (1.0 - s) * x0
            for group in opt.param_groups:
                group["lr"] = lr_at(step, tc)
            loss = (model(x, sigma, context[which], y=pooled[which]) - (noise - x0)).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            with torch.no_grad():
                weight = 1.0 - min(tc.ema_decay, (1 + step) / (10 + step))
                for k, v in model.state_dict().items():
                    ema[k].lerp_(v, weight) if v.is_floating_point() else ema[k].copy_(v)
            running += loss.item()
            if (step + 1) % 250 == 0 or step + 1 == tc.steps:
                elapsed = time.perf_counter() - start
                print(f"step {step + 1}/{tc.steps} loss {running / 250:.4f} lr {lr_at(step, tc):.2e} "
                      f"{elapsed:.0f}s, ~{elapsed / (step + 1) * (tc.steps - step - 1):.0f}s left", flush=True)
                running = 0.0
    model.load_state_dict(ema)
    model.eval().requires_grad_(False)
    train_seconds = time.perf_counter() - start

    tensors = {f"text_encoder.{k}": v.detach().half().contiguous() for k, v in clip.cond_stage_model.state_dict().items()}
    tensors.update({f"diffusion_model.{k}": v.detach().half().contiguous() for k, v in model.state_dict().items()})
    digest = state_digest(model)
    meta = {"format": df.WEIGHTS_FORMAT, "flux_config": json.dumps(flux_config),
            "clip_config": json.dumps(df.CLIP_CONFIG), "train": json.dumps(asdict(tc)), "digest": digest,
            "prompts": json.dumps(df.TEMPLATES)}
    path = save_reproducible(tensors, args.out, meta)
    file_digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    report = {"weights": str(path), "bytes": Path(path).stat().st_size, "sha256": file_digest,
              "flux_digest": digest, "train_seconds": round(train_seconds, 1)}
    if args.check:
        report.update(class_agreement(args.check, path))
    print(json.dumps(report, indent=1), flush=True)


def class_agreement(count: int, path: Path) -> dict[str, float]:
    """Sample ``count`` digits from the saved file through ``comfy.sample`` and classify them."""
    import comfy.sample
    import torch

    from comfyui import digit_flux as df
    from otcache_core.testbed import load_classifier

    testbed = df.load(path)
    classifier = load_classifier()
    digits = [k % 10 for k in range(count)]
    hits = 0
    for k, digit in enumerate(digits):
        latent = df.empty_latent(1)
        positive = testbed.encode(df.prompt(digit, k % len(df.TEMPLATES)))
        out = comfy.sample.sample(testbed.patcher, comfy.sample.prepare_noise(latent, 1000 + k), df.STEPS, df.CFG,
                                  df.SAMPLER, df.SCHEDULER, positive, testbed.negative(), latent, seed=1000 + k,
                                  disable_pbar=True)
        with torch.no_grad():
            hits += int(classifier(df.decode_latent(out)).argmax(1).item() == digit)
    return {"class_agreement": hits / count}


if __name__ == "__main__":
    main()
