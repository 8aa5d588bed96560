"""Build the shipped presets in ``schedules/`` from the published step lists.

Usage (from the repository root)::

    python tools/build_presets.py /path/to/published_schedules.json schedules/

The input is the project's ``published_schedules.json``: every full-compute step list published by
the LeMiCa and MeanCache authors (Apache-2.0), with its source file, commit and line. Each preset is
an OTCache calibration record whose reference is the model's largest published budget and whose
anchor is its smallest, both with ``method = "published"``; every other published list for the model
is kept under ``source["published_lists"]``. Only step lists (facts) are taken from the data, never
code or prose. The output is deterministic: rebuilding from the same data gives identical files.

The ``generic`` preset is not built from the data: it is evenly spaced steps (:func:`generic_preset`).

The data file is not part of this repository; the presets do not refer to it. Each preset cites the
public repositories and commits its lists come from (``source["repositories"]``, from the data's
``sources``) and, per list, the file and line.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from otcache_core.calibration import Calibration, ScheduleRecord  # noqa: E402
from otcache_core.reuse import HORIZON2_RULE, ReuseRule, parse_rule  # noqa: E402
from otcache_core.schedule import Schedule  # noqa: E402
from otcache_core.warp import identity_warp, sample_warp  # noqa: E402

DATA_FORMAT = "published-schedules/1"
CREATED = "2026-11-27"
"""Fixed, so a rebuild is byte-identical (the date the data file was assembled)."""

AUTHORS = "LeMiCa / MeanCache authors (UnicomAI)"
COMFYUI_LEMICA = "ComfyUI-LeMiCa/"
"""ComfyUI-LeMiCa/nodes.py repeats lists of the standalone scripts: a duplicate, not a primary source."""

ANCHOR_NOTE = (
    "the anchor is a published graph schedule, not an Optuna-searched one; calibrate this model to replace it"
)
COMFY_T_NOTE = (
    "ComfyUI-LeMiCa indexes the same lists over sigma points (T = sampler steps + 1) and its example "
    "workflows run T-1 sampler steps, so the last listed step is never reached there; OTCache counts T as "
    "the sampler steps of the run, as the authors' standalone scripts do, so these lists are for {T} steps"
)
MEANCACHE_NOTE = (
    "MeanCache fills the skipped steps with an average-velocity (JVP-corrected) estimate, not a reused "
    "residual; these lists were chosen for that rule, and OTCache applies them with its own reuse"
)


@dataclass(frozen=True)
class PresetSpec:
    """One shipped preset: which published lists it is built from and the model it is for."""

    name: str
    data_model: str
    method: str
    family: str
    families: tuple[str, ...]
    human_name: str
    sampler: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    also_methods: tuple[str, ...] = ()
    """Other methods whose lists for the same model are kept under ``published_lists``."""
    identical_models: tuple[str, ...] = ()
    """Data models whose lists must equal this one's (checked, then named in ``source``)."""
    file_stem: str | None = None
    rule: ReuseRule | None = None
    """The reuse rule the preset runs with where it was measured to need another than :data:`PRESET_RULE`."""
    rule_source: str | None = None

    @property
    def filename(self) -> str:
        return f"{self.file_stem or self.name}.json"


WAN_T2V_RULE = parse_rule("horizon1")
WAN_T2V_RULE_SOURCE = (
    "measured on DigitWan (a trained ComfyUI Wan 2.1 T2V, shift 8, tests/comfyui/digit_wan.py) with both Wan 2.1 T2V "
    "presets: chosen on its development clips (1.5 to 5.1 dB above horizon2 at every budget 20..8 of 30), confirmed "
    "on its held-out clips (1.05 to 4.05 dB above) and on a second DigitWan trained from another seed (1.1 to 3.6 dB "
    "above on its held-out clips); against hold on held-out clips: 2.7 to 8.1 dB above at 20..12 of 30, and at 10 "
    "and 8 0.5 to 1.1 dB below (first DigitWan) or 1.0 to 2.0 dB above (second); benchmarks/RESULTS.md, video models"
)
"""The Wan 2.1 T2V presets' rule (their schedules leave long gaps late in a shift-8 run, where extrapolating
for two steps overshoots)."""

