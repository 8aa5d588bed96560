"""Distil DigitFlux into a guidance-distilled student: the FLUX.1-dev regime on the ComfyUI testbed.

    COMFYUI_PATH=/path/to/ComfyUI python tools/distill_digit_flux.py --data /path/to/mnist \
        [--teacher tests/comfyui/weights/digit_flux.safetensors] \
        [--out tests/comfyui/weights/digit_flux_distilled.safetensors]

FLUX.1-dev is guidance-distilled: it is sampled at cfg 1 (one model call per step, no negative) and
the guidance strength is an input, embedded like the timestep (``guidance_in``) from the
conditioning's ``guidance``, which ComfyUI's ``FluxGuidance`` node sets. The student here is that
architecture at DigitFlux's size (``digit_flux.DISTILLED_FLUX_CONFIG``: the teacher's config with
``guidance_embed: True``), taught to give in one call what the teacher (DigitFlux, real CFG) gives
in two::

    g ~ U(g_min, g_max), sigma ~ U(0, 1), prompt p (the empty prompt for 10 % of the rows)
    target = v_u + g (v_c - v_u)        the teacher at (x, sigma) with p and with "", one batched call
    loss   = || student(x, sigma, p, guidance=g) - target ||^2

States ``x``: half of each batch comes from the forward process on MNIST digits
(``x = sigma noise + (1 - sigma) x0``: every noise level and digit the teacher was trained on), half
from the teacher's own guided sampling: a pool of cfg-g Euler trajectories on the testbed's schedule
(T = 30, simple), each row a point of one trajectory's polyline at its ``sigma`` (the trajectory's
state at the step above ``sigma`` moved on by that step's velocity), with the trajectory's own prompt
and ``g``. Guided sampling leaves the data's marginal at middle noise levels, and those states are
where the student is evaluated when it samples; the data rows keep every region covered. Measured in
a prototype of this loop (same settings, 20 held-out guided trajectories at g = 4 and the samples
they end in): after 1000 steps the relative error on the trajectories' states was 0.0134 from the
forward process alone, 0.0112 from trajectories alone and 0.0112 from the mixture, and the PSNR of
the samples against the teacher's 25.8, 24.4 and 25.7 dB; after 3000 steps forward-only 0.0103 /
26.9 dB, the mixture 0.0090 / 26.9 dB. The mixture has the lower error where sampling goes without
losing end-to-end fidelity, for the cost of building the pool (about a minute).

Length: the log's held-out error still fell by about a fifth from 2000 to 4000 steps at every
guidance (g = 4: 0.0099 -> 0.0081), and 4000 steps take 7-8 minutes on one core, so 4000 it is.

Start: the teacher's weights wherever they fit; the guidance embedder's output layer is zero
(adaLN-Zero style), so the student starts as the teacher's conditional model (cfg 1) at every
guidance and only has to learn what guidance adds. The text encoder is the teacher's, unchanged, and
is not saved again: the file holds only the student's Flux (fp16) and names its teacher (SHA-256)
and the text encoder's digest, which ``digit_flux.load(variant="distilled")`` checks.

The distillation error is measured as training goes (each log line, on the EMA weights): the
relative squared error ``|student - target|^2 / |target|^2`` on states of held-out guided teacher
trajectories (their own seeds and phrasings) at g = 1, 2, 4 and 6. The optimisation, the reproducibility
(one seeded generator, fixed thread count, sorted metadata: the same arguments give a byte-identical
file) and the file writing are those of ``tools/train_digit_flux.py``, whose functions this reuses.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_digit_flux import (  # noqa: E402  (the sibling tool; tools/ is not a package)
    REPO,
    Epochs,
    PromptTable,
    class_agreement,
    encode_prompts,
    fp16_tensors,
    optimise,
    save_weights,
    training_setup,
)

#: Guidance strengths of the held-out trajectories the distillation error is measured on.
MEASURED_GUIDANCE = (1.0, 2.0, 4.0, 6.0)


@dataclass(frozen=True)
class DistillConfig:
    """What the distillation adds to the optimisation settings; stored in the file's metadata."""

    guidance_min: float = 1.0
    guidance_max: float = 6.0
    trajectory_fraction: float = 0.5
    trajectories: int = 512
    steps_per_trajectory: int = 30


