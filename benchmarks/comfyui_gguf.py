"""OTCache on GGUF-quantized models (ComfyUI-GGUF) against the same model unquantized: fidelity and time.

    COMFYUI_PATH=/path/to/ComfyUI OTCACHE_PEER_PACKS=/path/to/packs \\
        python benchmarks/comfyui_gguf.py [--families wan flux] [--steps 20] [--budgets 10 5]

For each model (``tests/comfyui/gguf_models.py``: the tiny Wan of the test server, and the smallest
Flux ComfyUI's detection builds; both random weights, so this measures how closely a run follows the
full-compute trajectory, not image quality), the unquantized float32 model (ComfyUI's own loading) and
its Q8_0 and Q6_K GGUF files (the ComfyUI-GGUF pack's UnetLoaderGGUF) sample ``--steps`` euler steps
at cfg 3 (Flux: cfg 1, as the distilled FLUX models run) from ``--seeds`` seeds; OTCache runs evenly
spaced computed steps with the ``linear`` reuse rule in ``blocks`` and ``model`` mode. Per variant,
mode and budget: the latent PSNR (peak-to-peak of the reference latent) of the OTCache output against
the variant's own full compute and against the unquantized full compute, and the time of the OTCache
run over the variant's full-compute run. Times are the process's CPU time on one thread (medians of
the seeds): on an idle machine that is the wall time, and on a shared one it does not count the other
processes' share of the cores.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK = "city96+ComfyUI-GGUF"


def psnr(out, reference) -> float:
    mse = float(((out - reference) ** 2).mean())
    span = float(reference.max() - reference.min())
    return 10 * math.log10(span**2 / mse) if mse > 0 else math.inf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["wan", "flux"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--flux-steps", type=int, default=10, help="the Flux costs 4-15 s per model call on one thread")
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 5], help="computed steps at --steps")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--flux-seeds", type=int, default=1)
    args = parser.parse_args()
    if not os.environ.get("COMFYUI_PATH"):
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout")
    packs = Path(os.environ.get("OTCACHE_PEER_PACKS", "")).expanduser()
    if not (packs / PACK / "__init__.py").is_file():
        sys.exit(f"fetch github:city96/ComfyUI-GGUF into $OTCACHE_PEER_PACKS/{PACK}")
    sys.path.insert(0, str(REPO / "tests"))
    from comfyui.conftest import REPO_ROOT, _import_comfyui_nodes, load_pack  # sets up comfy for the CPU

    import torch

    torch.set_num_threads(1)
    _import_comfyui_nodes()
    pack = load_pack(REPO_ROOT, "otcache_pack")
    gguf_pack = load_pack(packs / PACK, "peer_city96_ComfyUI_GGUF")
    from comfyui import gguf_models as G

    import folder_paths

    core = pack.otcache_core
    with tempfile.TemporaryDirectory(prefix="otcache_gguf_bench_") as scratch:  # the Flux files are 700 MB
        folder_paths.add_model_folder_path("diffusion_models", scratch)
        measure(args, core, pack, gguf_pack, G, Path(scratch))


def measure(args, core, pack, gguf_pack, G, folder: Path) -> None:
    """Print the tables (see the module doc); GGUF files are written to ``folder``."""
    import comfy.sample
    import torch

    print(f"one CPU thread (torch {torch.__version__}); euler; evenly spaced computed steps, reuse rule linear; "
          "latent PSNR in dB (mean over seeds); time = CPU time of the OTCache run / of the variant's own "
          "full-compute run (median)")
    for family in args.families:
        T = args.flux_steps if family == "flux" else args.steps
        seeds = args.flux_seeds if family == "flux" else args.seeds
        cfg = 1.0 if family == "flux" else 3.0
        budgets = sorted({max(1, round(b * T / args.steps)) for b in args.budgets}, reverse=True)
        state = G.state_dict_of(family)
        variants = {"float32": G.load_unquantized(state)}
        for qtype in G.QTYPES:
            path = folder / f"bench_{family}_{qtype}.gguf"
            G.write_gguf(path, state, family, qtype)
            (variants[qtype],) = gguf_pack.NODE_CLASS_MAPPINGS["UnetLoaderGGUF"]().load_unet(path.name)
        del state
        m = G.tiny_model_of(variants["float32"], family)
        latent = m.make_latent()

        def run(patcher, seed: int):
            started = time.process_time()  # one thread: CPU time is the wall time without other processes
            out = comfy.sample.sample(patcher, m.noise(latent, seed), T, cfg, "euler", "simple", m.positive(),
                                      m.negative(), latent, seed=seed, disable_pbar=True)
            return out, time.process_time() - started

        for patcher in variants.values():  # first-call costs (loading, lazy imports) out of the timings
            comfy.sample.sample(patcher, m.noise(latent, 0), 1, cfg, "euler", "simple", m.positive(), m.negative(),
                                latent, seed=0, disable_pbar=True)
        full = {name: [run(patcher, seed) for seed in range(seeds)] for name, patcher in variants.items()}
        reference = [out for out, _ in full["float32"]]
        print(f"\n{family}: T={T}, cfg {cfg:g}, {seeds} seed(s), latent {tuple(latent.shape[1:])}\n")
        for name in variants:
            times = [s for _, s in full[name]]
            quant_db = statistics.mean(psnr(out, ref) for (out, _), ref in zip(full[name], reference))
            print(f"{name}: full compute {statistics.median(times):.2f} s CPU per run"
                  + ("" if name == "float32" else f", {quant_db:.1f} dB against float32 full compute"))
        print("\n| variant | mode | B | vs own full (dB) | vs float32 full (dB) | time vs own full |")
        print("|---|---|---:|---:|---:|---:|")
        for budget in budgets:
            plan = core.plan.SchedulePlan.from_schedule(core.warp.sample_warp(core.warp.identity_warp(), T, budget))
            for mode in ("blocks", "model"):
                for name, patcher in variants.items():
                    patched = pack.nodes.apply_node.apply_otcache(patcher, plan, mode, quiet=True, reuse="linear")
                    runs = [run(patched, seed) for seed in range(seeds)]
                    own = statistics.mean(psnr(out, ref) for (out, _), (ref, _) in zip(runs, full[name]))
                    base = statistics.mean(psnr(out, ref) for (out, _), ref in zip(runs, reference))
                    ratio = statistics.median(s for _, s in runs) / statistics.median(s for _, s in full[name])
                    print(f"| {name} | {mode} | {budget} | {own:.1f} | {base:.1f} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
