"""A ComfyUI server that runs many prompts with one OTCache-patched model stays exact and bounded.

Twenty prompts (``longrun``: resolution, batch, cfg, sampler, budget and reuse rule change every prompt, in
cycles of six settings): every repeated setting gives the bit-identical latent it gave the first
time, OTCache reports every sampling run with its budget, no sampling is served from ComfyUI's cache,
and the server's memory after the warm-up cycle grows by less than 64 MiB over the remaining 14
prompts (a copy of the 16 MB model kept per prompt would add 224 MiB). ``benchmarks/comfyui_longrun.py``
runs the 200-prompt version and prints the figures.
"""

from __future__ import annotations

from .longrun import CONFIGS, describe, expected_reports, long_run

PROMPTS = 20


def test_twenty_alternating_prompts_repeat_exactly_with_bounded_memory(comfy_server):
    run = long_run(comfy_server, PROMPTS)
    print(describe(run))
    assert run.repeats == PROMPTS - len(CONFIGS) and run.changed == []
    assert run.cached == []
    assert [computed for _, computed, _ in run.reports] == expected_reports(PROMPTS)
    assert run.rss_end - run.rss_after_warmup < 64 * 2**20
    assert comfy_server.process.poll() is None
