"""The layers of docs/architecture.md, checked on the import graph (read with ``ast``, nothing imported).

* ``otcache_core`` never imports ComfyUI;
* its top level is the method: no top-level module imports the testbed, except the CLI's ``demo`` and
  ``bench`` verbs, and every top-level module serves something beyond the testbed (another top-level
  module, the ComfyUI nodes or the CLI);
* the testbed sits on the method and never imports the CLI or the ComfyUI layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "otcache_core"
TESTBED = CORE / "testbed"
#: Top-level modules allowed to reach into the testbed, and why: the CLI dispatches its demo and bench verbs.
TESTBED_ENTRY_POINTS = {"cli"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved), at any depth."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return found


def _top_level_modules() -> dict[str, Path]:
    return {p.stem: p for p in sorted(CORE.glob("*.py")) if p.stem not in ("__init__", "__main__")}


def test_the_core_never_imports_comfyui():
    offenders = {str(p.relative_to(REPO)): sorted(n for n in _imports(p) if n.split(".")[0] in ("comfy", "comfy_extras", "nodes"))
                 for p in CORE.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_top_level_core_module_imports_the_testbed():
    offenders = {name: sorted(n for n in _imports(path) if n.startswith("otcache_core.testbed"))
                 for name, path in _top_level_modules().items() if name not in TESTBED_ENTRY_POINTS}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_testbed_never_imports_the_cli_or_the_comfyui_layer():
    offenders = {str(p.relative_to(REPO)): sorted(n for n in _imports(p)
                                                   if n.startswith(("otcache_core.cli", "nodes")))
                 for p in TESTBED.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_every_top_level_core_module_serves_more_than_the_testbed():
    users: dict[str, set[str]] = {name: set() for name in _top_level_modules()}
    outside_testbed = [p for p in CORE.glob("*.py")] + list((REPO / "nodes").glob("*.py")) + [REPO / "__init__.py"]
    for path in outside_testbed:
        for imported in _imports(path):
            for name in users:
                if imported == f"otcache_core.{name}" or imported.startswith(f"otcache_core.{name}."):
                    if path.stem != name:
                        users[name].add(_module_name(path))
    # the nodes import the core as ``..otcache_core.x`` from ``nodes``: resolved above as ``otcache_core.x``
    assert sorted(name for name, found in users.items() if not found and name not in ("cli",)) == []


def test_every_file_docs_architecture_names_exists():
    import re

    page = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`([\w./-]+\.(?:py|md|json))`", page)) | set(re.findall(r"`([\w-]+/)`", page))
    assert len(named) > 30  # the page names the modules it describes
    assert sorted(n for n in named if not (REPO / n).exists()) == []


def test_the_readme_links_the_architecture_page():
    assert "(docs/architecture.md)" in (REPO / "README.md").read_text(encoding="utf-8")
