"""ComfyUI's web page in a real, headless Chromium, driven by Playwright: what the browser tests can do.

No browser is downloaded: Debian's ``chromium`` (found on the ``PATH``) is launched with a fresh user
data directory and flags that keep it off the network. The page is the front end served by the test
server (``comfy_server.py``); everything is read from the live page (``window.app``, the DOM).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

CHROMIUM_NAMES = ("chromium", "chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1600, "height": 1000}
CANVAS_CLIP = {"x": 66, "y": 82, "width": 1534, "height": 918}
"""The canvas without the side bar, the tabs and the action bar (for screenshots of a graph)."""

INSTALL_HINT = "Debian: apt-get install chromium; then pip install playwright (no browser download needed)"


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def browser_missing() -> str:
    """Why the browser tests cannot run here, or ``""``."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"Playwright is not installed ({INSTALL_HINT})"
    if find_chromium() is None:
        return f"no {' or '.join(CHROMIUM_NAMES)} on the PATH ({INSTALL_HINT})"
    return ""


def launch() -> Iterator[Any]:
    """A headless Chromium context with a fresh profile; closed (and the profile removed) on exit."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="otcache-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=find_chromium(), headless=True, args=CHROMIUM_ARGS, viewport=VIEWPORT)
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


# Visible dialogs (PrimeVue) and error toasts: the missing-node warning, execution errors, ...
VISIBLE_PROBLEMS_JS = """() => {
    const shown = el => el.offsetParent !== null || el.getClientRects().length > 0;
    const text = sel => [...document.querySelectorAll(sel)].filter(shown).map(el => el.innerText.trim());
    return {dialogs: text('.p-dialog'), toasts: text('.p-toast-message-error')};
}"""

NODES_JS = """() => window.app.graph._nodes.map(n => ({
    id: n.id, type: n.type, title: n.title,
    widgets: (n.widgets || []).map(w => [w.name, w.value]),
    images: (n.imgs || []).map(img => ({src: img.src, complete: img.complete, width: img.naturalWidth})),
}))"""

DROP_JS = """([text, name]) => {
    const data = new DataTransfer();
    data.items.add(new File([text], name, {type: 'application/json'}));
    const target = document.querySelector('#graph-canvas') || document;
    target.dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
}"""

FIT_VIEW_JS = """(zoom) => {
    const items = [...window.app.graph._nodes.map(n => [n.pos[0], n.pos[1] - 30, n.size[0], n.size[1] + 30]),
                   ...(window.app.graph._groups || []).map(g => g._bounding || g.bounding)];
    const x0 = Math.min(...items.map(b => b[0])), y0 = Math.min(...items.map(b => b[1]));
    const x1 = Math.max(...items.map(b => b[0] + b[2])), y1 = Math.max(...items.map(b => b[1] + b[3]));
    window.app.canvas.ds.fitToBounds([x0, y0, x1 - x0, y1 - y0], {zoom});
    window.app.canvas.setDirty(true, true);
}"""


@dataclass
class ComfyPage:
    """One tab of ComfyUI's page, with the page errors it raised."""

    page: Any
    url: str
    errors: list[str] = field(default_factory=list)
    responses: list[tuple[str, int]] = field(default_factory=list)
    """``(url, status)`` of every response the page received."""

    def open(self, timeout_ms: int = 120_000) -> None:
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("response", lambda response: self.responses.append((response.url, response.status)))
        self.page.goto(self.url, wait_until="load", timeout=timeout_ms)
        # the node definitions (this pack's included) are registered once the app has loaded them
        self.page.wait_for_function("() => window.app?.graph && window.LiteGraph?.registered_node_types?.OTCacheApply",
                                    timeout=timeout_ms)
        self.page.wait_for_timeout(500)

    def drop_workflow(self, workflow: dict, name: str, timeout_ms: int = 30_000) -> None:
        """Drop a workflow file on the canvas, as a user dragging it from the file manager does."""
        self.page.evaluate(DROP_JS, [json.dumps(workflow), name])
        ids = sorted(n["id"] for n in workflow["nodes"])
        self.page.wait_for_function("(ids) => JSON.stringify(window.app.graph._nodes.map(n => n.id).sort((a, b) => a - b))"
                                    " === JSON.stringify(ids)", arg=ids, timeout=timeout_ms)
        self.page.wait_for_timeout(700)  # dialogs and widgets settle after the graph is configured

    def nodes(self) -> list[dict]:
        return self.page.evaluate(NODES_JS)

    def problems(self) -> dict[str, list[str]]:
        return self.page.evaluate(VISIBLE_PROBLEMS_JS)

    def dismiss_dialogs(self) -> None:
        for _ in range(3):
            if not self.problems()["dialogs"]:
                return
            self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(300)

    def fit_view(self, zoom: float = 0.9) -> None:
        self.page.evaluate(FIT_VIEW_JS, zoom)
        self.page.wait_for_timeout(300)

    def click_run(self) -> None:
        """The Run button of the page's action bar (what queues the workflow)."""
        self.page.get_by_role("button", name="Run", exact=True).first.click()

    def wait_for_node_image(self, node_id: int, timeout_ms: int = 120_000) -> dict:
        """The first image shown on a node, once loaded."""
        self.page.wait_for_function(
            "(id) => { const n = window.app.graph.getNodeById(id);"
            " return n && n.imgs && n.imgs.length && n.imgs[0].complete && n.imgs[0].naturalWidth > 0; }",
            arg=node_id, timeout=timeout_ms)
        return next(n for n in self.nodes() if n["id"] == node_id)["images"][0]

    def screenshot(self, path: Path, clip: dict | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path), clip=clip)
        return path


def poll(read, done, timeout: float, interval: float = 0.5):
    """``read()`` until ``done(value)`` or ``timeout`` seconds passed; returns the last value read."""
    deadline = time.time() + timeout
    while True:
        value = read()
        if done(value) or time.time() > deadline:
            return value
        time.sleep(interval)
