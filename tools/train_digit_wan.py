"""Train DigitWan, the ComfyUI-native video testbed (tests/comfyui/digit_wan.py), on MNIST t10k.

    COMFYUI_PATH=/path/to/ComfyUI python tools/train_digit_wan.py --data /path/to/mnist \
        [--out tests/comfyui/weights/digit_wan.safetensors]

A tiny ComfyUI Wan 2.1 T2V learns to draw 8-frame clips of a digit gliding left, right, up or down
(``digit_wan`` module doc), in ComfyUI's own parametrisation (discrete flow, ``CONST``)::

    clip x0 = fold(render(digit, motion, start)),  noise ~ N(0, I)
    sigma = 8 t / (1 + 7 t) with t ~ U(0, 1)   (Wan's shift 8: the sigmas it samples at), or
    sigma ~ U(0, 1)                             (with probability 1 - shifted: the low-noise steps)
    x = sigma noise + (1 - sigma) x0,  loss = || Wan(x, 1000 sigma, context(prompt)) - (noise - x0) ||^2

(``--sigmas LOW HIGH`` restricts both to an expert's noise range, ``--init`` starts from a trained
file: that is how Wan 2.2-style high- and low-noise experts are made from DigitWan), where the prompt
is "a digit <word> moving <motion>", replaced by the empty prompt for 10 % of the
rows (the unconditional model that classifier-free guidance needs). Every step draws fresh clips:
digits epoch by epoch in seeded order, a random motion each, a random start among those that end at
least ``digit_wan.MIN_TRAVEL`` pixels along the motion (bounces included) within
``digit_wan.START_SPREAD`` pixels of the border behind it, and a random position across near the middle.

The text encoder is DigitFlux's (read from its weight file, never trained, not saved again): the file
holds only the Wan (fp16) and names the DigitFlux file by SHA-256 and the encoder by its digest,
which ``digit_wan.load`` checks. The optimisation (AdamW, warm-up then cosine decay, EMA of the
weights is what gets saved), the reproducible save and the ComfyUI set-up are those of
``tools/train_digit_flux.py``, whose functions this reuses; everything random draws from one seeded
generator and runs on a fixed number of threads, so the same arguments give a byte-identical file.

At the end the shipped setting (30 steps, euler / simple, cfg ``digit_wan.CFG``) samples one clip of
every prompt (seed ``1000 + k``) through ``comfy.sample`` and :func:`digit_wan.judge` reports how many
frames show the requested digit and how many clips move the requested way; the same figures on
training clips (rendered data) say what the judge itself reaches.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_digit_flux import (  # noqa: E402  (the sibling tool; tools/ is not a package)
    REPO,
    Epochs,
    fp16_tensors,
    optimise,
    save_weights,
    training_setup,
)


@dataclass(frozen=True)
class ClipConfig:
    """What the video training adds to the optimisation settings; stored in the file's metadata."""

    shifted: float = 0.5
    """Share of rows whose sigma follows Wan's shifted sampling distribution (the rest: uniform sigma)."""
    shift: float = 8.0
    """Taken from ComfyUI's model sampling of the built Wan (``WAN21_T2V.sampling_settings``)."""
    sigma_low: float = 0.0
    sigma_high: float = 1.0
    """The noise range trained: all of it, or an expert's (Wan 2.2's high-noise expert runs the steps
    above its boundary sigma, the low-noise one those below)."""

    def sigma(self, u: torch.Tensor, shifted: torch.Tensor) -> torch.Tensor:
        """Sigmas from uniform ``u`` in [0, 1): Wan's shifted distribution where ``shifted``, else uniform,
        both restricted to ``[sigma_low, sigma_high]`` (``u`` mapped onto the range's preimage)."""
        s, lo, hi = self.shift, self.sigma_low, self.sigma_high
        t_lo, t_hi = lo / (s - (s - 1) * lo), hi / (s - (s - 1) * hi)  # the inverse of t -> s t / (1 + (s - 1) t)
        t = t_lo + u * (t_hi - t_lo)
        return torch.where(shifted, s * t / (1 + (s - 1) * t), lo + u * (hi - lo))


class _Args(argparse.Namespace):
    data: str
    out: str
    seed: int
    steps: int
    batch_size: int
    lr: float
    threads: int
    check: int
    shifted: float
    config: str
    init: str | None
    sigmas: tuple[float, float]


