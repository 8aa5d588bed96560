"""The pack as the Comfy registry and its tools see it: ComfyUI's own parser of the metadata, and comfy-cli
(PyPI) validating, packing and installing the pack into a fresh ComfyUI.

comfy-cli runs offline for all of this except what talks to the registry service: ``comfy node
publish`` (uploads the zip with a token) and ``comfy node install <registry id>`` (downloads it) need
the network and are not run. What runs:

* ``comfy node validate``: the registry metadata of ``pyproject.toml`` and the security rules (ruff)
  it applies to the whole tree;
* ``comfy node pack``: the zip the registry receives (git-tracked files, ``.comfyignore``), unpacked
  and imported the way ComfyUI imports a custom node;
* ``comfy --workspace <fresh ComfyUI> node install <git URL>``: ComfyUI-Manager's installer (comfy-cli
  calls its ``cm_cli``) clones the pack from a git server on 127.0.0.1 into ``custom_nodes`` of a fresh
  copy of ComfyUI; that ComfyUI then starts and registers the nodes. ``--no-deps``: a test never
  installs packages (the pip step reads ``requirements.txt``, checked by ``tests/test_registry.py``).

Each works on a snapshot of this checkout (tracked and untracked, not ignored, files committed to a
temporary git repository), so uncommitted changes are what is checked. Skipped with the reason when
comfy-cli (or, for the install, ComfyUI-Manager) is not installed, or the repository is not a git
checkout.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from .comfy_server import ServerError, start_server

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "otcache"
NODE_NAMES = {"OTCacheSchedule": "OTCache Schedule (budget)", "OTCacheApply": "OTCache Apply",
              "OTCacheCalibrate": "OTCache Calibrate"}


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


# --------------------------------------------------------------------------------------------------
# comfy-cli
# --------------------------------------------------------------------------------------------------

def comfy_cli() -> Path:
    """The ``comfy`` command of this Python's environment, or a skip."""
    found = Path(sys.executable).parent / "comfy"
    if not found.is_file():
        which = shutil.which("comfy")
        if which is None:
            pytest.skip("comfy-cli is not installed (pip install comfy-cli)")
        found = Path(which)
    return found


def comfy(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``comfy --skip-prompt <args>`` (never asks, no tracking prompt); fails the test on a non-zero exit."""
    done = subprocess.run([str(comfy_cli()), "--skip-prompt", "--no-json", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, f"comfy {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.name=OTCache tests", "-c", "user.email=tests@otcache.invalid",
                           "-c", "init.defaultBranch=main", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    """This checkout's files (tracked and untracked, not ignored) committed to a fresh git repository."""
    comfy_cli()
    if not (REPO / ".git").exists():
        pytest.skip(f"{REPO} is not a git checkout: comfy node pack reads the git-tracked files")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                            capture_output=True).stdout.decode().split("\0")
    folder = tmp_path_factory.mktemp("snapshot") / PACK_NAME
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the work tree is not part of the snapshot
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)
    git("init", "-q", cwd=folder)
    git("add", "-A", cwd=folder)
    git("commit", "-q", "-m", "snapshot of the work tree", cwd=folder)
    return folder


def test_comfy_cli_registry_validator_accepts_the_pack(snapshot):
    done = comfy("node", "validate", cwd=snapshot)
    assert "All validation checks passed" in done.stdout, done.stdout
    assert "Security warnings" not in done.stdout + done.stderr


@pytest.fixture(scope="module")
def registry_zip(snapshot) -> Path:
    comfy("node", "pack", cwd=snapshot)
    return snapshot / "node.zip"


