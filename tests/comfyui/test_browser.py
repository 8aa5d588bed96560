"""The workflows in ComfyUI's own web page, in a real headless Chromium (see ``browser.py``).

Every file in ``workflows/`` is dropped on the canvas the way a user drags it in: no missing-node or
error dialog may show, no script error may be raised, and every OTCache node must show the file's
widget values. The template browser must list every workflow under this pack with its thumbnail.
One end-to-end case queues a workflow on a tiny real model by clicking the page's Run button and
waits for OTCache's report line in the server log and for the preview images on the nodes.

Needs ``COMFYUI_PATH`` (like every test here), Playwright and a ``chromium`` on the PATH; skipped
with one reason line otherwise. With ``OTCACHE_WRITE_IMAGES=1`` (``tools/make_images.py`` sets it)
the screenshots also become the workflow thumbnails and the README's pictures.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from workflow_rules import load, load_builder

from . import browser as web
from .comfy_server import TINY_WAN

REPO = Path(__file__).resolve().parents[2]
FILES = sorted((REPO / "workflows").glob("*.json"))
WRITE_IMAGES = os.environ.get("OTCACHE_WRITE_IMAGES") == "1"
README_IMAGES = REPO / "docs" / "images"
THUMBNAIL_SIZE = (400, 250)
OTCACHE_NODES = {"OTCacheSchedule", "OTCacheApply", "OTCacheCalibrate", "OTCacheCompare"}
LEGACY_GENERIC = "generic (FLUX.1-dev published shape, any model)"
STEPS = 10
REPORT = "OTCache ["  # how every run report line starts


@pytest.fixture(scope="module")
def context():
    reason = web.browser_missing()
    if reason:
        pytest.skip(f"browser tests: {reason}")
    yield from web.launch()


@pytest.fixture(scope="module")
def page(context, comfy_server) -> web.ComfyPage:
    tab = web.ComfyPage(context.new_page(), comfy_server.url)
    tab.open()
    return tab


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where the screenshots of this run go."""
    return tmp_path_factory.mktemp("screenshots")


def assert_clean(page: web.ComfyPage, errors_before: int) -> None:
    problems = page.problems()
    assert not problems["dialogs"], f"a dialog is shown: {problems['dialogs']}"
    assert not problems["toasts"], f"an error toast is shown: {problems['toasts']}"
    assert page.errors[errors_before:] == [], "the page raised script errors"


def save_thumbnail(screenshot: Path, target: Path) -> None:
    from PIL import Image

    with Image.open(screenshot) as image:
        small = image.convert("RGB").resize(THUMBNAIL_SIZE, Image.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=80, optimize=True)
    target.write_bytes(buffer.getvalue())


# --------------------------------------------------------------------------------------------------
# Every example workflow, dropped on the canvas
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_a_workflow_dropped_on_the_page_loads_cleanly_with_its_values(page, shots, path):
    workflow = load(path)
    errors_before = len(page.errors)
    page.drop_workflow(workflow, path.name)
    assert_clean(page, errors_before)
    shown = {n["id"]: n for n in page.nodes()}
    checked = 0
    for node in workflow["nodes"]:
        assert shown[node["id"]]["type"] == node["type"]
        if node["type"] in OTCACHE_NODES:
            assert [value for _, value in shown[node["id"]]["widgets"]] == node["widgets_values"], node["type"]
            checked += 1
    assert checked >= 2
    page.fit_view()
    screenshot = page.screenshot(shots / f"{path.stem}.png", clip=web.CANVAS_CLIP)
    if WRITE_IMAGES:
        save_thumbnail(screenshot, path.with_suffix(".jpg"))


def test_the_missing_node_check_sees_a_missing_node(page):
    """The check above can fail: a workflow with an unknown node type brings up the front end's warning."""
    workflow = load(FILES[0])
    workflow["nodes"][0] = {**workflow["nodes"][0], "type": "OTCacheNoSuchNode"}
    page.drop_workflow(workflow, "missing.json")
    try:
        assert any("OTCacheNoSuchNode" in text for text in page.problems()["dialogs"])
    finally:
        page.dismiss_dialogs()
    assert not page.problems()["dialogs"]


SCROLL_CARD_INTO_VIEW_JS = """(img) => {
    let card = img;
    while (card.parentElement && card.getBoundingClientRect().height === 0) card = card.parentElement;
    card.scrollIntoView({block: 'center'});
}"""


