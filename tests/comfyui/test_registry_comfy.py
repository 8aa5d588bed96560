"""``pyproject.toml`` through ComfyUI's own parser of custom-node metadata (``comfy_config``)."""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[2]


def test_comfyui_reads_the_registry_metadata(comfyui_root):
    from comfy_config import config_parser

    raw = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    config = config_parser.extract_node_configuration(str(REPO))
    project, comfy = config.project, config.tool_comfy
    assert project.name == raw["project"]["name"] and project.version == raw["project"]["version"]
    assert project.license.text == "Apache-2.0"
    assert project.urls.repository == raw["project"]["urls"]["Repository"]
    assert project.urls.documentation and project.urls.issues
    assert project.supported_os == ["OS Independent"]
    assert comfy.publisher_id == "otcache" and comfy.display_name == "OTCache"
    assert comfy.icon == raw["tool"]["comfy"]["Icon"]