def test_comfy_cli_registry_zip_holds_the_pack_without_its_git_folder(registry_zip, snapshot):
    with zipfile.ZipFile(registry_zip) as archive:
        names = set(archive.namelist())
    tracked = set(filter(None, git("ls-files", cwd=snapshot).split("\n")))
    assert {"__init__.py", "nodes/__init__.py", "otcache_core/__init__.py", "pyproject.toml", "requirements.txt",
            "LICENSE"} <= names
    assert {n for n in tracked if n.startswith(("nodes/", "otcache_core/", "schedules/", "workflows/"))} <= names
    assert not any(n.startswith(".git/") for n in names)
    # .comfyignore: what only develops or measures the pack stays out (the test weights are most of it)
    assert not any(n.startswith(("tests/", "benchmarks/", "tools/", ".ci/")) for n in names)


def test_comfy_cli_registry_zip_unpacked_into_custom_nodes_registers_the_nodes(registry_zip, pack_loader, tmp_path):
    folder = tmp_path / "custom_nodes" / PACK_NAME
    with zipfile.ZipFile(registry_zip) as archive:
        archive.extractall(folder)
    module = pack_loader(folder, "otcache_registry_zip")
    assert module.NODE_DISPLAY_NAME_MAPPINGS == NODE_NAMES
    assert Path(module.__file__).resolve() == (folder / "__init__.py").resolve()


# --------------------------------------------------------------------------------------------------
# comfy node install into a fresh ComfyUI
# --------------------------------------------------------------------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no request lines in the test output
        pass


@pytest.fixture(scope="module")
def git_url(snapshot, tmp_path_factory):
    """The snapshot as a git repository served over HTTP on 127.0.0.1 (git's "dumb" protocol: static files)."""
    served = tmp_path_factory.mktemp("served")
    git("clone", "-q", "--bare", str(snapshot), str(served / f"{PACK_NAME}.git"), cwd=served)
    git("update-server-info", cwd=served / f"{PACK_NAME}.git")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{PACK_NAME}.git"
    finally:
        server.shutdown()
        server.server_close()


def fresh_comfyui(comfyui_root: Path, target: Path) -> Path:
    """A copy of the ComfyUI checkout's files as a user unpacks a release: no git folder, no user data, the
    stock ``custom_nodes`` folder."""
    skip = {".git", "user", "output", "temp", "custom_nodes"}
    target.mkdir(parents=True)
    for entry in comfyui_root.iterdir():
        if entry.name in skip:
            continue
        if entry.is_dir():
            shutil.copytree(entry, target / entry.name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(entry, target / entry.name)
    (target / "custom_nodes").mkdir()
    for stock in (comfyui_root / "custom_nodes").iterdir():
        if stock.is_file():  # the checkout's example files; any installed pack stays out
            shutil.copy2(stock, target / "custom_nodes" / stock.name)
    return target


def test_comfy_cli_node_install_puts_the_pack_into_a_fresh_comfyui_that_loads_it(comfyui_root, snapshot, git_url,
                                                                                tmp_path):
    import importlib.util

    if importlib.util.find_spec("cm_cli") is None:
        pytest.skip("comfy node install runs ComfyUI-Manager's cm_cli: pip install comfyui-manager")
    workspace = fresh_comfyui(comfyui_root, tmp_path / "ComfyUI")
    done = comfy("--workspace", str(workspace), "node", "install", "--no-deps", git_url, cwd=tmp_path)
    installed = workspace / "custom_nodes" / PACK_NAME
    assert (installed / "__init__.py").is_file(), done.stdout + done.stderr
    assert git("rev-parse", "HEAD", cwd=installed) == git("rev-parse", "HEAD", cwd=snapshot)
    server = start_server(workspace, workspace)  # the fresh ComfyUI itself is the base directory
    try:
        info = server.get("/object_info")
        assert {node: info[node]["display_name"] for node in NODE_NAMES} == NODE_NAMES
        assert info["OTCacheApply"]["python_module"] == f"custom_nodes.{PACK_NAME}"
    except (ServerError, KeyError) as exc:
        raise AssertionError(f"{exc}\n{server.log()[-3000:]}") from exc
    finally:
        server.stop()
