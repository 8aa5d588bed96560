"""Build the example workflows in ``workflows/`` (ComfyUI front-end format, ``version`` 0.4).

Usage (from the repository root)::

    COMFYUI_PATH=../ComfyUI python tools/build_workflows.py            # rewrite workflows/*.json
    COMFYUI_PATH=../ComfyUI python tools/build_workflows.py --check    # exit 1 if a file is out of date

The OTCache nodes are built from their own definitions: sockets, widget order and every value not
given here (its default) come from the node's ``INPUT_TYPES``, outputs from ``RETURN_TYPES``, so a new
input appears in every workflow on the next build. OTCache Calibrate's inputs list ComfyUI's samplers,
hence ``COMFYUI_PATH`` (a ComfyUI checkout); workflows without Calibrate build without it. ComfyUI's
own nodes are written out by hand (widget values in ``INPUT_TYPES`` order, as of ComfyUI 0.3.64);
``tests/test_workflows.py`` and ``tests/comfyui/test_workflows_comfy.py`` check every node against the
real definitions. Rebuild after changing any OTCache node's inputs.

Every workflow is one ``WorkflowSpec`` value (its note, model file and shift node, text encoders, latent,
VAE, OTCache Schedule, sampler settings, output, and optional stages: ControlNet, Calibrate, or a second
model taking over part of the steps), and ``build`` turns any of them into the front-end JSON, laying the
nodes out by ``Layout`` (defaults for the common row; a spec overrides what it moves).

To add a workflow: write its ``WorkflowSpec`` under "The workflows" (``dataclasses.replace`` of a close
one where it is a variant), add its file name to ``WORKFLOWS``, run this tool, and list the file in
``workflows/README.md`` and in ``EXPECTED`` of ``tests/test_workflows.py``. A part no spec field covers
yet is a new optional field and one step in ``build``: keep the node creation order of the existing
workflows (node ids and link ids follow it), and check with ``--check`` that the others stay unchanged.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

REPO = Path(__file__).resolve().parent.parent
HERE = REPO / "workflows"
sys.path.insert(0, str(REPO / "tests"))  # the widget rules the workflow tests check with, and the pack loader
from pack_import import load_pack  # noqa: E402
from workflow_rules import socket_inputs, widget_inputs  # noqa: E402

#: Module name of the pack imported by this tool (not a name the tests or ComfyUI use).
PACK_NAME = "otcache_pack_build"

#: Front-end-only node types (no Python class in ComfyUI).
NOTE = "Note"

OTCACHE_COLOR, OTCACHE_BGCOLOR = "#232", "#353"
NOTE_COLOR, NOTE_BGCOLOR = "#432", "#653"


class Workflow:
    """A small builder: nodes with their sockets and widget values, links by input name."""

    def __init__(self) -> None:
        self.nodes: list[dict] = []
        self.links: list[list] = []
        self.groups: list[dict] = []

    def node(self, type_: str, pos: tuple[float, float], size: tuple[float, float], widgets: list,
             inputs: list[tuple[str, str]] = (), outputs: list[tuple[str, str]] = (), title: str | None = None,
             color: tuple[str, str] | None = None) -> int:
        node_id = len(self.nodes) + 1
        node = {
            "id": node_id,
            "type": type_,
            "pos": list(pos),
            "size": list(size),
            "flags": {},
            "order": 0,
            "mode": 0,
            "inputs": [{"name": name, "type": typ, "link": None} for name, typ in inputs],
            "outputs": [{"name": name, "type": typ, "links": [], "slot_index": i} for i, (name, typ) in enumerate(outputs)],
            "properties": {} if type_ == NOTE else {"Node name for S&R": type_},
            "widgets_values": list(widgets),
        }
        if title:
            node["title"] = title
        if color:
            node["color"], node["bgcolor"] = color
        self.nodes.append(node)
        return node_id

    def note(self, pos: tuple[float, float], size: tuple[float, float], text: str, title: str) -> int:
        return self.node(NOTE, pos, size, [text], title=title, color=(NOTE_COLOR, NOTE_BGCOLOR))

    def link(self, src: int, out_slot: int, dst: int, input_name: str) -> None:
        link_id = len(self.links) + 1
        source, target = self.nodes[src - 1], self.nodes[dst - 1]
        output = source["outputs"][out_slot]
        slot = [i["name"] for i in target["inputs"]].index(input_name)
        target_input = target["inputs"][slot]
        if target_input["link"] is not None:
            raise ValueError(f"input {input_name} of node {dst} is already connected")
        if target_input["type"] not in (output["type"], "*"):
            raise ValueError(f"{output['type']} cannot feed {target_input['type']} ({input_name} of node {dst})")
        target_input["link"] = link_id
        output["links"].append(link_id)
        self.links.append([link_id, src, out_slot, dst, slot, output["type"]])

    def group(self, title: str, ids: list[int], color: str = "#3f789e", pad: float = 20.0) -> None:
        boxes = [(n["pos"][0], n["pos"][1], n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
                 for n in self.nodes if n["id"] in ids]
        x0, y0 = min(b[0] for b in boxes) - pad, min(b[1] for b in boxes) - pad - 40
        x1, y1 = max(b[2] for b in boxes) + pad, max(b[3] for b in boxes) + pad
        self.groups.append({"id": len(self.groups) + 1, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0],
                            "color": color, "font_size": 24, "flags": {}})

    def _set_order(self) -> None:
        """``order``: a topological order of the nodes (sources first, ties by id), as the front end saves it."""
        preds = {n["id"]: {link[1] for link in self.links if link[3] == n["id"]} for n in self.nodes}
        done: list[int] = []
        while len(done) < len(self.nodes):
            ready = sorted(i for i, p in preds.items() if i not in done and p <= set(done))
            if not ready:
                raise ValueError("the workflow has a cycle")
            done.append(ready[0])
        for position, node_id in enumerate(done):
            self.nodes[node_id - 1]["order"] = position

    def to_json(self) -> dict:
        self._set_order()
        return {
            "last_node_id": len(self.nodes),
            "last_link_id": len(self.links),
            "nodes": self.nodes,
            "links": self.links,
            "groups": self.groups,
            "config": {},
            "extra": {"ds": {"scale": 0.75, "offset": [40, 80]}},
            "version": 0.4,
        }


# --------------------------------------------------------------------------------------------------
# OTCache nodes, from their definitions
# --------------------------------------------------------------------------------------------------

class NeedsComfyUI(RuntimeError):
    """A node's inputs come from ComfyUI and no ComfyUI checkout is importable."""