SPECS: tuple[PresetSpec, ...] = (
    PresetSpec(
        "flux.1-dev", "flux.1-dev", "LeMiCa", "flux", ("flux",), "FLUX.1-dev",
        sampler={"guidance": "guidance-distilled, no CFG branch: one transformer call per step"},
    ),
    PresetSpec(
        "flux.2-dev", "flux.2-dev", "LeMiCa", "flux2", ("flux2", "flux"), "FLUX.2-dev",
        sampler={"guidance": "guidance-distilled (embedded guidance): one transformer call per step",
                 "guidance_scale": 4.0},
        notes=("accepted on models detected as flux too: a ComfyUI may run FLUX.2 through its Flux model class",),
    ),
    PresetSpec(
        "qwen-image", "qwen-image", "LeMiCa", "qwen_image", ("qwen_image",), "Qwen-Image",
        sampler={"guidance": "true CFG: positive and negative prompts are separate transformer calls; "
                             "the list is per denoising step", "true_cfg_scale": 4.0},
        notes=("MeanCache also publishes lists for Qwen-Image (B = 25, 17, 10); they are kept under "
               "source.published_lists with method MeanCache, and this preset uses the LeMiCa lists",),
        also_methods=("MeanCache",),
    ),
    PresetSpec(
        "qwen-image-2512", "qwen-image-2512", "MeanCache", "qwen_image", ("qwen_image",), "Qwen-Image-2512",
    ),
    PresetSpec(
        "wan2.1-t2v-1.3b", "wan2.1-t2v-1.3b", "LeMiCa", "wan", ("wan",), "Wan2.1-T2V-1.3B",
        sampler={"guidance": "CFG with cond and uncond as separate forward calls; the list is per step and "
                             "applies to both"},
        rule=WAN_T2V_RULE, rule_source=WAN_T2V_RULE_SOURCE,
    ),
    PresetSpec(
        "wan2.1-t2v-14b", "wan2.1-t2v-14b", "LeMiCa", "wan", ("wan",), "Wan2.1-T2V-14B",
        sampler={"guidance": "CFG with cond and uncond as separate forward calls; the list is per step and "
                             "applies to both"},
        rule=WAN_T2V_RULE, rule_source=WAN_T2V_RULE_SOURCE,
    ),
    PresetSpec(
        "wan2.1-i2v-14b", "wan2.1-i2v-14b", "LeMiCa", "wan", ("wan",), "Wan2.1-I2V-14B (480P and 720P)",
        sampler={"guidance": "CFG with cond and uncond as separate forward calls; the list is per step and "
                             "applies to both"},
        notes=("one list set for Wan2.1-I2V-14B-480P and -720P: the source does not branch on the checkpoint",),
    ),
    PresetSpec(
        "hunyuanvideo-1.5", "hunyuanvideo-1.5-t2v", "LeMiCa", "hunyuan_video15", ("hunyuan_video15", "hunyuan_video"),
        "HunyuanVideo-1.5 (T2V and I2V)",
        notes=("built from the T2V lists; the published I2V lists are identical (one dict serves both tasks)",
               "accepted on models detected as hunyuan_video too: a ComfyUI may run 1.5 through its HunyuanVideo "
               "model class",
               "the source file of these lists carries a Tencent Hunyuan Community License header while the "
               "repository is Apache-2.0; only the step lists, which are facts, are reproduced here"),
        identical_models=("hunyuanvideo-1.5-i2v",),
    ),
    PresetSpec(
        "z-image", "z-image", "MeanCache", "z_image", ("z_image", "lumina2"), "Z-Image (base, not Turbo)",
        sampler={"guidance": "CFG batched into one transformer call per computed step", "guidance_scale": 4.0},
        notes=("for Z-Image base (50 steps); ComfyUI runs Z-Image through its Lumina2 NextDiT code, hence the "
               "lumina2 architecture id. The LeMiCa lists for Z-Image-Turbo are not shipped: as published for "
               "9 steps they end at index 9, out of range (the data lists them as anomalies)",),
    ),
)

PRESET_RULE = HORIZON2_RULE
"""The reuse rule every preset runs with (OTCache Apply's ``reuse`` = ``calibrated``)."""
PRESET_RULE_SOURCE = (
    "measured on the generic and flux.1-dev schedules of three testbeds (TinyDiT, DigitFlux and its "
    "guidance-distilled student): never below hold, mean or worst sample, at any budget, and 5 to 13 dB above "
    "it at 14, 12 and 10 of 30 steps (17, 13, 10 of 50); benchmarks/RESULTS.md, reuse rules of the presets"
)

GENERIC_STEPS, GENERIC_REFERENCE, GENERIC_ANCHOR = 41, 21, 9
"""The generic preset: evenly spaced computed steps with whole gaps (2 and 5 steps of 40), so both
warps lie exactly on the diagonal and every budget at every step count resolves to evenly spaced
steps (up to which way an exact half step rounds)."""
GENERIC_NOTES = (
    "evenly spaced computed steps at every budget and step count: a starting point for models without a "
    "calibration. Measured on both testbeds (TinyDiT and the trained ComfyUI Flux of tests/comfyui), no other "
    "shape was as safe: the former generic (the FLUX.1-dev published shape) lost 1 to 13 dB PSNR to even spacing "
    "at every budget, in both reuse modes and with every reuse rule (benchmarks/RESULTS.md)",
    "calibrate the model (OTCache Calibrate) for a schedule fitted to it",
)


