"""What a reused step in ``blocks`` mode should hand the model as ControlNet output: fidelity of three rules.

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/comfyui_control_hold.py [--size 16] [--seeds 4]

A tiny real ComfyUI Flux (4 double + 8 single blocks, hidden 256; random weights) with a FLUX ControlNet of
ComfyUI's own class (2 double + 2 single blocks at the same width) on both conds samples T = 20 steps
(euler, cfg 3) with a uniform schedule of B = 10 and 5 computed steps in ``blocks`` mode. At reused steps
the model gets, as control:

* ``always``: a fresh control output (the ControlNet runs at every step: what OTCache did before it
  skipped control models);
* ``hold``: the output of the last computed step (what OTCache does: no control model runs);
* ``drop``: none (no control model runs; the control added after each stage's last block is lost).

It prints the relative L2 error of each against the unpatched run with the same ControlNet (mean over
seeds), and the size of the ControlNet's effect (unpatched with against without it) for scale.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16, help="latent side")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 5])
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    if not os.environ.get("COMFYUI_PATH"):
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout")
    sys.path.insert(0, str(REPO / "tests"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from comfyui.conftest import REPO_ROOT, _import_comfyui_nodes, load_pack  # sets up comfy for the CPU

    import torch

    torch.set_num_threads(1)
    _import_comfyui_nodes()
    pack = load_pack(REPO_ROOT, "otcache_pack")
    from comfyui import tiny_models
    from comfyui.tiny_controls import build_flux_controlnet_like, hint_image

    import comfy.sample
    import nodes

    core = pack.otcache_core
    held = pack.nodes.control_models.HeldControls
    m = tiny_models.build("flux_bench")
    latent = m.make_latent(1, args.size, args.size)
    control = build_flux_controlnet_like(m, 2, 2)
    pos, neg = nodes.ControlNetApplyAdvanced().apply_controlnet(m.positive(), m.negative(), control,
                                                                hint_image(latent), 1.0, 0.0, 1.0)
    T = args.steps

    def sample(patcher, seed, positive=pos, negative=neg):
        return comfy.sample.sample(patcher, m.noise(latent, seed), T, 3.0, "euler", "simple", positive, negative,
                                   latent, seed=seed, disable_pbar=True)

    @contextmanager
    def dropping():
        """Reused calls get no control at all (the rule OTCache does not use)."""
        take = held.take
        held.take = lambda self, key, x: (True, None)
        try:
            yield
        finally:
            held.take = take

    def rel(a, b) -> float:
        return float((a - b).norm() / b.norm())

    errors: dict[str, list[float]] = {}
    for seed in range(args.seeds):
        full = sample(m.patcher, seed)
        errors.setdefault("ControlNet effect (without / with)", []).append(
            rel(sample(m.patcher, seed, m.positive(), m.negative()), full))
        for budget in args.budgets:
            schedule = core.warp.sample_warp(core.warp.identity_warp(), T, budget)
            plan = core.plan.SchedulePlan.from_schedule(schedule, label=f"uniform B={budget}")
            apply = pack.nodes.apply_node.apply_otcache
            always = apply(m.patcher, plan, "blocks", quiet=True, skip_control_models=False)
            skipping = apply(m.patcher, plan, "blocks", quiet=True)
            errors.setdefault(f"B={budget} always", []).append(rel(sample(always, seed), full))
            errors.setdefault(f"B={budget} hold", []).append(rel(sample(skipping, seed), full))
            with dropping():
                errors.setdefault(f"B={budget} drop", []).append(rel(sample(skipping, seed), full))
    print(f"tiny Flux (4 double + 8 single, hidden 256) + FLUX ControlNet (2 double + 2 single), latent "
          f"{args.size}x{args.size}, T={T}, blocks mode, relative L2 error to the unpatched run, mean of "
          f"{args.seeds} seeds")
    print("| case | mean | per seed |")
    print("|---|---:|---|")
    for name, values in errors.items():
        print(f"| {name} | {statistics.mean(values):.4f} | {' '.join(f'{v:.4f}' for v in values)} |")


if __name__ == "__main__":
    main()