def _comfyui_importable() -> bool:
    """Put ``COMFYUI_PATH`` on ``sys.path`` (CPU only) unless ``comfy`` is importable already."""
    if "comfy" in sys.modules:
        return True
    root = os.environ.get("COMFYUI_PATH", "").strip()
    if not root or not (Path(root) / "comfy" / "samplers.py").is_file():
        return False
    sys.path.insert(0, str(Path(root).resolve()))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported: it picks the device once
    return True


@functools.cache
def otcache_classes() -> dict[str, Any]:
    """The pack's ``NODE_CLASS_MAPPINGS``, the repository imported as ComfyUI imports a custom node."""
    _comfyui_importable()
    pack = sys.modules.get(PACK_NAME) or load_pack(REPO, PACK_NAME)
    return pack.NODE_CLASS_MAPPINGS


def input_types(node_type: str) -> dict:
    try:
        return otcache_classes()[node_type].INPUT_TYPES()
    except ImportError as exc:
        raise NeedsComfyUI(f"{node_type}'s inputs come from ComfyUI ({exc}): set COMFYUI_PATH to a ComfyUI "
                           "checkout") from exc


def widget_values(node_type: str, values: dict[str, Any]) -> list:
    """Widget values in the front end's order: ``values`` by input name, every other input at its default."""
    widgets = widget_inputs(input_types(node_type))
    unknown = set(values) - {name for name, *_ in widgets}
    if unknown:
        raise ValueError(f"{node_type} has no widget {sorted(unknown)}")
    out = []
    for name, kind, choices, options in widgets:
        if name in values:
            out.append(values[name])
        elif kind == "CONTROL":
            out.append("fixed")
        elif "default" in options:
            out.append(options["default"])
        elif kind == "COMBO" and choices:
            out.append(choices[0])  # what the front end shows for a combo without a default
        else:
            raise ValueError(f"{node_type}: give a value for {name!r} (it has no default)")
    return out


def otcache_node(w: Workflow, node_type: str, pos, width: float, **values: Any) -> int:
    """An OTCache node with its own sockets, outputs and widgets, ``values`` overriding defaults."""
    cls = otcache_classes()[node_type]
    spec = input_types(node_type)
    sockets = [(name, typ) for name, typ, _ in socket_inputs(spec)]
    outputs = list(zip(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES, cls.RETURN_TYPES))
    widgets = widget_values(node_type, values)
    height = 30 + 20 * max(len(sockets), len(outputs)) + 24 * len(widgets)
    return w.node(node_type, pos, (width, height), widgets, inputs=sockets, outputs=outputs,
                  color=(OTCACHE_COLOR, OTCACHE_BGCOLOR))


# --------------------------------------------------------------------------------------------------
# ComfyUI's own nodes (widget values in INPUT_TYPES order, as of ComfyUI 0.3.64)
# --------------------------------------------------------------------------------------------------

#: A point on the canvas (integers: the files keep what is given, and 1100.0 would not read as 1100).
Point = tuple[int, int]
#: An output of a node: (node id, output slot).
Socket = tuple[int, int]

SAMPLER_INPUTS = [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                  ("latent_image", "LATENT")]


def shifted(point: Point, dx: int = 0, dy: int = 0) -> Point:
    return point[0] + dx, point[1] + dy


def unet_loader(w: Workflow, pos, file_name: str) -> int:
    # UNETLoader: unet_name, weight_dtype
    return w.node("UNETLoader", pos, (340, 82), [file_name, "default"], outputs=[("MODEL", "MODEL")])


def text_encode(w: Workflow, pos, text: str, title: str) -> int:
    # CLIPTextEncode: text is the widget (first in INPUT_TYPES), clip the only socket
    return w.node("CLIPTextEncode", pos, (420, 160), [text], inputs=[("clip", "CLIP")],
                  outputs=[("CONDITIONING", "CONDITIONING")], title=title)


def ksampler(w: Workflow, pos, seed: int, steps: int, cfg: float, sampler: str, scheduler: str) -> int:
    # KSampler: seed, <control_after_generate>, steps, cfg, sampler_name, scheduler, denoise
    return w.node("KSampler", pos, (320, 262), [seed, "fixed", steps, cfg, sampler, scheduler, 1.0],
                  inputs=SAMPLER_INPUTS, outputs=[("LATENT", "LATENT")])


