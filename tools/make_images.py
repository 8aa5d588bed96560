"""Regenerate the README's pictures and the workflow thumbnails, with one command.

Usage (from the repository root, with the Python that runs ComfyUI's tests)::

    COMFYUI_PATH=../ComfyUI python tools/make_images.py            # everything (about 3 minutes)
    python tools/make_images.py --no-browser --quick               # only the pictures that need no ComfyUI

Writes:

* ``docs/images/icon.png``: the pack's icon for the Comfy registry (``[tool.comfy] Icon``), 200 x 200:
  36 steps in a grid, the computed ones filled;
* ``docs/images/schedule_strips.png``: the FLUX.1-dev preset's published reference and anchor, the
  schedules OTCache predicts between them at B = 20 and 15, and the authors' own lists at those budgets
  (not used by the prediction), one strip per schedule (filled = computed step);
* ``docs/images/demo.png``: the figure of ``python -m otcache_core demo`` (the run takes about
  1.5 minutes on two CPU cores, ``--quick`` about 30 s);
* ``docs/images/comfyui_run.png`` and ``workflows/<name>.jpg``: screenshots taken by the browser tests
  (``tests/comfyui/test_browser.py`` with ``OTCACHE_WRITE_IMAGES=1``): the end-to-end run in ComfyUI's
  page, and every example workflow as its template-browser thumbnail. Needs ``COMFYUI_PATH``,
  Playwright and Debian's ``chromium``.

PNG files are reduced to a 256-colour palette so that each stays well under 150 KB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from otcache_core.calibration import Calibration  # noqa: E402
from otcache_core.figures import schedule_strips  # noqa: E402
from otcache_core.interpolation import predict  # noqa: E402
from otcache_core.schedule import Schedule  # noqa: E402

IMAGES = REPO / "docs" / "images"
MAX_BYTES = 150_000


def save_small_png(image, path: Path) -> Path:
    """Save (a PIL image) as a 256-colour PNG; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.convert("RGB").quantize(colors=256).save(path, optimize=True)
    if path.stat().st_size > MAX_BYTES:
        print(f"warning: {path.name} is {path.stat().st_size // 1000} KB", file=sys.stderr)
    return path


def icon(path: Path, size: int = 200) -> Path:
    """A rounded dark square holding 36 steps in a 6 x 6 grid, the computed ones (12, as OTCache predicts
    them between the FLUX.1-dev preset's reference and anchor) filled blue."""
    from PIL import Image, ImageDraw

    from otcache_core.figures import COMPUTED

    cal = Calibration.load(REPO / "schedules" / "flux.1-dev.json")
    cells = 6
    computed = set(predict(cal.reference.schedule, cal.anchor.schedule, cells * cells, 12).schedule.compute_steps)
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle([0, 0, size - 1, size - 1], radius=size // 6, fill=(34, 38, 46))
    pad = size // 8
    pitch = (size - 2 * pad) / cells
    for k in range(cells * cells):
        x, y = pad + (k % cells) * pitch, pad + (k // cells) * pitch
        draw.rounded_rectangle([x + 3, y + 3, x + pitch - 3, y + pitch - 3], radius=4,
                               fill=COMPUTED if k in computed else (86, 92, 104))
    return save_small_png(image, path)


def schedule_figure(path: Path) -> Path:
    from PIL import Image

    cal = Calibration.load(REPO / "schedules" / "flux.1-dev.json")
    ref, anchor, T = cal.reference.schedule, cal.anchor.schedule, cal.steps
    published = {item["budget"]: item["compute_steps"] for item in cal.source["published_lists"]}
    rows = [("reference (published)", ref)]
    for budget in (20, 15):
        rows.append((f"OTCache prediction B={budget}", predict(ref, anchor, T, budget).schedule))
        rows.append((f"published B={budget} (not used)", Schedule.from_steps(published[budget], T)))
    rows.append(("anchor (published)", anchor))
    return save_small_png(Image.fromarray(schedule_strips(rows, cell=12, row_height=20)), path)


def demo_figure(path: Path, quick: bool) -> Path:
    from PIL import Image

    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "otcache_core", "demo", "--out", out] + (["--quick"] if quick else [])
        subprocess.run(command, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        with Image.open(Path(out) / "demo.png") as figure:
            return save_small_png(figure, path)


def browser_images() -> list[Path]:
    if not os.environ.get("COMFYUI_PATH"):
        raise SystemExit("error: set COMFYUI_PATH to a ComfyUI checkout for the screenshots (or pass --no-browser)")
    env = {**os.environ, "OTCACHE_WRITE_IMAGES": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "tests/comfyui/test_browser.py"], cwd=REPO, env=env)
    if result.returncode != 0:
        raise SystemExit("error: the browser tests failed (or were skipped): no screenshots written")
    from PIL import Image

    screenshot = IMAGES / "comfyui_run.png"
    with Image.open(screenshot) as image:
        image.load()
    save_small_png(image, screenshot)
    return [screenshot, *sorted((REPO / "workflows").glob("*.jpg"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick demo run (a smaller figure)")
    parser.add_argument("--no-browser", action="store_true", help="skip the screenshots (no ComfyUI needed)")
    args = parser.parse_args(argv)
    written = [icon(IMAGES / "icon.png"), schedule_figure(IMAGES / "schedule_strips.png"),
               demo_figure(IMAGES / "demo.png", args.quick)]
    if not args.no_browser:
        written += browser_images()
    for path in written:
        print(f"{path.relative_to(REPO)}: {path.stat().st_size // 1000} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