def test_the_template_browser_lists_every_workflow_with_its_thumbnail(page, comfy_server):
    """Under "Custom Nodes" -> otcache: one card per workflow whose image loaded. This front end (1.27)
    asks for ``<stem>.jpg`` beside the workflow's JSON."""
    stems = sorted(p.stem for p in FILES)
    assert sorted(comfy_server.get("/api/workflow_templates")["otcache"]) == stems
    page.page.get_by_role("button", name="Templates").first.click()
    page.page.get_by_text("otcache", exact=True).first.click()
    try:
        for stem in stems:  # a card loads its image once scrolled into view
            image = page.page.locator(f'.p-dialog img[alt="{stem}"]').element_handle(timeout=30_000)
            image.evaluate(SCROLL_CARD_INTO_VIEW_JS)
            page.page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=image, timeout=30_000)
    finally:
        page.dismiss_dialogs()
    fetched = {url.rsplit("/", 1)[-1]: status for url, status in page.responses if "/workflow_templates/otcache/" in url}
    assert all(fetched.get(f"{stem}.jpg") == 200 for stem in stems), fetched


# --------------------------------------------------------------------------------------------------
# End to end: Run clicked on the page, a tiny real model sampled with OTCache
# --------------------------------------------------------------------------------------------------

def tiny_wan_workflow(preset: str, calibrate: bool) -> dict:
    """Tiny Wan -> [OTCache Calibrate ->] OTCache Schedule -> OTCache Apply -> KSampler -> SaveLatent, built
    with the same builder as the shipped workflows (so the OTCache nodes carry every current input)."""
    b = load_builder()
    w = b.Workflow()
    w.note((0, -200), (560, 120), "Test workflow: a tiny Wan 2.1 and test-only conditioning nodes.", "About")
    unet = b.unet_loader(w, (0, 0), TINY_WAN)
    conds = [w.node("OTCacheTestConditioning", (0, 120 + 120 * k), (300, 82), [k + 1, "fixed"],
                    outputs=[("CONDITIONING", "CONDITIONING")], title=title)
             for k, title in enumerate(("Positive (test)", "Negative (test)"))]
    latent = w.node("EmptyHunyuanLatentVideo", (0, 370), (300, 130), [32, 32, 1, 1], outputs=[("LATENT", "LATENT")])
    schedule = b.otcache_schedule(w, (760, -60), preset, STEPS, 4)
    apply_ = b.otcache_apply(w, (1140, 0))
    sampler = b.ksampler(w, (1500, 0), 3, STEPS, 3.0, "euler", "simple")
    save = w.node("SaveLatent", (1860, 0), (300, 58), ["otcache_browser"], inputs=[("samples", "LATENT")])
    strips = b.preview_image(w, (760, 260), "OTCache schedule preview", size=(560, 220))
    summary = b.preview_text(w, (1340, 330), "OTCache schedule summary")
    if calibrate:
        calibration = b.otcache_node(w, "OTCacheCalibrate", (360, 0), 360, samples=2, steps=STEPS, cfg=3.0,
                                     sampler_name="euler", scheduler="simple", max_segment=5, trials=5,
                                     name="browser-e2e", storage="memory")
        for name, source in (("model", unet), ("positive", conds[0]), ("negative", conds[1]), ("latent_image", latent)):
            w.link(source, 0, calibration, name)
        w.link(calibration, 0, schedule, "calibration")
    w.link(unet, 0, apply_, "model")
    w.link(schedule, 0, apply_, "schedule")
    w.link(schedule, 1, strips, "images")
    w.link(schedule, 2, summary, "source")
    w.link(apply_, 0, sampler, "model")
    w.link(conds[0], 0, sampler, "positive")
    w.link(conds[1], 0, sampler, "negative")
    w.link(latent, 0, sampler, "latent_image")
    w.link(sampler, 0, save, "samples")
    return w.to_json()


def node_id(workflow: dict, title: str) -> int:
    return next(n["id"] for n in workflow["nodes"] if n.get("title") == title or n["type"] == title)


def run_on_the_page(page: web.ComfyPage, server, workflow: dict, name: str) -> str:
    """Drop ``workflow`` and click Run; once the prompt has finished without errors (dialogs, toasts, page
    errors or a failed status), the server log, which must hold a new OTCache report line."""
    errors_before = len(page.errors)
    page.drop_workflow(workflow, name)
    assert_clean(page, errors_before)
    reports_before = server.log().count(REPORT)
    page.click_run()
    log = web.poll(server.log, lambda text: text.count(REPORT) > reports_before, timeout=240)
    assert log.count(REPORT) > reports_before, f"no OTCache report in the server log:\n{log[-3000:]}"
    (last,) = server.wait_idle().values()
    assert last["status"]["status_str"] == "success", server.log()[-3000:]
    page.page.wait_for_timeout(1000)  # the page receives the outputs and redraws
    assert_clean(page, errors_before)
    return server.log()