def otcache_schedule(w: Workflow, pos, preset: str, steps: int, budget: int, **values: Any) -> int:
    return otcache_node(w, "OTCacheSchedule", pos, 340, preset=preset, steps=steps, budget=budget, **values)


def otcache_apply(w: Workflow, pos, **values: Any) -> int:
    return otcache_node(w, "OTCacheApply", pos, 320, **values)


def preview_image(w: Workflow, pos, title: str, size=(420, 300)) -> int:
    return w.node("PreviewImage", pos, size, [], inputs=[("images", "IMAGE")], title=title)


def preview_text(w: Workflow, pos, title: str) -> int:
    # PreviewAny (comfy_extras/nodes_preview_any.py): shows any value, a STRING included; its input is "*"
    return w.node("PreviewAny", pos, (420, 220), [], inputs=[("source", "*")], title=title)


# --------------------------------------------------------------------------------------------------
# The parts of a workflow description
# --------------------------------------------------------------------------------------------------

#: Where the text encoders start, below the model loader (and its shift node).
TEXT_Y = 300


@dataclass(frozen=True)
class Shift:
    """The sampling-shift node after the model loader: ``ModelSamplingSD3`` or ``ModelSamplingAuraFlow``."""

    node: str
    shift: float


@dataclass(frozen=True)
class GuidedPrompt:
    """One prompt through a dual text encoder with embedded guidance (FLUX, HunyuanVideo): FluxGuidance is
    the positive, a zeroed copy the negative (unused at cfg 1.0: one model call per step)."""

    prompt: str
    clip_files: tuple[str, str] = ("clip_l.safetensors", "t5xxl_fp16.safetensors")
    clip_type: str = "flux"
    guidance: float = 3.5
    height: ClassVar[int] = 220  # what the left column places next starts this far below

    def add(self, w: Workflow, y: int) -> tuple[Socket, Socket]:
        """The encoder nodes from row ``y``, linked; returns the positive and the negative."""
        # DualCLIPLoader: clip_name1, clip_name2, type, device (optional)
        clip = w.node("DualCLIPLoader", (0, y), (340, 130), [*self.clip_files, self.clip_type, "default"],
                      outputs=[("CLIP", "CLIP")])
        encode = text_encode(w, (380, y), self.prompt, "Prompt")
        guidance = w.node("FluxGuidance", (840, y), (300, 58), [self.guidance],
                          inputs=[("conditioning", "CONDITIONING")], outputs=[("CONDITIONING", "CONDITIONING")])
        zero = w.node("ConditioningZeroOut", (840, y + 110), (300, 26), [], inputs=[("conditioning", "CONDITIONING")],
                      outputs=[("CONDITIONING", "CONDITIONING")], title="Negative (unused at cfg 1.0)")
        w.link(clip, 0, encode, "clip")
        w.link(encode, 0, guidance, "conditioning")
        w.link(encode, 0, zero, "conditioning")
        return (guidance, 0), (zero, 0)


@dataclass(frozen=True)
class PromptPair:
    """A positive and a negative prompt through one text encoder (Wan, Qwen-Image: real cfg)."""

    clip_file: str
    clip_type: str
    positive: str
    negative: str
    height: ClassVar[int] = 420

    def add(self, w: Workflow, y: int) -> tuple[Socket, Socket]:
        """The encoder nodes from row ``y``, linked; returns the positive and the negative."""
        # CLIPLoader: clip_name, type, device (optional)
        clip = w.node("CLIPLoader", (0, y), (340, 106), [self.clip_file, self.clip_type, "default"],
                      outputs=[("CLIP", "CLIP")])
        positive = text_encode(w, (380, y), self.positive, "Positive prompt")
        negative = text_encode(w, (380, y + 200), self.negative, "Negative prompt")
        w.link(clip, 0, positive, "clip")
        w.link(clip, 0, negative, "clip")
        return (positive, 0), (negative, 0)


@dataclass(frozen=True)
class Latent:
    """An empty latent, batch 1: an image (``EmptySD3LatentImage``, which FLUX and Qwen-Image use too) or,
    with ``frames``, a video (``EmptyHunyuanLatentVideo``, which Wan uses too)."""

    width: int
    height: int
    frames: int | None = None

    def add_with_vae(self, w: Workflow, y: int, vae_file: str) -> tuple[int, int]:
        """The latent at row ``y`` and the VAE loader below it."""
        if self.frames is None:
            node, widgets, height, vae_y = "EmptySD3LatentImage", [self.width, self.height, 1], 106, y + 160
        else:
            node, widgets, height, vae_y = ("EmptyHunyuanLatentVideo", [self.width, self.height, self.frames, 1],
                                            130, y + 180)
        latent = w.node(node, (0, y), (340, height), widgets, outputs=[("LATENT", "LATENT")])
        vae = w.node("VAELoader", (0, vae_y), (340, 58), [vae_file], outputs=[("VAE", "VAE")])
        return latent, vae


@dataclass(frozen=True)
class ScheduleSpec:
    """OTCache Schedule's preset, steps and budget; ``values`` sets any other widget by name."""

    preset: str
    steps: int
    budget: int
    values: Mapping[str, Any] = field(default_factory=dict)

    def add(self, w: Workflow, pos: Point) -> int:
        return otcache_schedule(w, pos, self.preset, self.steps, self.budget, **self.values)


