"""A long-running ComfyUI server: 200 sampling prompts with one OTCache-patched model.

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/comfyui_longrun.py [--prompts 200]

Starts a real ComfyUI server (``tests/comfyui/comfy_server.py``: ``main.py --cpu`` on localhost, one
thread, the tiny Wan 2.1 of the tests as its model) and sends prompts through its HTTP API whose resolution,
batch, cfg, sampler (euler, heun, dpmpp_2m), OTCache budget and reuse rule change every prompt, in cycles of six
settings (``tests/comfyui/longrun.py``). Prints the server's resident memory after the first cycle
and at the end, and how many repeated prompts' outputs differed from the first output of the same
settings (bit for bit). The 20-prompt version is ``tests/comfyui/test_server_longrun.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200)
    args = parser.parse_args()
    comfy_root = os.environ.get("COMFYUI_PATH")
    if not comfy_root:
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout")
    sys.path.insert(0, str(REPO / "tests"))
    from comfyui.conftest import COMFYUI_ROOT  # puts ComfyUI on sys.path, CPU float32 (for the tiny model)
    from comfyui.comfy_server import prepare_base, start_server
    from comfyui.longrun import describe, long_run

    with tempfile.TemporaryDirectory(prefix="otcache-longrun-") as base:
        prepare_base(Path(base), COMFYUI_ROOT)
        server = start_server(COMFYUI_ROOT, Path(base))
        try:
            run = long_run(server, args.prompts,
                           progress=lambda n, total: print(f"\r{n}/{total}", end="", file=sys.stderr, flush=True))
            print(file=sys.stderr)
        finally:
            server.stop()
    print(describe(run))


if __name__ == "__main__":
    main()