def test_run_clicked_on_the_page_samples_with_otcache_and_shows_the_previews(page, comfy_server, shots):
    workflow = tiny_wan_workflow("wan2.1-t2v-1.3b", calibrate=True)
    log = run_on_the_page(page, comfy_server, workflow, "otcache_tiny_wan.json")
    assert f"OTCache [model]: computed 4/{STEPS} steps" in log
    assert "schedule: browser-e2e" in log  # the calibration made in this run
    strips = page.wait_for_node_image(node_id(workflow, "OTCache schedule preview"))
    calibration = page.wait_for_node_image(node_id(workflow, "OTCacheCalibrate"))
    assert strips["width"] > 100 and calibration["width"] > 100
    assert "type=temp" in strips["src"] and "type=temp" in calibration["src"]
    page.fit_view()
    screenshot = page.screenshot(shots / "run.png", clip=web.CANVAS_CLIP)
    if WRITE_IMAGES:
        README_IMAGES.mkdir(parents=True, exist_ok=True)
        screenshot.replace(README_IMAGES / "comfyui_run.png")


def test_a_workflow_saved_with_the_former_generic_id_loads_and_runs_generic(page, comfy_server):
    workflow = tiny_wan_workflow(LEGACY_GENERIC, calibrate=False)
    log = run_on_the_page(page, comfy_server, workflow, "otcache_legacy_generic.json")
    last = log[log.rindex(REPORT):].splitlines()[0]
    assert f"computed 4/{STEPS} steps" in last and "schedule: generic" in last, last
    page.wait_for_node_image(node_id(workflow, "OTCache schedule preview"))
    shown = {n["id"]: n for n in page.nodes()}
    assert dict(shown[node_id(workflow, "OTCacheSchedule")]["widgets"])["preset"] == LEGACY_GENERIC
    summary = dict(shown[node_id(workflow, "OTCache schedule summary")]["widgets"])["preview"]
    assert summary.startswith("calibration 'generic'") and "computes 4" in summary


def tiny_wan_compare_workflow() -> dict:
    """The shipped compare workflow's graph on the tiny Wan: one KSampler through OTCache Apply, one on the
    model alone, both latents shown as images (test node, no VAE) and OTCache Compare between them."""
    b = load_builder()
    w = b.Workflow()
    unet = b.unet_loader(w, (0, 0), TINY_WAN)
    conds = [w.node("OTCacheTestConditioning", (0, 120 + 120 * k), (300, 82), [k + 1, "fixed"],
                    outputs=[("CONDITIONING", "CONDITIONING")], title=title)
             for k, title in enumerate(("Positive (test)", "Negative (test)"))]
    latent = w.node("EmptyHunyuanLatentVideo", (0, 370), (300, 130), [32, 32, 1, 1], outputs=[("LATENT", "LATENT")])
    schedule = b.otcache_schedule(w, (380, -60), "wan2.1-t2v-1.3b", STEPS, 4)
    apply_ = b.otcache_apply(w, (760, 0))
    samplers = [b.ksampler(w, (1100, 500 * k), 3, STEPS, 3.0, "euler", "simple") for k in range(2)]
    shown = [w.node("OTCacheTestLatentImage", (1460, 500 * k), (260, 46), [], inputs=[("samples", "LATENT")],
                    outputs=[("IMAGE", "IMAGE")]) for k in range(2)]
    compare = b.otcache_node(w, "OTCacheCompare", (1760, 200), 320)
    report = b.preview_text(w, (2120, 200), "OTCache Compare report")
    w.link(unet, 0, apply_, "model")
    w.link(schedule, 0, apply_, "schedule")
    for k, model in enumerate(((apply_, 0), (unet, 0))):
        w.link(*model, samplers[k], "model")
        w.link(conds[0], 0, samplers[k], "positive")
        w.link(conds[1], 0, samplers[k], "negative")
        w.link(latent, 0, samplers[k], "latent_image")
        w.link(samplers[k], 0, shown[k], "samples")
    w.link(shown[0], 0, compare, "image")
    w.link(shown[1], 0, compare, "reference")
    w.link(compare, 0, report, "source")
    return w.to_json()


def test_the_compare_graph_runs_on_the_page_and_shows_its_report_and_map(page, comfy_server):
    workflow = tiny_wan_compare_workflow()
    run_on_the_page(page, comfy_server, workflow, "otcache_tiny_compare.json")
    heat = page.wait_for_node_image(node_id(workflow, "OTCacheCompare"))
    assert heat["width"] == 4 and "type=temp" in heat["src"]  # the map of the 4 x 4 latent image
    shown = {n["id"]: n for n in page.nodes()}
    report = dict(shown[node_id(workflow, "OTCache Compare report")]["widgets"])["preview"]
    assert report.startswith("PSNR ") and "dB vs the reference" in report and "SSIM" in report