@dataclass(frozen=True)
class SamplerSpec:
    steps: int
    cfg: float
    sampler: str = "euler"
    scheduler: str = "simple"
    seed: int = 42


@dataclass(frozen=True)
class TiledDecode:
    """``VAEDecodeTiled`` instead of ``VAEDecode`` (a long, large video decodes in tiles)."""

    tile_size: int
    overlap: int
    temporal_size: int
    temporal_overlap: int


@dataclass(frozen=True)
class ControlNetStage:
    """Load Image -> Canny -> Apply ControlNet between the text encoders and the sampler (with a preview of
    the edges). Laid out below the text encoders; Apply ControlNet sits beside them."""

    controlnet_file: str
    image: str = "example.png"  # ComfyUI's input folder ships it
    canny: tuple[float, float] = (0.2, 0.5)  # low, high threshold
    strength: float = 0.7
    start_percent: float = 0.0
    end_percent: float = 0.8
    height: ClassVar[int] = 360

    def add_inputs(self, w: Workflow, y: int) -> tuple[int, int, int, int]:
        """Image, Canny, ControlNet loader and Apply ControlNet, from row ``y`` down."""
        # LoadImage: image, <upload>
        image = w.node("LoadImage", (0, y), (340, 320), [self.image, "image"],
                       outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")])
        canny = w.node("Canny", (380, y), (300, 82), list(self.canny), inputs=[("image", "IMAGE")],
                       outputs=[("IMAGE", "IMAGE")])
        control = w.node("ControlNetLoader", (380, y + 140), (340, 58), [self.controlnet_file],
                         outputs=[("CONTROL_NET", "CONTROL_NET")])
        # ControlNetApplyAdvanced: strength, start_percent, end_percent (vae is an optional socket)
        apply_control = w.node("ControlNetApplyAdvanced", (1180, TEXT_Y), (320, 186),
                               [self.strength, self.start_percent, self.end_percent],
                               inputs=[("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                                       ("control_net", "CONTROL_NET"), ("image", "IMAGE"), ("vae", "VAE")],
                               outputs=[("positive", "CONDITIONING"), ("negative", "CONDITIONING")])
        return image, canny, control, apply_control

    def add_preview_and_wire(self, w: Workflow, y: int, inputs: tuple[int, int, int, int], positive: Socket,
                             negative: Socket) -> tuple[Socket, Socket]:
        """The edge preview beside Canny; the links. Returns the controlled positive and negative."""
        image, canny, control, apply_control = inputs
        edges = preview_image(w, (760, y), "Canny edges", size=(360, 360))
        w.link(image, 0, canny, "image")
        w.link(canny, 0, edges, "images")
        w.link(*positive, apply_control, "positive")
        w.link(*negative, apply_control, "negative")
        w.link(control, 0, apply_control, "control_net")
        w.link(canny, 0, apply_control, "image")
        return (apply_control, 0), (apply_control, 1)


@dataclass(frozen=True)
class CalibrateStage:
    """OTCache Calibrate on the workflow's own model, prompts, latent and VAE, at the KSampler's steps, cfg,
    sampler and scheduler, feeding OTCache Schedule's ``calibration``. Laid out left of the schedule, its
    summary below the schedule."""

    name: str

    def add(self, w: Workflow, schedule_at: Point, sampler: SamplerSpec) -> int:
        return otcache_node(w, "OTCacheCalibrate", shifted(schedule_at, -420), 360, steps=sampler.steps,
                            cfg=sampler.cfg, sampler_name=sampler.sampler, scheduler=sampler.scheduler,
                            name=self.name)

    def add_summary_and_wire(self, w: Workflow, calibrate: int, schedule: int, schedule_at: Point, model: Socket,
                             inputs: SamplingInputs) -> None:
        summary = preview_text(w, shifted(schedule_at, 0, 300), "Calibration summary")  # the image shows on the node
        w.link(*model, calibrate, "model")
        w.link(*inputs.positive, calibrate, "positive")
        w.link(*inputs.negative, calibrate, "negative")
        w.link(inputs.latent, 0, calibrate, "latent_image")
        w.link(inputs.vae, 0, calibrate, "vae")
        w.link(calibrate, 0, schedule, "calibration")
        w.link(calibrate, 2, summary, "source")


@dataclass(frozen=True)
class CompareStage:
    """A second KSampler on the model without OTCache (same seed, prompts and latent), its decode, and OTCache
    Compare between the two decodes: PSNR / SSIM of the cached image against full compute and a difference
    map. Laid out in a row below the sampler."""

    dy: int = 620

    def add_and_wire(self, w: Workflow, spec: WorkflowSpec, model: Socket, inputs: SamplingInputs,
                     cached_images: int) -> int:
        s, at = spec.sampler, shifted(spec.layout.sampler, 0, self.dy)
        full = ksampler(w, at, s.seed, s.steps, s.cfg, s.sampler, s.scheduler)
        w.nodes[full - 1]["title"] = "KSampler (full compute, no OTCache)"
        decode = w.node("VAEDecode", shifted(at, 360), (210, 46), [], inputs=[("samples", "LATENT"), ("vae", "VAE")],
                        outputs=[("IMAGE", "IMAGE")])
        compare = otcache_node(w, "OTCacheCompare", shifted(at, 600), 320)
        report = preview_text(w, shifted(at, 960), "OTCache Compare report")
        w.link(*model, full, "model")
        w.link(*inputs.positive, full, "positive")
        w.link(*inputs.negative, full, "negative")
        w.link(inputs.latent, 0, full, "latent_image")
        wire_decode_and_save(w, full, inputs.vae, decode, None)
        w.link(decode, 0, compare, "reference")
        w.link(cached_images, 0, compare, "image")
        w.link(compare, 0, report, "source")
        return compare


@dataclass(frozen=True)
class ModelSplit:
    """A second model takes over at ``at_step`` (Wan 2.2 A14B: high noise, then low noise). Each model gets
    its own row: loader, shift, OTCache Schedule (``budget`` here for the second) and Apply, and a
    KSamplerAdvanced over its share of the steps, the second continuing the first's latent."""

    model: str
    budget: int
    at_step: int
    names: tuple[str, str] = ("high noise", "low noise")
    row_pitch: int = 1100


@dataclass(frozen=True)
class Layout:
    """Where the model column and the OTCache/sampling row stand. For a split, the first model's row (the
    second stands ``row_pitch`` below). Decode defaults to the right of the sampler, save to the right of
    decode, the summary to the right of the schedule preview."""

    note: Point = (0, -330)
    model: Point = (0, 0)
    schedule: Point = (420, -40)
    apply: Point = (840, 0)
    sampler: Point = (1200, 0)
    previews: Point = (900, 720)
    summary: Point | None = None
    decode: Point | None = None
    save: Point | None = None


@dataclass(frozen=True)
class WorkflowSpec:
    """One example workflow: model -> [shift] -> OTCache Apply -> sampler -> decode -> save, with its text
    encoders, latent, VAE, OTCache Schedule (preview and summary beside it) and the optional stages."""

    note: str  # the "What to adjust" note
    model: str  # the diffusion model's file (the first model's, with a split)
    text: GuidedPrompt | PromptPair
    latent: Latent
    vae: str
    schedule: ScheduleSpec
    sampler: SamplerSpec
    save_prefix: str
    fps: float | None = None  # a video: SaveAnimatedWEBP at this frame rate; None: SaveImage
    shift: Shift | None = None
    tiled_decode: TiledDecode | None = None
    controlnet: ControlNetStage | None = None
    calibrate: CalibrateStage | None = None
    split: ModelSplit | None = None
    compare: CompareStage | None = None
    note_size: Point = (760, 150)
    layout: Layout = Layout()

    def __post_init__(self) -> None:
        if self.split and self.calibrate:
            raise ValueError("a Calibrate stage calibrates one model: give either calibrate or split, not both")


@dataclass(frozen=True)
class SamplingInputs:
    """What every sampler of a workflow takes besides the model: prompts and latent; and the VAE."""

    positive: Socket
    negative: Socket
    latent: int
    vae: int


REUSE_NOTE = (
    "Skipped steps: OTCache Apply's 'reuse' = calibrated runs the schedule's own rule (a preset's, measured: "
    "horizon2; a calibration's, chosen end to end per budget); 'hold' is how OTCache ran before reuse rules."
)
"""The line every workflow's note ends with: what the skipped steps stand in with, and how to go back."""


# --------------------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------------------

def build(spec: WorkflowSpec) -> dict:
    """The workflow JSON of ``spec``. Node ids follow creation order, so the steps below keep one order:
    note, model, text, inputs, latent, VAE, then the sampling part (one model or a split)."""
    w = Workflow()
    w.note(spec.layout.note, spec.note_size, f"{spec.note}\n{REUSE_NOTE}", "What to adjust")
    model = None if spec.split else model_chain(w, spec.layout.model, spec.model, spec.shift)
    positive, negative = spec.text.add(w, TEXT_Y)
    y = TEXT_Y + spec.text.height
    controls = spec.controlnet.add_inputs(w, y) if spec.controlnet else None
    latent_y = y + (spec.controlnet.height if spec.controlnet else 0)
    latent, vae = spec.latent.add_with_vae(w, latent_y, spec.vae)
    if controls:
        positive, negative = spec.controlnet.add_preview_and_wire(w, y, controls, positive, negative)
    inputs = SamplingInputs(positive, negative, latent, vae)
    if model is None:
        sample_two_models(w, spec, inputs)
    else:
        sample_one_model(w, spec, model, inputs)
    return w.to_json()


def model_chain(w: Workflow, at: Point, file_name: str, shift: Shift | None) -> Socket:
    """The model loader at ``at`` and its shift node below it; returns the model to sample with."""
    unet = unet_loader(w, at, file_name)
    if shift is None:
        return unet, 0
    shift_node = w.node(shift.node, shifted(at, 0, 130), (340, 58), [shift.shift], inputs=[("model", "MODEL")],
                        outputs=[("MODEL", "MODEL")])
    w.link(unet, 0, shift_node, "model")
    return shift_node, 0


def sample_one_model(w: Workflow, spec: WorkflowSpec, model: Socket, inputs: SamplingInputs) -> None:
    """Schedule, KSampler, decode and save in one row, then OTCache Apply between them and the previews (the
    order of the node ids); Calibrate, where given, feeds the schedule."""
    lay = spec.layout
    calibrate = spec.calibrate.add(w, lay.schedule, spec.sampler) if spec.calibrate else None
    schedule = spec.schedule.add(w, lay.schedule)
    s = spec.sampler
    sampler = ksampler(w, lay.sampler, s.seed, s.steps, s.cfg, s.sampler, s.scheduler)
    decode, save = add_decode_and_save(w, spec, sampler_at=lay.sampler)
    if calibrate:
        spec.calibrate.add_summary_and_wire(w, calibrate, schedule, lay.schedule, model, inputs)
    apply_ = otcache_apply(w, lay.apply)
    strips, summary = add_schedule_previews(w, lay, "")
    wire_cached_stage(w, model, schedule, apply_, strips, summary, sampler, inputs, (inputs.latent, 0))
    wire_decode_and_save(w, sampler, inputs.vae, decode, save)
    compare = spec.compare.add_and_wire(w, spec, model, inputs, decode) if spec.compare else None
    w.group("OTCache", [*([calibrate] if calibrate else []), schedule, apply_, *([compare] if compare else [])])


def sample_two_models(w: Workflow, spec: WorkflowSpec, inputs: SamplingInputs) -> None:
    """One row per model, then decode and save. Both samplers run the whole step count, each over its share:
    the first adds the noise and hands its leftover noise on (both switches "enable"), the second adds none and
    denoises to the end (both "disable"; 10000 is ComfyUI's "to the last step")."""
    split, s = spec.split, spec.sampler
    rows = ((spec.model, spec.schedule, "enable", 0, split.at_step),
            (split.model, replace(spec.schedule, budget=split.budget), "disable", split.at_step, 10000))
    latent: Socket = (inputs.latent, 0)
    for row, (name, (model_file, schedule_spec, noise, start, end)) in enumerate(zip(split.names, rows)):
        lay = stage_layout(spec.layout, row * split.row_pitch)
        model = model_chain(w, lay.model, model_file, spec.shift)
        schedule = schedule_spec.add(w, lay.schedule)
        apply_ = otcache_apply(w, lay.apply)
        # KSamplerAdvanced: add_noise, noise_seed, <control_after_generate>, steps, cfg, sampler_name, scheduler,
        # start_at_step, end_at_step, return_with_leftover_noise
        sampler = w.node("KSamplerAdvanced", lay.sampler, (320, 334),
                         [noise, s.seed, "fixed", s.steps, s.cfg, s.sampler, s.scheduler, start, end, noise],
                         inputs=SAMPLER_INPUTS, outputs=[("LATENT", "LATENT")],
                         title=f"KSamplerAdvanced ({name}, steps {start}-{min(end, s.steps)})")
        strips, summary = add_schedule_previews(w, lay, f" ({name})")
        wire_cached_stage(w, model, schedule, apply_, strips, summary, sampler, inputs, latent)
        w.group(f"OTCache ({name})", [schedule, apply_])
        latent = (sampler, 0)
    decode, save = add_decode_and_save(w, spec, sampler_at=spec.layout.sampler)
    wire_decode_and_save(w, latent[0], inputs.vae, decode, save)


def stage_layout(layout: Layout, dy: int) -> Layout:
    """``layout``'s model row moved down by ``dy`` (a split's second model)."""
    moved = {name: shifted(getattr(layout, name), 0, dy) for name in ("model", "schedule", "apply", "sampler",
                                                                        "previews", "summary")
             if getattr(layout, name) is not None}
    return replace(layout, **moved)


def add_schedule_previews(w: Workflow, lay: Layout, suffix: str) -> tuple[int, int]:
    """OTCache Schedule's strip image and its text summary, by default side by side."""
    strips = preview_image(w, lay.previews, f"OTCache schedule preview{suffix}", size=(560, 260))
    summary = preview_text(w, lay.summary or shifted(lay.previews, 580), f"OTCache schedule summary{suffix}")
    return strips, summary


def add_decode_and_save(w: Workflow, spec: WorkflowSpec, sampler_at: Point) -> tuple[int, int]:
    """VAE decode (tiled where the spec says so) and the save node: an image, or an animated WEBP."""
    decode_at = spec.layout.decode or shifted(sampler_at, 360)
    if spec.tiled_decode:
        t = spec.tiled_decode
        # VAEDecodeTiled: tile_size, overlap, temporal_size, temporal_overlap
        widgets = [t.tile_size, t.overlap, t.temporal_size, t.temporal_overlap]
        node, size = "VAEDecodeTiled", (270, 150)
    else:
        node, size, widgets = "VAEDecode", (210, 46), []
    decode = w.node(node, decode_at, size, widgets, inputs=[("samples", "LATENT"), ("vae", "VAE")],
                    outputs=[("IMAGE", "IMAGE")])
    save_at = spec.layout.save or shifted(decode_at, 320 if spec.tiled_decode else 240)
    if spec.fps is None:
        save = w.node("SaveImage", save_at, (520, 560), [spec.save_prefix], inputs=[("images", "IMAGE")])
    else:
        # SaveAnimatedWEBP: filename_prefix, fps, lossless, quality, method
        save = w.node("SaveAnimatedWEBP", save_at, (520, 420), [spec.save_prefix, spec.fps, False, 90, "default"],
                      inputs=[("images", "IMAGE")])
    return decode, save


def wire_cached_stage(w: Workflow, model: Socket, schedule: int, apply_: int, strips: int, summary: int,
                      sampler: int, inputs: SamplingInputs, latent: Socket) -> None:
    """OTCache Apply between the model and the sampler, fed by the schedule (whose previews show beside)."""
    w.link(*model, apply_, "model")
    w.link(schedule, 0, apply_, "schedule")
    w.link(schedule, 1, strips, "images")
    w.link(schedule, 2, summary, "source")
    w.link(apply_, 0, sampler, "model")
    w.link(*inputs.positive, sampler, "positive")
    w.link(*inputs.negative, sampler, "negative")
    w.link(*latent, sampler, "latent_image")


def wire_decode_and_save(w: Workflow, sampler: int, vae: int, decode: int, save: int | None) -> None:
    w.link(sampler, 0, decode, "samples")
    w.link(vae, 0, decode, "vae")
    if save is not None:
        w.link(decode, 0, save, "images")


# --------------------------------------------------------------------------------------------------
# The workflows
# --------------------------------------------------------------------------------------------------

FLUX_PROMPT = ("a red fox sitting in a snowy birch forest at dawn, soft golden light, mist between the trees, "
               "detailed fur, photograph")
WAN_NEGATIVE = "blurry, low quality, static, overexposed, distorted, deformed, watermark, subtitles, jpeg artifacts"

FLUX1_DEV = WorkflowSpec(
    note="OTCache on FLUX.1-dev: 28 steps, 10 of them computed in full (ideal speedup 2.8x).\n"
         "Adjust: the model file names in the loaders; 'budget' (computed steps out of 'steps') or budget_as "
         "'speedup' in OTCache Schedule. A different KSampler step count keeps the same share of computed steps.\n"
         "The Preview Any node shows the schedule summary; the console logs what each run computed.",
    model="flux1-dev.safetensors", text=GuidedPrompt(FLUX_PROMPT), latent=Latent(1024, 1024),
    vae="ae.safetensors", schedule=ScheduleSpec("flux.1-dev", 28, 10), sampler=SamplerSpec(28, 1.0),
    save_prefix="OTCache/flux1-dev", layout=Layout(previews=(420, 560)))

WAN21_T2V = WorkflowSpec(
    note="OTCache on Wan 2.1 T2V 1.3B. The preset was calibrated at 50 steps: budget 20 of 50 computed steps "
         "becomes 12 of the KSampler's 30 (the schedule is resampled to the sampler's real step count).\n"
         "Adjust: the model file names in the loaders; 'budget' in OTCache Schedule (lower = faster, rougher); "
         "for Wan 2.1 14B pick the preset wan2.1-t2v-14b.",
    model="wan2.1_t2v_1.3B_fp16.safetensors", shift=Shift("ModelSamplingSD3", 8.0),
    text=PromptPair("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", "a small sailboat crossing a calm turquoise "
                    "bay, gentle waves, seagulls, sunny afternoon, smooth tracking shot", WAN_NEGATIVE),
    latent=Latent(832, 480, 33), vae="wan_2.1_vae.safetensors",
    schedule=ScheduleSpec("wan2.1-t2v-1.3b", 50, 20), sampler=SamplerSpec(30, 6.0, "uni_pc"),
    save_prefix="OTCache/wan21-t2v", fps=16.0)

QWEN_IMAGE = WorkflowSpec(
    note="OTCache on Qwen-Image with a target speedup: budget_as 'speedup' 2.5 computes 12 of the 30 steps "
         "(any step count keeps the 2.5x).\nAdjust: the model file names in the loaders; 'speedup' in OTCache "
         "Schedule (or budget_as 'computed steps' and 'budget'). cfg 2.5 runs cond and uncond: both reuse the "
         "same steps.",
    model="qwen_image_fp8_e4m3fn.safetensors", shift=Shift("ModelSamplingAuraFlow", 3.1),
    text=PromptPair("qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_image", "a cozy bookshop window on a rainy "
                    "evening, warm light, a hand-painted sign that reads \"OTCache Books\", reflections on the wet "
                    "street", ""),
    latent=Latent(1328, 1328), vae="qwen_image_vae.safetensors",
    schedule=ScheduleSpec("qwen-image", 30, 12, {"budget_as": "speedup", "speedup": 2.5}),
    sampler=SamplerSpec(30, 2.5), save_prefix="OTCache/qwen-image")

CALIBRATE_FLUX = replace(
    FLUX1_DEV,
    note="Calibrate OTCache for your own FLUX.1-dev setting once (it saves '<user>/otcache/<name>.json', then "
         "appears in OTCache Schedule's preset list), and sample with the result.\nAdjust: the model file names; "
         "Calibrate's steps/sampler/scheduler/cfg to match the KSampler; 'trials' and 'samples' trade time for "
         "quality; 'budget' in OTCache Schedule, or budget_as 'quality' and 'target_psnr' for the fewest steps the "
         "calibration measured to reach that PSNR. Re-running resumes an interrupted calibration.",
    save_prefix="OTCache/flux1-dev-calibrated", calibrate=CalibrateStage("flux1-dev-28-euler-simple"),
    layout=Layout(schedule=(840, 520), apply=(1200, 520), sampler=(1560, 520), previews=(1440, 820)))

HUNYUAN_VIDEO = WorkflowSpec(
    note="OTCache on HunyuanVideo T2V (720p release; the HunyuanVideo this ComfyUI runs). No published schedule "
         "exists for this model (LeMiCa publishes HunyuanVideo-1.5's), so the preset is 'generic'; for a schedule "
         "fitted to your setting run OTCache Calibrate once (see otcache_calibrate_flux.json).\n"
         "Adjust: the model file names in the loaders; 'budget' in OTCache Schedule (12 of 30 steps here); "
         "FluxGuidance is HunyuanVideo's embedded guidance (cfg stays 1.0: one model call per step).",
    note_size=(760, 170), model="hunyuan_video_t2v_720p_bf16.safetensors", shift=Shift("ModelSamplingSD3", 7.0),
    text=GuidedPrompt("a paper boat drifting down a rain-filled street gutter, reflections of neon signs, slow "
                      "dolly shot, shallow depth of field",
                      ("clip_l.safetensors", "llava_llama3_fp8_scaled.safetensors"), "hunyuan_video", 6.0),
    latent=Latent(848, 480, 73), vae="hunyuan_video_vae_bf16.safetensors",
    schedule=ScheduleSpec("generic", 30, 12), sampler=SamplerSpec(30, 1.0),
    tiled_decode=TiledDecode(256, 64, 64, 8),  # a 73-frame 720p decode needs tiles
    save_prefix="OTCache/hunyuan-video", fps=24.0)

WAN22_T2V = WorkflowSpec(
    note="OTCache on Wan 2.2 T2V A14B: the high-noise model samples steps 0-10 of 20 and the low-noise model "
         "steps 10-20, in two KSamplerAdvanced. Each model has its own OTCache Apply and Schedule: every sampling "
         "run is scheduled on its own 10 steps (here 6 of 10 computed on the high-noise run, where the layout "
         "forms, and 4 of 10 on the low-noise run).\nThe schedules are 'generic' (evenly spaced within each run): a "
         "whole-run preset such as wan2.1-t2v-14b puts its dense steps at the start of each half and measured 4 to 8 dB "
         "worse in this layout (benchmarks/RESULTS.md).\nAdjust: the model file names; the budgets; the split "
         "step (end_at_step of the first sampler = start_at_step of the second).",
    note_size=(900, 190), model="wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
    split=ModelSplit("wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", budget=4, at_step=10),
    shift=Shift("ModelSamplingSD3", 8.0),
    text=PromptPair("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", "a hummingbird hovering at a red hibiscus "
                    "flower, wings blurred, morning dew, macro shot, slow motion", WAN_NEGATIVE),
    latent=Latent(640, 640, 81), vae="wan_2.1_vae.safetensors",
    schedule=ScheduleSpec("generic", 10, 6), sampler=SamplerSpec(20, 3.5),
    save_prefix="OTCache/wan22-t2v", fps=16.0,
    layout=Layout(note=(0, -380), model=(900, 0), schedule=(1280, -40), apply=(1660, 0), sampler=(2020, 0),
                  previews=(1280, 290), summary=(1860, 380), decode=(2600, 1100), save=(2600, 1200)))

FLUX1_DEV_CONTROLNET = replace(
    FLUX1_DEV,
    note="OTCache on FLUX.1-dev with a ControlNet (canny edges of the input image): 28 steps, 10 computed. At "
         "the steps OTCache reuses, the ControlNet's outputs only feed blocks that do not run.\n"
         "Adjust: the model file names (the ControlNet file is XLabs' FLUX canny ControlNet v3; no ComfyUI "
         "template names a FLUX ControlNet; any FLUX ControlNet loads here, an InstantX/Union one also needs the "
         "VAE connected to Apply ControlNet); the image; strength and end_percent of Apply ControlNet; "
         "'budget' in OTCache Schedule.",
    note_size=(860, 170),
    text=GuidedPrompt("a lighthouse on a rocky coast at sunset, dramatic clouds, crashing waves, oil painting"),
    controlnet=ControlNetStage("flux-canny-controlnet-v3.safetensors"),
    save_prefix="OTCache/flux1-dev-controlnet", layout=Layout(sampler=(1560, 0), previews=(1180, 560)))

COMPARE_FLUX = replace(
    FLUX1_DEV,
    note="See what OTCache costs in quality: the same seed sampled twice, with OTCache (top row, 10 of 28 steps "
         "computed) and without it (bottom row), and OTCache Compare between the two images: PSNR (dB) and SSIM "
         "against full compute and a map of where they differ (about 30 dB looks alike at a glance, 40 dB is hard "
         "to tell apart).\nAdjust: the model file names; 'budget' in OTCache Schedule; keep both KSamplers' "
         "settings equal.",
    note_size=(860, 170), save_prefix="OTCache/flux1-dev-compare", compare=CompareStage(),
    layout=Layout(previews=(420, 560)))

#: File name in ``workflows/`` -> its description.
WORKFLOWS: dict[str, WorkflowSpec] = {
    "otcache_flux1_dev.json": FLUX1_DEV,
    "otcache_flux1_dev_controlnet.json": FLUX1_DEV_CONTROLNET,
    "otcache_wan21_t2v.json": WAN21_T2V,
    "otcache_wan22_t2v_14b.json": WAN22_T2V,
    "otcache_hunyuan_video.json": HUNYUAN_VIDEO,
    "otcache_qwen_image.json": QWEN_IMAGE,
    "otcache_calibrate_flux.json": CALIBRATE_FLUX,
    "otcache_compare_flux.json": COMPARE_FLUX,
}


def render(spec: WorkflowSpec) -> str:
    """The file text of ``spec``'s workflow."""
    return json.dumps(build(spec), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale, failed = [], []
    for name, spec in WORKFLOWS.items():
        path = HERE / name
        try:
            text = render(spec)
        except NeedsComfyUI as exc:
            failed.append(f"{name}: {exc}")
            continue
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    for line in failed:
        print(f"not built: {line}", file=sys.stderr)
    if stale:
        print("out of date (run python tools/build_workflows.py): " + ", ".join(stale))
        return 1
    return 2 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
