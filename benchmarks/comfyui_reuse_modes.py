"""Fidelity of each reuse mode and rule inside ComfyUI, against the unpatched model's output.

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/comfyui_reuse_modes.py [--families flux wan21_t2v]

Tiny real ComfyUI models (random weights, so the outputs are not images: this measures how closely a
cached run follows the full-compute ODE trajectory, not perceptual quality) sample T = 20 euler steps
at cfg 3 with evenly spaced computed steps. For every budget, reuse mode (``blocks``, ``model``) and
reuse rule it prints the relative L1 distance of the final latent to full compute,
``mean|cached - full| / mean|full|``, and the latent PSNR with the full latent's peak-to-peak range,
averaged over ``--seeds`` seeds. Deterministic (no timing).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["flux", "wan21_t2v"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 7, 5])
    parser.add_argument("--rules", nargs="+", default=["hold", "linear", "quadratic"])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--size", type=int, default=16, help="latent side")
    args = parser.parse_args()
    if not os.environ.get("COMFYUI_PATH"):
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout")
    sys.path.insert(0, str(REPO / "tests"))
    from comfyui.conftest import REPO_ROOT, _import_comfyui_nodes, load_pack  # sets up comfy for the CPU

    import torch

    torch.set_num_threads(1)
    _import_comfyui_nodes()
    pack = load_pack(REPO_ROOT, "otcache_pack")
    from comfyui import tiny_models

    import comfy.sample

    core, T = pack.otcache_core, args.steps
    print(f"T={T}, euler, cfg 3, latent {args.size}x{args.size}, {args.seeds} seeds; "
          "relative L1 / latent PSNR (dB) of the final latent against full compute (lower / higher is closer)")
    for family in args.families:
        m = tiny_models.build(family)
        latent = m.make_latent(1, args.size, args.size)

        def sample(patcher, seed: int):
            return comfy.sample.sample(patcher, m.noise(latent, seed), T, 3.0, "euler", "simple", m.positive(),
                                       m.negative(), latent, seed=seed, disable_pbar=True)

        fulls = [sample(m.patcher, seed) for seed in range(args.seeds)]
        print(f"\n{family}\n")
        print("| B | " + " | ".join(f"{mode} {rule}" for mode in ("blocks", "model") for rule in args.rules) + " |")
        print("|---:|" + "---|" * (2 * len(args.rules)))
        for budget in args.budgets:
            plan = core.plan.SchedulePlan.from_schedule(core.warp.sample_warp(core.warp.identity_warp(), T, budget))
            cells = []
            for mode in ("blocks", "model"):
                for rule in args.rules:
                    patched = pack.nodes.apply_node.apply_otcache(m.patcher, plan, mode, quiet=True, reuse=rule)
                    l1, db = [], []
                    for seed, full in enumerate(fulls):
                        out = sample(patched, seed)
                        l1.append(float((out - full).abs().mean() / full.abs().mean()))
                        mse = float(((out - full) ** 2).mean())
                        span = float(full.max() - full.min())
                        db.append(10 * math.log10(span**2 / mse) if mse > 0 else math.inf)
                    cells.append(f"{sum(l1) / len(l1):.4f} / {sum(db) / len(db):.1f}")
            print(f"| {budget} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