class _Args(argparse.Namespace):
    data: str
    teacher: str
    out: str
    seed: int
    steps: int
    batch_size: int
    lr: float
    warmup: int
    threads: int
    guidance_min: float
    guidance_max: float
    trajectory_fraction: float
    trajectories: int
    check: int


def _parse(argv: list[str] | None) -> _Args:
    weights = REPO / "tests" / "comfyui" / "weights"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
    parser.add_argument("--teacher", default=str(weights / "digit_flux.safetensors"))
    parser.add_argument("--out", default=str(weights / "digit_flux_distilled.safetensors"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4000, help="optimizer steps (fixed, not time-based)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100, help="learning-rate warm-up steps")
    parser.add_argument("--threads", type=int, default=1, help="results are reproducible for a fixed thread count")
    parser.add_argument("--guidance-min", type=float, default=DistillConfig.guidance_min)
    parser.add_argument("--guidance-max", type=float, default=DistillConfig.guidance_max)
    parser.add_argument("--trajectory-fraction", type=float, default=DistillConfig.trajectory_fraction,
                        help="share of each batch taken from teacher trajectories (0: forward process only)")
    parser.add_argument("--trajectories", type=int, default=DistillConfig.trajectories,
                        help="guided teacher trajectories in the pool")
    parser.add_argument("--check", type=int, default=100, help="digits to sample and classify after training (0: none)")
    args = parser.parse_args(argv, namespace=_Args())
    if not 0.0 <= args.trajectory_fraction <= 1.0:
        parser.error(f"--trajectory-fraction must lie in [0, 1], got {args.trajectory_fraction}")
    if not 0.0 <= args.guidance_min <= args.guidance_max:
        parser.error(f"need 0 <= --guidance-min <= --guidance-max, got {args.guidance_min}, {args.guidance_max}")
    if args.trajectory_fraction > 0 and args.trajectories < 1:
        parser.error("--trajectories must be at least 1 when --trajectory-fraction is above 0")
    return args


class GuidedTeacher:
    """The teacher's classifier-free-guided velocity ``v_u + g (v_c - v_u)``: cond and empty prompt in
    one batched call of its Flux, no gradient."""

    def __init__(self, flux: torch.nn.Module, prompts: PromptTable) -> None:
        self.flux, self.prompts = flux, prompts

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, which: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        n, p = x.shape[0], self.prompts
        rows = torch.cat([which, torch.full_like(which, p.empty)])
        v = self.flux(torch.cat([x, x]), torch.cat([sigma, sigma]), p.context[rows], y=p.pooled[rows])
        cond, uncond = v[:n], v[n:]
        return uncond + g[:, None, None, None] * (cond - uncond)


@dataclass
class Trajectories:
    """Guided Euler trajectories of the teacher on ``sigmas``: ``states[i, k]`` is trajectory ``i`` at
    ``sigmas[k]``, ``velocities[i, k]`` the guided velocity there; ``which`` / ``guidance`` per trajectory."""

    sigmas: torch.Tensor
    states: torch.Tensor
    velocities: torch.Tensor
    which: torch.Tensor
    guidance: torch.Tensor

    @classmethod
    @torch.no_grad()
    def sample(cls, teacher: GuidedTeacher, sigmas: torch.Tensor, noise: torch.Tensor, which: torch.Tensor,
               guidance: torch.Tensor, batch: int = 64) -> Trajectories:
        """Integrate from ``noise`` (as ComfyUI's euler sampler does at cfg ``guidance``), ``batch`` at a time."""
        states, velocities = [], []
        for start in range(0, noise.shape[0], batch):
            rows = slice(start, start + batch)
            x, xs, vs = noise[rows], [], []
            for k in range(len(sigmas) - 1):
                v = teacher(x, sigmas[k].expand(x.shape[0]), which[rows], guidance[rows])
                xs.append(x)
                vs.append(v)
                x = x + (sigmas[k + 1] - sigmas[k]) * v
            states.append(torch.stack(xs, 1))
            velocities.append(torch.stack(vs, 1))
        return cls(sigmas, torch.cat(states), torch.cat(velocities), which, guidance)

    def at(self, index: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Trajectory ``index[r]`` at noise level ``sigma[r]``: a point of its Euler polyline."""
        k = ((self.sigmas[None, :-1] >= sigma[:, None]).sum(1) - 1).clamp(min=0)
        step = (sigma - self.sigmas[k])[:, None, None, None]
        return self.states[index, k] + step * self.velocities[index, k]


def schedule(teacher_patcher: Any, steps: int) -> torch.Tensor:
    """The testbed's sampling sigmas (scheduler ``simple`` on the model's own ``ModelSamplingFlux``)."""
    import comfy.samplers

    from comfyui import digit_flux as df

    return comfy.samplers.calculate_sigmas(teacher_patcher.get_model_object("model_sampling"), df.SCHEDULER,
                                           steps).float()


class HeldOutError:
    """The distillation error on held-out guided teacher trajectories: one digit per row, phrasings and
    noise drawn from their own generator (``seed + 1``), for each of :data:`MEASURED_GUIDANCE`."""

    def __init__(self, teacher: GuidedTeacher, student: torch.nn.Module, sigmas: torch.Tensor, seed: int,
                 per_guidance: int = 20) -> None:
        gen = torch.Generator().manual_seed(seed + 1)
        digits = torch.arange(per_guidance) % 10
        self.student, self.prompts, self.sets = student, teacher.prompts, []
        for g in MEASURED_GUIDANCE:
            which = teacher.prompts.draw(digits, gen, 0.0)
            noise = torch.randn((per_guidance, *latent_shape()), generator=gen)
            traj = Trajectories.sample(teacher, sigmas, noise, which, torch.full((per_guidance,), g))
            steps = traj.states.shape[1]
            self.sets.append((g, traj.states.flatten(0, 1), sigmas[:-1].repeat(per_guidance),
                              which.repeat_interleave(steps), traj.velocities.flatten(0, 1)))

    @torch.no_grad()
    def __call__(self, state: dict[str, torch.Tensor] | None = None) -> dict[float, float]:
        """Relative squared error per guidance, of ``state`` loaded into the evaluation student (or as it is)."""
        if state is not None:
            self.student.load_state_dict(state)
        p, errors = self.prompts, {}
        for g, x, sigma, which, target in self.sets:
            out = torch.cat([self.student(x[i : i + 120], sigma[i : i + 120], p.context[which[i : i + 120]],
                                          y=p.pooled[which[i : i + 120]], guidance=torch.full((len(x[i : i + 120]),), g))
                             for i in range(0, len(x), 120)])
            errors[g] = ((out - target).square().sum() / target.square().sum()).item()
        return errors

    def line(self, state: dict[str, torch.Tensor]) -> str:
        return "held-out error " + " ".join(f"g{g:g} {e:.4f}" for g, e in self(state).items())


def latent_shape() -> tuple[int, int, int]:
    """Shape of one latent in the model's space."""
    from comfyui import digit_flux as df

    return (df.CHANNELS, df.LATENT, df.LATENT)


def student_from(teacher_flux: torch.nn.Module, seed: int) -> Any:
    """A ``ModelPatcher`` of the student: the teacher's weights where they fit, the guidance embedder
    seeded with a zero output layer (so it adds nothing until trained)."""
    from comfyui import digit_flux as df

    patcher = df.build_flux(seed=seed, config=df.DISTILLED_FLUX_CONFIG)
    student = patcher.model.diffusion_model
    state = student.state_dict()
    shared = teacher_flux.state_dict()
    added = sorted(set(state) - set(shared))
    if set(shared) - set(state) or any(not k.startswith("guidance_in.") for k in added):
        raise ValueError(f"the teacher does not fit the student's config (student-only weights: {added[:4]})")
    state.update({k: v.clone() for k, v in shared.items()})
    for k in ("guidance_in.out_layer.weight", "guidance_in.out_layer.bias"):
        state[k].zero_()
    student.load_state_dict(state)
    return patcher


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    tc, images, labels = training_setup(args, warmup_steps=args.warmup)

    from comfyui import digit_flux as df
    from otcache_core.testbed.train import state_digest

    dc = DistillConfig(guidance_min=args.guidance_min, guidance_max=args.guidance_max,
                       trajectory_fraction=args.trajectory_fraction, trajectories=args.trajectories,
                       steps_per_trajectory=df.STEPS)
    x0_all = df.fold(images)

    teacher_file = Path(args.teacher)
    testbed = df.load(teacher_file)
    prompts = encode_prompts(testbed.clip)
    teacher = GuidedTeacher(testbed.patcher.model.diffusion_model, prompts)
    patcher = student_from(teacher.flux, tc.seed)
    model = patcher.model.diffusion_model
    sigmas = schedule(testbed.patcher, dc.steps_per_trajectory)
    held_out = HeldOutError(teacher, student_from(teacher.flux, tc.seed).model.diffusion_model, sigmas, tc.seed)
    print(f"data: {images.shape[0]} digits; student Flux {sum(p.numel() for p in model.parameters()):,} "
          f"parameters; {tc}; {dc}; at the start: {held_out.line(model.state_dict())}", flush=True)

    gen = torch.Generator().manual_seed(tc.seed)

    def draw_guidance(n: int) -> torch.Tensor:
        return dc.guidance_min + (dc.guidance_max - dc.guidance_min) * torch.rand(n, generator=gen)

    from_pool = round(tc.batch_size * dc.trajectory_fraction)
    if from_pool:
        pool_digits = torch.randint(0, 10, (dc.trajectories,), generator=gen)
        pool = Trajectories.sample(teacher, sigmas, torch.randn((dc.trajectories, *latent_shape()), generator=gen),
                                   prompts.draw(pool_digits, gen, tc.label_dropout), draw_guidance(dc.trajectories))
        print(f"pool: {dc.trajectories} guided teacher trajectories", flush=True)
    epochs = Epochs(x0_all.shape[0], gen)
    from_data = tc.batch_size - from_pool

    def step_loss(step: int) -> torch.Tensor:
        sigma = torch.rand(tc.batch_size, generator=gen)
        idx = epochs.take(from_data)
        x0 = x0_all[idx]
        s = sigma[:from_data, None, None, None]
        xs = [s * torch.randn(x0.shape, generator=gen) + (1.0 - s) * x0]
        which = [prompts.draw(labels[idx], gen, tc.label_dropout)]
        g = [draw_guidance(from_data)]
        if from_pool:
            traj = torch.randint(0, dc.trajectories, (from_pool,), generator=gen)
            xs.append(pool.at(traj, sigma[from_data:]))
            which.append(pool.which[traj])
            g.append(pool.guidance[traj])
        x, rows, guidance = torch.cat(xs), torch.cat(which), torch.cat(g)
        target = teacher(x, sigma, rows, guidance)
        return (model(x, sigma, prompts.context[rows], y=prompts.pooled[rows], guidance=guidance) - target).square().mean()

    train_seconds = optimise(model, tc, step_loss, on_log=held_out.line)

    errors = held_out(model.state_dict())
    digest = state_digest(model)
    sampling = {"steps": df.STEPS, "cfg": df.DISTILLED_CFG, "guidance": df.DISTILLED_GUIDANCE,
                "sampler": df.SAMPLER, "scheduler": df.SCHEDULER}
    meta = {"format": df.DISTILLED_FORMAT, "flux_config": json.dumps(df.DISTILLED_FLUX_CONFIG),
            "train": json.dumps(asdict(tc)), "distill": json.dumps(asdict(dc)), "digest": digest,
            "sampling": json.dumps(sampling), "prompts": json.dumps(df.TEMPLATES),
            "teacher": teacher_file.name, "teacher_sha256": hashlib.sha256(teacher_file.read_bytes()).hexdigest(),
            "text_encoder_digest": df.text_encoder_digest(testbed.clip),
            "held_out_error": json.dumps({f"{g:g}": round(e, 5) for g, e in errors.items()})}
    report = save_weights(fp16_tensors("diffusion_model", model), args.out, meta)
    report.update({"flux_digest": digest, "train_seconds": round(train_seconds, 1),
                   "held_out_error": {f"{g:g}": round(e, 5) for g, e in errors.items()},
                   "held_out_error_mean": round(statistics.fmean(errors.values()), 5)})
    if args.check:
        report.update(class_agreement(args.check, df.load(report["weights"], "distilled", teacher=teacher_file)))
    print(json.dumps(report, indent=1), flush=True)


if __name__ == "__main__":
    main()
