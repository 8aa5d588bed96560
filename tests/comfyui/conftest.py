"""Test harness for the ComfyUI layer, run against a real ComfyUI checkout.

Point ``COMFYUI_PATH`` at a ComfyUI checkout (the folder holding ``comfy/`` and
``nodes.py``). Without it every test in this folder is skipped, with the reason
printed once in the summary; the rest of the suite is unaffected.

With it, this conftest, before any test module is imported:

* puts the checkout first on ``sys.path`` (ComfyUI is not an installable package);
* sets ``comfy.cli_args.args.cpu`` and ``force_fp32`` *before*
  ``comfy.model_management`` is imported, because that module picks the device
  and dtypes once, at import time;

and provides the ``otcache_pack`` fixture, which imports the repository root as
a package exactly the way ComfyUI imports a custom node folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator, Optional

import pytest
from pack_import import load_pack  # noqa: F401  (re-exported: tests and benchmarks import it from here)

#: This folder; only tests below it are skipped when ComfyUI is missing.
HERE = Path(__file__).resolve().parent
#: The repository root: the folder holding pyproject.toml, two levels up.
REPO_ROOT = HERE.parents[1]
#: Module name the pack is imported under (ComfyUI uses the folder path; any
#: name that is not a top-level module of ComfyUI works the same).
PACK_MODULE_NAME = "otcache_pack"


def _find_comfyui() -> tuple[Optional[Path], str]:
    """Return (checkout, "") or (None, why the ComfyUI tests are skipped)."""
    raw = os.environ.get("COMFYUI_PATH", "").strip()
    if not raw:
        return None, "COMFYUI_PATH is not set (point it at a ComfyUI checkout to run these tests)"
    root = Path(raw).expanduser().resolve()
    markers = [root / "comfy" / "model_patcher.py", root / "comfy" / "supported_models.py", root / "nodes.py"]
    missing = [str(m.relative_to(root)) for m in markers if not m.is_file()]
    if missing:
        return None, f"COMFYUI_PATH={raw} is not a ComfyUI checkout (missing {', '.join(missing)})"
    return root, ""


def _prepare_comfy(root: Path) -> None:
    """Make ``comfy`` importable and configured for CPU float32.

    Must run before anything imports ``comfy.model_management``: that import
    probes the device and reads these flags once.
    """
    if str(root) not in sys.path:
        # In front: ComfyUI's top-level ``nodes.py`` must win over the repo's ``nodes/``.
        sys.path.insert(0, str(root))
    already = "comfy.model_management" in sys.modules
    import comfy.options  # noqa: F401  (args parsing is off by default: pytest's argv is not parsed)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    comfy.cli_args.args.force_fp32 = True
    import comfy.model_management

    if already and comfy.model_management.cpu_state != comfy.model_management.CPUState.CPU:
        raise RuntimeError("comfy.model_management was imported (and chose a GPU) before the "
                           "ComfyUI test harness could select the CPU")


COMFYUI_ROOT, SKIP_REASON = _find_comfyui()
if COMFYUI_ROOT is not None:
    _prepare_comfy(COMFYUI_ROOT)


def _is_here(item: pytest.Item) -> bool:
    """Whether ``item`` is a test of this folder (the only ones we skip)."""
    try:
        item.path.resolve().relative_to(HERE)
        return True
    except ValueError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without ComfyUI, mark every test of this folder as skipped.

    A marker (rather than a skipping fixture) skips before any session
    fixture that would import ``comfy`` is set up.
    """
    if COMFYUI_ROOT is not None:
        return
    marker = pytest.mark.skip(reason=f"ComfyUI tests: {SKIP_REASON}")
    for item in items:
        if _is_here(item):
            item.add_marker(marker)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Report those skips at one location, so pytest folds them into one line.

    pytest files a marker skip under each test's own line; parametrized tests
    then give one summary line per test function, all with the same reason.
    """
    outcome = yield  # old-style wrapper: works on every pytest >= 7
    report = outcome.get_result()
    if (COMFYUI_ROOT is None and report.skipped and isinstance(report.longrepr, tuple)
            and _is_here(item)):
        report.longrepr = (str(Path(__file__)), None, report.longrepr[2])


def pytest_report_header(config: pytest.Config) -> str:
    if COMFYUI_ROOT is None:
        return f"comfyui: not available ({SKIP_REASON})"
    return f"comfyui: {COMFYUI_ROOT}"


# --------------------------------------------------------------------------
# Loading the pack as ComfyUI does
# --------------------------------------------------------------------------

def _import_comfyui_nodes() -> ModuleType:
    """Import ComfyUI's own top-level ``nodes`` first, as the server does."""
    import nodes

    if COMFYUI_ROOT is not None and Path(nodes.__file__).resolve() != COMFYUI_ROOT / "nodes.py":
        raise RuntimeError(f"top-level 'nodes' is {nodes.__file__}, not ComfyUI's nodes.py")
    return nodes


@pytest.fixture(scope="session")
def comfyui_root() -> Path:
    """The ComfyUI checkout under test."""
    assert COMFYUI_ROOT is not None  # tests are skipped otherwise
    return COMFYUI_ROOT


@pytest.fixture(scope="session")
def pack_loader() -> Callable[[Path, str], ModuleType]:
    """``load_pack(folder, module_name)``, for tests of the loading itself."""
    _import_comfyui_nodes()
    return load_pack


