"""Many sampling prompts through one ComfyUI server with one OTCache-patched model.

The tiny Wan 2.1 of ``comfy_server.py`` is loaded once (UNETLoader), patched by OTCache Apply with a
schedule from OTCache Schedule, and sampled by KSampler into SaveLatent. Consecutive prompts differ in
resolution, batch, cfg, sampler (``euler``, ``heun`` with two model evaluations per step,
``dpmpp_2m`` with a multistep history), budget and reuse rule, so that every node downstream of the loader runs
again each time (ComfyUI would otherwise serve a repeated prompt from its cache). The settings repeat
in cycles of :data:`CONFIGS`; every repeat's latent is compared bit for bit with the first output of
the same settings. The server's resident memory is read after the first cycle (the warm-up: every
code path, shape and sampler has run once) and at the end.

Used by ``benchmarks/comfyui_longrun.py`` (200 prompts) and ``test_server_longrun.py`` (20).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .comfy_server import ComfyServer, model_and_inputs

STEPS = 10
SAMPLING_NODE = "7"
CONFIGS: list[dict] = [
    dict(width=32, height=32, batch=1, cfg=3.0, sampler="euler", budget=4, reuse="calibrated"),
    dict(width=48, height=32, batch=2, cfg=1.0, sampler="heun", budget=6, reuse="linear"),
    dict(width=32, height=32, batch=2, cfg=3.0, sampler="dpmpp_2m", budget=10, reuse="quadratic"),
    dict(width=48, height=32, batch=1, cfg=1.0, sampler="euler", budget=5, reuse="meancache3"),
    dict(width=32, height=32, batch=1, cfg=1.0, sampler="heun", budget=3, reuse="hold"),
    dict(width=48, height=32, batch=2, cfg=3.0, sampler="dpmpp_2m", budget=4, reuse="linear"),
]
REPORT = re.compile(r"OTCache \[(\w+)\]: computed (\d+)/(\d+) steps")


def prompt(config: dict, index: int) -> dict:
    return {
        **model_and_inputs(config["width"], config["height"], config["batch"]),
        "5": {"class_type": "OTCacheSchedule", "inputs": {
            "preset": "wan2.1-t2v-1.3b", "steps": STEPS, "budget": config["budget"], "budget_as": "computed steps",
            "speedup": 3.0, "warmup_steps": 0, "lambda_mapping": "linear"}},
        "6": {"class_type": "OTCacheApply", "inputs": {"model": ["1", 0], "schedule": ["5", 0], "mode": "auto",
                                                      "start_percent": 0.0, "end_percent": 1.0,
                                                      "reuse": config["reuse"]}},
        SAMPLING_NODE: {"class_type": "KSampler", "inputs": {
            "model": ["6", 0], "seed": 11, "steps": STEPS, "cfg": config["cfg"], "sampler_name": config["sampler"],
            "scheduler": "simple", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0}},
        "8": {"class_type": "SaveLatent", "inputs": {"samples": [SAMPLING_NODE, 0], "filename_prefix": f"longrun_{index}"}},
    }


@dataclass
class LongRun:
    """What a long run measured."""

    prompts: int
    rss_after_warmup: int
    rss_end: int
    seconds: float
    repeats: int = 0
    """Prompts whose settings ran before (compared with the first output of those settings)."""
    changed: list[int] = field(default_factory=list)
    """Prompt numbers whose output differed from the first output of the same settings."""
    cached: list[int] = field(default_factory=list)
    """Prompt numbers whose sampling node ComfyUI served from its cache (should be none)."""
    reports: list[tuple[str, int, int]] = field(default_factory=list)
    """OTCache's run reports from the server log: (mode, computed, steps), one per sampling run."""

    @property
    def growth_per_prompt(self) -> float:
        after = self.prompts - len(CONFIGS)
        return (self.rss_end - self.rss_after_warmup) / after if after > 0 else 0.0


def long_run(server: ComfyServer, prompts: int, progress=None) -> LongRun:
    """Run ``prompts`` prompts through ``server`` (see module doc)."""
    import safetensors.torch

    first: dict[int, "torch.Tensor"] = {}
    log_start = len(server.log())
    started = time.perf_counter()
    run = LongRun(prompts=prompts, rss_after_warmup=0, rss_end=0, seconds=0.0)
    for n in range(prompts):
        k = n % len(CONFIGS)
        result = server.run(prompt(CONFIGS[k], k))
        if SAMPLING_NODE in [node for kind, data in result["status"]["messages"] if kind == "execution_cached"
                             for node in data["nodes"]]:
            run.cached.append(n)
        (saved,) = result["outputs"]["8"]["latents"]
        path = server.base / "output" / saved["subfolder"] / saved["filename"]
        latent = safetensors.torch.load_file(str(path))["latent_tensor"]
        path.unlink()  # 200 prompts would otherwise leave 200 files
        if k in first:
            run.repeats += 1
            if not (latent.shape == first[k].shape and latent.eq(first[k]).all()):
                run.changed.append(n)
        else:
            first[k] = latent
        if n == len(CONFIGS) - 1:
            run.rss_after_warmup = server.rss_bytes()
        if progress:
            progress(n + 1, prompts)
    run.rss_end = server.rss_bytes()
    run.seconds = time.perf_counter() - started
    run.reports = [(m, int(c), int(t)) for m, c, t in REPORT.findall(server.log()[log_start:])]
    return run


def expected_reports(prompts: int) -> list[int]:
    """The computed-step count each prompt's run report must show (the budget at T = STEPS)."""
    return [CONFIGS[n % len(CONFIGS)]["budget"] for n in range(prompts)]


def describe(run: LongRun) -> str:
    mib = 2**20
    return "\n".join([
        f"prompts: {run.prompts} in {run.seconds:.0f} s ({run.seconds / run.prompts:.2f} s each), "
        f"{len(CONFIGS)} settings alternating",
        f"server RSS after warm-up ({len(CONFIGS)} prompts): {run.rss_after_warmup / mib:.1f} MiB",
        f"server RSS at the end: {run.rss_end / mib:.1f} MiB "
        f"({(run.rss_end - run.rss_after_warmup) / mib:+.1f} MiB, {run.growth_per_prompt / 1024:+.1f} KiB per prompt)",
        f"repeated prompts whose output changed: {len(run.changed)} of {run.repeats}"
        + (f" (prompts {run.changed[:20]})" if run.changed else ""),
        f"sampling served from ComfyUI's cache: {len(run.cached)}",
        f"OTCache run reports: {len(run.reports)} for {run.prompts} prompts",
    ])