def generic_preset() -> Calibration:
    """The ``generic`` preset: evenly spaced steps (needs no published data)."""
    def even(budget: int) -> ScheduleRecord:
        schedule = sample_warp(identity_warp(), GENERIC_STEPS, budget)
        return ScheduleRecord(schedule, "even", None, {"gap": (GENERIC_STEPS - 1) // (budget - 1)})

    return Calibration(
        name="generic",
        steps=GENERIC_STEPS,
        reference=even(GENERIC_REFERENCE),
        anchor=even(GENERIC_ANCHOR),
        model={"family": "any", "families": ["any"], "name": "any model"},
        sampler={},
        edge_errors=None,
        cost={},
        source={"kind": "rule", "method": "evenly spaced steps"},
        notes=list(GENERIC_NOTES),
        created=CREATED,
        rule=PRESET_RULE,
        rule_source=PRESET_RULE_SOURCE,
    )


class DataError(ValueError):
    """The data file does not hold what a preset needs."""


def _source_fields(source: dict[str, Any]) -> dict[str, Any]:
    return {key: source[key] for key in ("repo", "path", "commit", "line", "license")}


def _is_duplicate_source(entry: dict[str, Any]) -> bool:
    return entry["source"]["path"].startswith(COMFYUI_LEMICA)


def _usable(entries: list[dict[str, Any]], model: str, method: str) -> list[dict[str, Any]]:
    """Entries of one model and method whose checks pass, from the primary (non-duplicate) sources."""
    return [
        e for e in entries
        if e["model"] == model and e["method"] == method and e["checks"]["ok"] and not _is_duplicate_source(e)
    ]


def _duplicates(entries: list[dict[str, Any]], model: str, method: str,
                primary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sources that repeat the primary lists, each with the budgets it repeats (checked equal)."""
    lists = {(e["steps"], e["budget"]): e["compute_steps"] for e in primary}
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for e in entries:
        if e["model"] != model or e["method"] != method or not _is_duplicate_source(e):
            continue
        if lists.get((e["steps"], e["budget"])) != e["compute_steps"]:
            raise DataError(f"{model}: {e['source']['path']}:{e['source']['line']} B={e['budget']} differs from "
                            "the primary source; decide which one to ship")
        src = e["source"]
        key = (src["path"], src["line"])
        found.setdefault(key, {**_source_fields(src), "budgets": []})["budgets"].append(e["budget"])
    return [found[k] for k in sorted(found)]


def _shared_note(data: dict[str, Any], model: str, method: str, budget: int) -> str | None:
    tag = f"{method}:{model}:B{budget}"
    for shared in data.get("shared_lists", []):
        if tag in shared["used_by"]:
            others = [u for u in shared["used_by"] if u != tag]
            return f"the B={budget} list is identical to " + ", ".join(others)
    return None


def _repositories(data: dict[str, Any], cited: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The public repositories (name, commit, license) that the cited lists come from, in the data's order.

    A preset cites only public sources: the repository, the commit and (per list) the file and line.
    """
    used = {(s["repo"], s["commit"]) for s in cited}
    known = {(s["repo"], s["commit"]) for s in data["sources"]}
    if used - known:
        raise DataError(f"lists cite repositories missing from the data's 'sources': {sorted(used - known)}")
    return [{key: s[key] for key in ("repo", "commit", "license")} for s in data["sources"]
            if (s["repo"], s["commit"]) in used]


def _published(entry: dict[str, Any]) -> dict[str, Any]:
    out = {"budget": entry["budget"], "compute_steps": list(entry["compute_steps"]), "method": entry["method"]}
    if entry.get("mode"):
        out["mode"] = entry["mode"]
    out["source"] = _source_fields(entry["source"])
    return out


def _record(entry: dict[str, Any]) -> ScheduleRecord:
    schedule = Schedule.from_steps(entry["compute_steps"], entry["steps"])
    details: dict[str, Any] = {"source": _source_fields(entry["source"]), "published_budget": entry["budget"]}
    if entry.get("mode"):
        details["published_mode"] = entry["mode"]
    return ScheduleRecord(schedule, method="published", score=None, details=details)


def build_preset(data: dict[str, Any], spec: PresetSpec) -> Calibration:
    """The calibration record of one preset, checked against the data."""
    entries = data["entries"]
    primary = sorted(_usable(entries, spec.data_model, spec.method), key=lambda e: -e["budget"])
    if len(primary) < 2:
        raise DataError(f"{spec.data_model} ({spec.method}): needs at least two published lists, found {len(primary)}")
    steps = {e["steps"] for e in primary}
    if len(steps) != 1:
        raise DataError(f"{spec.data_model}: lists for different step counts {sorted(steps)}")
    T = steps.pop()
    budgets = [e["budget"] for e in primary]
    if len(set(budgets)) != len(budgets):
        raise DataError(f"{spec.data_model}: two different primary lists at one budget {budgets}")
    for e in primary:
        if len(e["compute_steps"]) != e["budget"] or e["compute_steps"][-1] != T - 1:
            raise DataError(f"{spec.data_model} B={e['budget']}: list length or last step does not match")
    for other in spec.identical_models:
        twins = {e["budget"]: e["compute_steps"] for e in _usable(entries, other, spec.method)}
        mine = {e["budget"]: e["compute_steps"] for e in primary}
        if twins != mine:
            raise DataError(f"{other}: lists differ from {spec.data_model}; ship them as a separate preset")

    ref_entry, anchor_entry = primary[0], primary[-1]

    published = [_published(e) for e in primary[1:-1]]
    for method in spec.also_methods:
        others = sorted(_usable(entries, spec.data_model, method), key=lambda e: -e["budget"])
        published.extend(_published(e) for e in others)
    duplicates = _duplicates(entries, spec.data_model, spec.method, primary)
    cited = [ref_entry["source"], anchor_entry["source"], *(p["source"] for p in published), *duplicates]

    source: dict[str, Any] = {
        "kind": "published",
        "authors": AUTHORS,
        "license": "Apache-2.0",
        "repositories": _repositories(data, cited),
        "method": spec.method,
        "model_in_data": spec.data_model,
    }
    if duplicates:
        source["duplicate_sources"] = duplicates
    if spec.identical_models:
        source["identical_lists_in_data"] = list(spec.identical_models)
    headers = sorted({e["source"]["file_header"] for e in primary if "file_header" in e["source"]})
    if headers:
        source["source_file_headers"] = headers
    source["published_lists"] = published

    model: dict[str, Any] = {"family": spec.family, "families": list(spec.families), "name": spec.human_name}
    named = primary + [e for method in spec.also_methods for e in _usable(entries, spec.data_model, method)]
    hub_ids = sorted({e["model_ref_in_code"] for e in named
                      if e.get("model_ref_in_code") and not e["model_ref_in_code"].startswith("/")})
    if len(hub_ids) == 1 and spec.family != "any":
        model["hub_id"] = hub_ids[0]

    notes = [ANCHOR_NOTE, *spec.notes]
    if spec.method == "MeanCache":
        notes.append(MEANCACHE_NOTE)
    if duplicates:
        notes.append(COMFY_T_NOTE.format(T=T))
    for entry in (ref_entry, anchor_entry):
        shared = _shared_note(data, spec.data_model, spec.method, entry["budget"])
        if shared and spec.family != "any":
            notes.append(shared)

    return Calibration(
        name=spec.name,
        steps=T,
        reference=_record(ref_entry),
        anchor=_record(anchor_entry),
        model=model,
        sampler=dict(spec.sampler),
        edge_errors=None,
        cost={},
        source=source,
        notes=notes,
        created=CREATED,
        rule=spec.rule or PRESET_RULE,
        rule_source=spec.rule_source or PRESET_RULE_SOURCE,
    )


def load_data(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict) or data.get("format") != DATA_FORMAT or not isinstance(data.get("entries"), list):
        raise DataError(f"{path}: expected a {DATA_FORMAT!r} document with an 'entries' list")
    return data


def build_all(data: dict[str, Any]) -> dict[str, Calibration]:
    """File name -> calibration, for every shipped preset (all built before anything is written)."""
    return {**{spec.filename: build_preset(data, spec) for spec in SPECS}, "generic.json": generic_preset()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="published_schedules.json")
    parser.add_argument("out", type=Path, help="output folder (the repository's schedules/)")
    args = parser.parse_args(argv)
    try:
        presets = build_all(load_data(args.data))
    except (OSError, json.JSONDecodeError, DataError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for filename, calibration in presets.items():
        calibration.save(args.out / filename, overwrite=True)
        ref, anc = calibration.reference.schedule, calibration.anchor.schedule
        extra = len(calibration.source.get("published_lists", []))
        print(f"{filename}: T={calibration.steps} reference B={ref.budget} anchor B={anc.budget} "
              f"(+{extra} other published lists)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
