"""``pyproject.toml`` as the Comfy registry (which ComfyUI-Manager installs from) reads it.

The rules are the registry's published specification (docs.comfy.org, "pyproject.toml
specifications"): ``[project]`` name (under 100 characters; letters, digits, ``-``, ``_``, ``.``; no
two special characters in a row; starts with a letter; "ComfyUI" is best left out), a semantic
``X.Y.Z`` version, a description, a license, ``[project.urls]`` Repository (required), Documentation
and Issues; ``[tool.comfy]`` PublisherId (required), DisplayName and Icon (the URL of an SVG, PNG, JPG
or GIF of at most 800 x 400 pixels). ``tests/comfyui/test_registry_comfy.py`` parses the file with
ComfyUI's own parser.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
NAME = re.compile(r"[A-Za-z](?:[A-Za-z0-9]|[-_.](?=[A-Za-z0-9]))*")
SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")
RAW = "https://raw.githubusercontent.com/"


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_name_follows_the_registry_rules(pyproject):
    name = pyproject["project"]["name"]
    assert len(name) < 100 and NAME.fullmatch(name), name
    assert "comfyui" not in name.lower()


@pytest.mark.parametrize("name, ok", [("otcache", True), ("image-processor", True), ("a.b_c", True),
                                      ("123-tool", False), ("-x", False), ("a--b", False), ("a_.b", False),
                                      ("x-", False), ("a b", False)])
def test_the_name_rule_itself(name, ok):
    assert bool(NAME.fullmatch(name)) is ok


def test_version_is_semantic_and_the_package_version(pyproject):
    from otcache_core import __version__

    version = pyproject["project"]["version"]
    assert SEMVER.fullmatch(version), version
    assert version == __version__


def test_description_and_license(pyproject):
    project = pyproject["project"]
    assert 20 <= len(project["description"]) <= 300
    assert project["license"] == "Apache-2.0"  # an SPDX id (PEP 639); ComfyUI's parser reads it as the text
    assert all((REPO / f).is_file() for f in project["license-files"])


def test_urls_name_the_repository_documentation_and_issues(pyproject):
    urls = pyproject["project"]["urls"]
    repository = urls["Repository"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repository), repository
    assert urls["Documentation"].startswith(repository) and urls["Issues"] == f"{repository}/issues"


def test_tool_comfy_has_publisher_display_name_and_an_icon_in_this_repository(pyproject):
    from PIL import Image

    comfy = pyproject["tool"]["comfy"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", comfy["PublisherId"])
    assert comfy["DisplayName"].strip()
    owner_repo = pyproject["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    prefix = f"{RAW}{owner_repo}/main/"
    assert comfy["Icon"].startswith(prefix), f"Icon should be a raw URL of a file in {owner_repo}"
    icon = REPO / comfy["Icon"].removeprefix(prefix)
    assert icon.is_file(), f"{icon.relative_to(REPO)} is missing (python tools/make_images.py --no-browser)"
    with Image.open(icon) as image:
        assert image.format in ("PNG", "JPEG", "GIF") and image.width <= 800 and image.height <= 400
    assert icon.stat().st_size < 50_000


def test_requirements_txt_installs_what_the_nodes_import(pyproject):
    """ComfyUI-Manager installs ``requirements.txt``: every line must be a declared dependency or extra."""
    declared = {re.split(r"[<>=!~\[ ]", d)[0].lower() for d in pyproject["project"]["dependencies"]}
    for extra in pyproject["project"]["optional-dependencies"].values():
        declared |= {re.split(r"[<>=!~\[ ]", d)[0].lower() for d in extra}
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    required = {re.split(r"[<>=!~\[ ]", line)[0].lower() for line in lines if line}
    assert required and required <= declared, required - declared
