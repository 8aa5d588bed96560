"""The README is a front page and the pages behind it hold together.

* The README is under 250 lines, its first 60 lines link the example workflows (every file of
  ``workflows/``), and it links every page of ``docs/``.
* The node reference (``docs/nodes.md``) names every input of OTCache Schedule, Apply and Compare, with
  its default (OTCache Calibrate needs ComfyUI: ``tests/comfyui/test_node_reference.py``).
* Every relative link in ``README.md`` and ``docs/*.md`` resolves to a file of the repository (and a
  ``#fragment`` to a heading of the page it names); every picture they show exists and is small.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from pack_import import load_pack
from readme_rules import README, reference_problems, reference_table

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "otcache_pack_readme"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MAX_README_LINES = 250
FIRST_SCREEN = 60
PICTURE = re.compile(r"\.(png|jpe?g|gif|webp|svg)$", re.I)


@pytest.fixture(scope="module")
def pack():
    return sys.modules.get(PACK_NAME) or load_pack(REPO, PACK_NAME)


def _prose(text: str) -> str:
    """The page without fenced code blocks and inline code spans (a link's target is never in code)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _links(page: Path) -> list[tuple[bool, str]]:
    """``(is a picture, target)`` of every Markdown link and image of a page."""
    found = re.findall(r"(!?)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", _prose(page.read_text(encoding="utf-8")))
    return [(bang == "!", target) for bang, target in found]


def _relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I)


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings (``## Why `auto` = model`` -> ``why-auto--model``)."""
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _relative_links() -> list[tuple[str, str]]:
    return [(str(page.relative_to(REPO)), target) for page in PAGES for _, target in _links(page) if _relative(target)]


def _pictures() -> list[tuple[str, str]]:
    return [(str(page.relative_to(REPO)), target) for page in PAGES for picture, target in _links(page)
            if picture or PICTURE.search(target.split("#")[0])]


def test_the_readme_is_a_front_page_under_250_lines():
    assert len(README.splitlines()) < MAX_README_LINES


def test_the_first_screen_links_every_example_workflow():
    first = "\n".join(README.splitlines()[:FIRST_SCREEN])
    assert "(workflows/README.md)" in first
    workflows = sorted(p.name for p in (REPO / "workflows").glob("*.json"))
    assert workflows, "no example workflows found"
    assert [name for name in workflows if f"(workflows/{name})" not in first] == []


def test_the_readme_links_every_docs_page():
    pages = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert [name for name in pages if f"(docs/{name})" not in README] == []


@pytest.mark.parametrize("node_id", ["OTCacheSchedule", "OTCacheApply", "OTCacheCompare"])
def test_the_node_reference_lists_every_input_with_its_default(pack, node_id):
    """Without ComfyUI; OTCache Calibrate's inputs need it (``tests/comfyui/test_node_reference.py``)."""
    spec = pack.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()
    problems = reference_problems(spec, pack.NODE_DISPLAY_NAME_MAPPINGS[node_id])
    assert not problems, "\n".join(problems) + "\n(update the node reference in docs/nodes.md)"


def test_every_node_has_a_reference_table(pack):
    assert [name for name in pack.NODE_DISPLAY_NAME_MAPPINGS.values() if not reference_table(name)] == []


@pytest.mark.parametrize(("page", "target"), _relative_links())
def test_every_relative_link_resolves_to_a_file_in_the_repository(page, target):
    path, _, fragment = target.partition("#")
    source = REPO / page
    linked = (source.parent / path).resolve() if path else source
    assert linked.is_relative_to(REPO.resolve()), f"{page}: {target} points outside the repository"
    assert linked.is_file(), f"{page}: {target} is not a file of the repository"
    if fragment and linked.suffix == ".md":
        assert fragment in _anchors(linked), f"{page}: {target}: no such heading in {linked.relative_to(REPO)}"


@pytest.mark.parametrize(("page", "image"), _pictures())
def test_every_picture_is_in_the_repository_and_small(page, image):
    assert _relative(image), f"{page}: {image}: pictures are shipped in the repository, not fetched"
    path = ((REPO / page).parent / image).resolve()
    assert path.is_file(), f"{page}: {image} is missing: python tools/make_images.py"
    assert path.stat().st_size < 150_000