@pytest.fixture(scope="session")
def otcache_pack() -> ModuleType:
    """The repository root imported as a ComfyUI custom node package.

    Skips (does not fail) while the root has no ``__init__.py`` yet.
    """
    _import_comfyui_nodes()
    if not (REPO_ROOT / "__init__.py").is_file():
        pytest.skip(f"{REPO_ROOT} has no __init__.py yet: the pack cannot be loaded")
    if PACK_MODULE_NAME in sys.modules:
        return sys.modules[PACK_MODULE_NAME]
    return load_pack(REPO_ROOT, PACK_MODULE_NAME)


@pytest.fixture
def core(otcache_pack: ModuleType) -> ModuleType:
    """The pack's own copy of otcache_core (what the nodes use: its classes are the ones they check)."""
    return otcache_pack.otcache_core


@pytest.fixture
def reports(otcache_pack: ModuleType) -> Iterator[list]:
    """Every run report produced while the test runs."""
    got: list = []
    remove = otcache_pack.nodes.cache_hooks.add_report_listener(got.append)
    yield got
    remove()


@pytest.fixture(scope="session")
def tiny() -> Iterator[ModuleType]:
    """The ``tiny_models`` module, with ComfyUI's sampling stack warmed up.

    The warm-up (one 1-step sample) pays the one-off lazy imports here, in
    setup, instead of in whichever test happens to run first.
    """
    from . import tiny_models

    _warm_up(tiny_models)
    yield tiny_models
    _release_models()


@pytest.fixture(scope="session")
def tiny_model(tiny: ModuleType) -> Iterator[Callable[[str], object]]:
    """``tiny_model(family)``: one shared build per family for the session.

    Shared: clone ``.patcher`` before adding patches or wrappers.
    """
    cache: dict[str, object] = {}

    def get(family: str):
        if family not in cache:
            cache[family] = tiny.build(family)
        return cache[family]

    yield get
    cache.clear()


def _warm_up(tiny_models: ModuleType) -> None:
    import comfy.sample

    m = tiny_models.build("flux")
    latent = m.make_latent()
    comfy.sample.sample(m.patcher, m.noise(latent), 1, 1.0, "euler", "simple", m.positive(), m.negative(),
                        latent, seed=0, disable_pbar=True)


def _release_models() -> None:
    """Unload and collect patchers now: ``ModelPatcher.__del__`` running at
    interpreter exit (module globals already gone) prints tracebacks."""
    import gc

    import comfy.model_management

    comfy.model_management.unload_all_models()
    gc.collect()
    comfy.model_management.cleanup_models()
    gc.collect()


# --------------------------------------------------------------------------
# A running ComfyUI server (one per session: starting one takes 10-30 s)
# --------------------------------------------------------------------------

def _running_server(tmp_path_factory, comfyui_root: Path, name: str) -> Iterator[object]:
    from .comfy_server import running_server

    with running_server(tmp_path_factory.mktemp(name), comfyui_root) as server:
        yield server


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, comfyui_root, tiny):
    """A ComfyUI server process with this pack and the test-only nodes (see ``comfy_server.py``)."""
    yield from _running_server(tmp_path_factory, comfyui_root, "comfy_base")


@pytest.fixture(scope="module")
def fresh_comfy_server(tmp_path_factory, comfyui_root, tiny):
    """A ComfyUI server of its own for one test module, for tests that need one nothing else has used."""
    yield from _running_server(tmp_path_factory, comfyui_root, "comfy_fresh")


# --------------------------------------------------------------------------
# Other packs (fetched outside the repository, never committed)
# --------------------------------------------------------------------------

#: The folder of third-party packs: one sub-folder per pack, named ``owner+repo``.
PEER_PACKS_ENV = "OTCACHE_PEER_PACKS"


def peer_pack_folder(owner_repo: str) -> Path:
    """``$OTCACHE_PEER_PACKS/<owner+repo>``, or a skip that says what to fetch where."""
    raw = os.environ.get(PEER_PACKS_ENV, "").strip()
    if not raw:
        pytest.skip(f"{PEER_PACKS_ENV} is not set (a folder of third-party packs, one sub-folder per pack "
                    f"named owner+repo; this test needs {owner_repo})")
    folder = Path(raw).expanduser().resolve() / owner_repo
    if not (folder / "__init__.py").is_file():
        pytest.skip(f"{owner_repo} is not in {PEER_PACKS_ENV} ({folder} has no __init__.py): fetch "
                    f"github:{owner_repo.replace('+', '/')} there")
    return folder


@pytest.fixture(scope="session")
def peer_pack() -> Callable[[str], ModuleType]:
    """``peer_pack("owner+repo")``: that pack imported as ComfyUI imports a custom node (once per session);
    skips with the reason when it is not there or does not load on this ComfyUI."""
    _import_comfyui_nodes()
    loaded: dict[str, ModuleType] = {}

    def get(owner_repo: str) -> ModuleType:
        if owner_repo not in loaded:
            folder = peer_pack_folder(owner_repo)
            name = "peer_" + "".join(c if c.isalnum() else "_" for c in owner_repo)
            try:
                loaded[owner_repo] = sys.modules.get(name) or load_pack(folder, name)
            except Exception as exc:  # a pack that needs a newer ComfyUI or a missing dependency
                pytest.skip(f"{owner_repo} does not load on this ComfyUI: {type(exc).__name__}: {exc}")
        return loaded[owner_repo]

    return get