def _parse(argv: list[str] | None) -> _Args:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
    parser.add_argument("--out", default=str(REPO / "tests" / "comfyui" / "weights" / "digit_wan.safetensors"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=12000, help="optimizer steps (fixed, not time-based)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1, help="results are reproducible for a fixed thread count")
    parser.add_argument("--check", type=int, default=2, help="sampled clips per prompt after training (0: none)")
    parser.add_argument("--shifted", type=float, default=ClipConfig.shifted, help="share of shift-8 sigmas")
    parser.add_argument("--config", default="{}", help="JSON overrides of digit_wan.WAN_CONFIG (experiments)")
    parser.add_argument("--init", help="start from this DigitWan file (a Wan 2.2-style expert fine-tuned from it)")
    parser.add_argument("--sigmas", type=float, nargs=2, metavar=("LOW", "HIGH"), default=(0.0, 1.0),
                        help="train only at sigmas in [LOW, HIGH] (an expert's noise range; default: all)")
    args = parser.parse_args(argv, namespace=_Args())
    if not 0.0 <= args.sigmas[0] < args.sigmas[1] <= 1.0:
        parser.error(f"--sigmas {args.sigmas[0]} {args.sigmas[1]}: give LOW < HIGH within [0, 1], e.g. --sigmas 0.85 1")
    return args


class ClipSource:
    """Training clips: digits epoch by epoch, a random motion, start and cross position each."""

    def __init__(self, small: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> None:
        from comfyui import digit_wan as dw

        self.dw, self.small, self.labels, self.gen = dw, small, labels, gen
        self.epochs = Epochs(small.shape[0], gen)
        self.starts = [torch.tensor(dw.valid_starts(m)) for m in range(len(dw.MOTIONS))]

    def draw(self, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(frames [B, T, 1, 32, 32], digits [B], motions [B])``."""
        dw, gen = self.dw, self.gen
        idx = self.epochs.take(count)
        motions = torch.randint(0, len(dw.MOTIONS), (count,), generator=gen)
        pick = torch.rand(count, generator=gen)
        along = torch.stack([self.starts[m][int(p * len(self.starts[m]))] for m, p in zip(motions.tolist(), pick)])
        across = torch.tensor(dw.valid_across())[torch.randint(0, len(dw.valid_across()), (count,), generator=gen)]
        frames = dw.render(self.small[idx], dw.positions(motions, along, across))
        return frames, self.labels[idx], motions


def clip_fields(cc: ClipConfig) -> dict:
    """``cc`` for the file's metadata; the full noise range is left out, so a file trained before experts
    existed is made again byte for byte by the same arguments."""
    fields = asdict(cc)
    if (cc.sigma_low, cc.sigma_high) == (0.0, 1.0):
        del fields["sigma_low"], fields["sigma_high"]
    return fields


def check(testbed, per_prompt: int, classifier) -> dict[str, float]:
    """Sample every prompt ``per_prompt`` times (seed ``1000 + k``) at the testbed's setting and judge."""
    from comfyui import digit_wan as dw

    pairs = [(d, m) for _ in range(per_prompt) for d in range(10) for m in range(len(dw.MOTIONS))]
    frames = []
    for start in range(0, len(pairs), 40):  # batches of 40 clips
        chunk = pairs[start : start + 40]
        frames.append(dw.sample(testbed, [dw.prompt(d, m) for d, m in chunk],
                                [1000 + start + k for k in range(len(chunk))]))
    frames = torch.cat(frames)
    digits, motions = torch.tensor([d for d, _ in pairs]), torch.tensor([m for _, m in pairs])
    verdict = dw.judge(frames, digits, motions, classifier)
    out = {k: round(v, 4) for k, v in verdict.items() if isinstance(v, float)}
    for name, parity in (("calibration", 0), ("evaluation", 1)):
        rows = digits % 2 == parity
        part = dw.judge(frames[rows], digits[rows], motions[rows], classifier)
        out.update({f"{name}_{k}": round(v, 4) for k, v in part.items() if isinstance(v, float)})
    for m, motion in enumerate(dw.MOTIONS):
        out[f"motion_agreement_{motion}"] = round(verdict["moved"][motions == m].float().mean().item(), 4)
    return out


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    tc, images, labels = training_setup(args)

    from comfyui import digit_flux as df
    from comfyui import digit_wan as dw
    from otcache_core.testbed import load_classifier
    from otcache_core.testbed.train import state_digest

    small = dw.shrink(images)

    clip, clip_sha = dw.text_encoder()
    with torch.no_grad():
        conds = [df.encode(clip, p)[0][0] for p in dw.all_prompts() + [""]]
    context = torch.cat(conds).float()  # [41, tokens, 16]: prompt d * 4 + m, then the empty prompt
    empty = context.shape[0] - 1

    wan_config = {**dw.WAN_CONFIG, **json.loads(args.config)}
    init = None
    if args.init:  # the whole file, so an expert keeps its parent's config; the sha names the parent
        init = dw.load(args.init)
        wan_config = json.loads(init.metadata["wan_config"])
    patcher = dw.build_wan(seed=tc.seed, config=wan_config)
    if init is not None:
        patcher.model.diffusion_model.load_state_dict(init.patcher.model.diffusion_model.state_dict())
    cc = ClipConfig(shifted=args.shifted, shift=float(patcher.get_model_object("model_sampling").shift),
                    sigma_low=args.sigmas[0], sigma_high=args.sigmas[1])
    model = patcher.model.diffusion_model
    n_params = sum(p.numel() for p in model.parameters())
    print(f"data: {images.shape[0]} digits; Wan {n_params:,} parameters; {tc}; {cc}", flush=True)

    gen = torch.Generator().manual_seed(tc.seed)
    source = ClipSource(small, labels, gen)

    def step_loss(step: int) -> torch.Tensor:
        frames, digits, motions = source.draw(tc.batch_size)
        x0 = dw.to_model_space(frames)
        noise = torch.randn(x0.shape, generator=gen)
        u = torch.rand(len(digits), generator=gen)
        sigma = cc.sigma(u, torch.rand(len(digits), generator=gen) < cc.shifted)
        which = torch.where(torch.rand(len(digits), generator=gen) < tc.label_dropout, empty,
                            digits * len(dw.MOTIONS) + motions)
        s = sigma[:, None, None, None, None]
        x = s * noise + (1.0 - s) * x0
        return (model(x, sigma * 1000.0, context[which]) - (noise - x0)).square().mean()

    train_seconds = optimise(model, tc, step_loss)

    digest = state_digest(model)
    meta = {"format": dw.WEIGHTS_FORMAT, "wan_config": json.dumps(wan_config), "train": json.dumps(asdict(tc)),
            "clips": json.dumps({**clip_fields(cc), "frames": dw.FRAMES, "size": dw.SIZE, "digit": dw.DIGIT,
                                 "speed": dw.SPEED, "min_travel": dw.MIN_TRAVEL, "start_spread": dw.START_SPREAD,
                                 "across_spread": dw.ACROSS_SPREAD, "motions": dw.MOTIONS}),
            "model_space": json.dumps({"pixel_mean": dw.PIXEL_MEAN, "pixel_std": dw.PIXEL_STD,
                                       "signal_std": dw.SIGNAL_STD}),
            **({"init_sha256": hashlib.sha256(Path(args.init).read_bytes()).hexdigest()} if args.init else {}),
            "digest": digest, "prompt_template": dw.TEMPLATE, "text_encoder": dw.TEXT_ENCODER_WEIGHTS.name,
            "text_encoder_sha256": clip_sha, "text_encoder_digest": df.text_encoder_digest(clip)}
    report = save_weights(fp16_tensors("diffusion_model", model), args.out, meta)
    report.update({"wan_digest": digest, "parameters": n_params, "train_seconds": round(train_seconds, 1)})
    print(json.dumps(report, indent=1), flush=True)
    if args.check and (cc.sigma_low, cc.sigma_high) != (0.0, 1.0):
        print("no sampling check: an expert alone does not sample a whole run", flush=True)
    elif args.check:
        classifier = load_classifier()
        data_gen = torch.Generator().manual_seed(12345)  # not the training's generator
        frames, digits, motions = ClipSource(small, labels, data_gen).draw(200)
        data = dw.judge(frames, digits, motions, classifier)
        start = time.perf_counter()
        figures = check(dw.load(report["weights"]), args.check, classifier)
        print(json.dumps({"data_frame_agreement": round(data["frame_agreement"], 4),
                          "data_motion_agreement": round(data["motion_agreement"], 4), **figures,
                          "check_seconds": round(time.perf_counter() - start, 1),
                          "train_seconds": round(train_seconds, 1)}, indent=1), flush=True)


if __name__ == "__main__":
    main()
