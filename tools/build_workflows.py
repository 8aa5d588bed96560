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
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

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
# Shared pieces
# --------------------------------------------------------------------------------------------------


def unet_loader(w: Workflow, pos, file_name: str) -> int:
    # UNETLoader: unet_name, weight_dtype
    return w.node("UNETLoader", pos, (340, 82), [file_name, "default"], outputs=[("MODEL", "MODEL")])


def clip_loader(w: Workflow, pos, file_name: str, clip_type: str) -> int:
    # CLIPLoader: clip_name, type, device (optional)
    return w.node("CLIPLoader", pos, (340, 106), [file_name, clip_type, "default"], outputs=[("CLIP", "CLIP")])


def vae_loader(w: Workflow, pos, file_name: str) -> int:
    return w.node("VAELoader", pos, (340, 58), [file_name], outputs=[("VAE", "VAE")])


def text_encode(w: Workflow, pos, text: str, title: str) -> int:
    # CLIPTextEncode: text is the widget (first in INPUT_TYPES), clip the only socket
    return w.node("CLIPTextEncode", pos, (420, 160), [text], inputs=[("clip", "CLIP")],
                  outputs=[("CONDITIONING", "CONDITIONING")], title=title)


def ksampler(w: Workflow, pos, seed: int, steps: int, cfg: float, sampler: str, scheduler: str) -> int:
    # KSampler: seed, <control_after_generate>, steps, cfg, sampler_name, scheduler, denoise
    return w.node("KSampler", pos, (320, 262), [seed, "fixed", steps, cfg, sampler, scheduler, 1.0],
                  inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                          ("latent_image", "LATENT")],
                  outputs=[("LATENT", "LATENT")])


def otcache_schedule(w: Workflow, pos, preset: str, steps: int, budget: int, **values: Any) -> int:
    return otcache_node(w, "OTCacheSchedule", pos, 340, preset=preset, steps=steps, budget=budget, **values)


def otcache_apply(w: Workflow, pos, **values: Any) -> int:
    return otcache_node(w, "OTCacheApply", pos, 320, **values)


def preview_image(w: Workflow, pos, title: str, size=(420, 300)) -> int:
    return w.node("PreviewImage", pos, size, [], inputs=[("images", "IMAGE")], title=title)


def preview_text(w: Workflow, pos, title: str) -> int:
    # PreviewAny (comfy_extras/nodes_preview_any.py): shows any value, a STRING included; its input is "*"
    return w.node("PreviewAny", pos, (420, 220), [], inputs=[("source", "*")], title=title)


def vae_decode(w: Workflow, pos) -> int:
    return w.node("VAEDecode", pos, (210, 46), [], inputs=[("samples", "LATENT"), ("vae", "VAE")],
                  outputs=[("IMAGE", "IMAGE")])


def save_image(w: Workflow, pos, prefix: str) -> int:
    return w.node("SaveImage", pos, (520, 560), [prefix], inputs=[("images", "IMAGE")])


def animated_webp(w: Workflow, pos, prefix: str, fps: float) -> int:
    # SaveAnimatedWEBP: filename_prefix, fps, lossless, quality, method
    return w.node("SaveAnimatedWEBP", pos, (520, 420), [prefix, fps, False, 90, "default"], inputs=[("images", "IMAGE")])


def flux_text(w: Workflow, x: float, y: float, prompt: str) -> tuple[int, int]:
    """DualCLIPLoader -> CLIPTextEncode -> FluxGuidance (positive) and ConditioningZeroOut (negative)."""
    clip = w.node("DualCLIPLoader", (x, y), (340, 130), ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default"],
                  outputs=[("CLIP", "CLIP")])
    encode = text_encode(w, (x + 380, y), prompt, "Prompt")
    guidance = w.node("FluxGuidance", (x + 840, y), (300, 58), [3.5], inputs=[("conditioning", "CONDITIONING")],
                      outputs=[("CONDITIONING", "CONDITIONING")])
    zero = w.node("ConditioningZeroOut", (x + 840, y + 110), (300, 26), [], inputs=[("conditioning", "CONDITIONING")],
                  outputs=[("CONDITIONING", "CONDITIONING")], title="Negative (unused at cfg 1.0)")
    w.link(clip, 0, encode, "clip")
    w.link(encode, 0, guidance, "conditioning")
    w.link(encode, 0, zero, "conditioning")
    return guidance, zero


def wire_cached_sampling(w: Workflow, model: int, positive: int, negative: int, latent: int, vae: int, *,
                         schedule: int, sampler: int, decode: int, save: int, apply_at: tuple[float, float],
                         previews_at: tuple[float, float], grouped_with: tuple[int, ...] = (),
                         negative_slot: int = 0) -> int:
    """The part every sampling workflow shares: OTCache Apply (at ``apply_at``) between the model and the
    sampler, then VAE decode and save; the schedule's preview image and summary side by side at
    ``previews_at``; the OTCache nodes (``grouped_with`` first) in one group. Returns the Apply node."""
    apply_ = otcache_apply(w, apply_at)
    x, y = previews_at
    strips = preview_image(w, (x, y), "OTCache schedule preview", size=(560, 260))
    summary = preview_text(w, (x + 580, y), "OTCache schedule summary")
    w.link(model, 0, apply_, "model")
    w.link(schedule, 0, apply_, "schedule")
    w.link(schedule, 1, strips, "images")
    w.link(schedule, 2, summary, "source")
    w.link(apply_, 0, sampler, "model")
    w.link(positive, 0, sampler, "positive")
    w.link(negative, negative_slot, sampler, "negative")
    w.link(latent, 0, sampler, "latent_image")
    w.link(sampler, 0, decode, "samples")
    w.link(vae, 0, decode, "vae")
    w.link(decode, 0, save, "images")
    w.group("OTCache", [*grouped_with, schedule, apply_])
    return apply_


FLUX_PROMPT = ("a red fox sitting in a snowy birch forest at dawn, soft golden light, mist between the trees, "
               "detailed fur, photograph")


# --------------------------------------------------------------------------------------------------
# The workflows
# --------------------------------------------------------------------------------------------------

def flux1_dev() -> dict:
    w = Workflow()
    w.note((0, -330), (760, 150),
           "OTCache on FLUX.1-dev: 28 steps, 10 of them computed in full (ideal speedup 2.8x).\n"
           "Adjust: the model file names in the loaders; 'budget' (computed steps out of 'steps') or budget_as "
           "'speedup' in OTCache Schedule. A different KSampler step count keeps the same share of computed steps.\n"
           "The Preview Any node shows the schedule summary; the console logs what each run computed.",
           "What to adjust")
    unet = unet_loader(w, (0, 0), "flux1-dev.safetensors")
    positive, negative = flux_text(w, 0, 300, FLUX_PROMPT)
    latent = w.node("EmptySD3LatentImage", (0, 520), (340, 106), [1024, 1024, 1], outputs=[("LATENT", "LATENT")])
    vae = vae_loader(w, (0, 680), "ae.safetensors")
    schedule = otcache_schedule(w, (420, -40), "flux.1-dev", 28, 10)
    sampler = ksampler(w, (1200, 0), 42, 28, 1.0, "euler", "simple")
    decode = vae_decode(w, (1560, 0))
    save = save_image(w, (1800, 0), "OTCache/flux1-dev")
    wire_cached_sampling(w, unet, positive, negative, latent, vae, schedule=schedule, sampler=sampler,
                         decode=decode, save=save, apply_at=(840, 0), previews_at=(420, 560))
    return w.to_json()


def wan21_t2v() -> dict:
    w = Workflow()
    w.note((0, -330), (760, 150),
           "OTCache on Wan 2.1 T2V 1.3B. The preset was calibrated at 50 steps: budget 20 of 50 computed steps "
           "becomes 12 of the KSampler's 30 (the schedule is resampled to the sampler's real step count).\n"
           "Adjust: the model file names in the loaders; 'budget' in OTCache Schedule (lower = faster, rougher); "
           "for Wan 2.1 14B pick the preset wan2.1-t2v-14b.",
           "What to adjust")
    unet = unet_loader(w, (0, 0), "wan2.1_t2v_1.3B_fp16.safetensors")
    shift = w.node("ModelSamplingSD3", (0, 130), (340, 58), [8.0], inputs=[("model", "MODEL")],
                   outputs=[("MODEL", "MODEL")])
    clip = clip_loader(w, (0, 300), "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan")
    positive = text_encode(w, (380, 300), "a small sailboat crossing a calm turquoise bay, gentle waves, seagulls, "
                           "sunny afternoon, smooth tracking shot", "Positive prompt")
    negative = text_encode(w, (380, 500), "blurry, low quality, static, overexposed, distorted, deformed, "
                           "watermark, subtitles, jpeg artifacts", "Negative prompt")
    latent = w.node("EmptyHunyuanLatentVideo", (0, 720), (340, 130), [832, 480, 33, 1], outputs=[("LATENT", "LATENT")])
    vae = vae_loader(w, (0, 900), "wan_2.1_vae.safetensors")
    schedule = otcache_schedule(w, (420, -40), "wan2.1-t2v-1.3b", 50, 20)
    sampler = ksampler(w, (1200, 0), 42, 30, 6.0, "uni_pc", "simple")
    decode = vae_decode(w, (1560, 0))
    save = animated_webp(w, (1800, 0), "OTCache/wan21-t2v", 16.0)
    w.link(unet, 0, shift, "model")
    w.link(clip, 0, positive, "clip")
    w.link(clip, 0, negative, "clip")
    wire_cached_sampling(w, shift, positive, negative, latent, vae, schedule=schedule, sampler=sampler,
                         decode=decode, save=save, apply_at=(840, 0), previews_at=(900, 720))
    return w.to_json()


def qwen_image() -> dict:
    w = Workflow()
    w.note((0, -330), (760, 150),
           "OTCache on Qwen-Image with a target speedup: budget_as 'speedup' 2.5 computes 12 of the 30 steps "
           "(any step count keeps the 2.5x).\nAdjust: the model file names in the loaders; 'speedup' in OTCache "
           "Schedule (or budget_as 'computed steps' and 'budget'). cfg 2.5 runs cond and uncond: both reuse the "
           "same steps.",
           "What to adjust")
    unet = unet_loader(w, (0, 0), "qwen_image_fp8_e4m3fn.safetensors")
    shift = w.node("ModelSamplingAuraFlow", (0, 130), (340, 58), [3.1], inputs=[("model", "MODEL")],
                   outputs=[("MODEL", "MODEL")])
    clip = clip_loader(w, (0, 300), "qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_image")
    positive = text_encode(w, (380, 300), "a cozy bookshop window on a rainy evening, warm light, a hand-painted "
                           "sign that reads \"OTCache Books\", reflections on the wet street", "Positive prompt")
    negative = text_encode(w, (380, 500), "", "Negative prompt")
    latent = w.node("EmptySD3LatentImage", (0, 720), (340, 106), [1328, 1328, 1], outputs=[("LATENT", "LATENT")])
    vae = vae_loader(w, (0, 880), "qwen_image_vae.safetensors")
    schedule = otcache_schedule(w, (420, -40), "qwen-image", 30, 12, budget_as="speedup", speedup=2.5)
    sampler = ksampler(w, (1200, 0), 42, 30, 2.5, "euler", "simple")
    decode = vae_decode(w, (1560, 0))
    save = save_image(w, (1800, 0), "OTCache/qwen-image")
    w.link(unet, 0, shift, "model")
    w.link(clip, 0, positive, "clip")
    w.link(clip, 0, negative, "clip")
    wire_cached_sampling(w, shift, positive, negative, latent, vae, schedule=schedule, sampler=sampler,
                         decode=decode, save=save, apply_at=(840, 0), previews_at=(900, 720))
    return w.to_json()


def calibrate_flux() -> dict:
    w = Workflow()
    w.note((0, -330), (760, 150),
           "Calibrate OTCache for your own FLUX.1-dev setting once (it saves '<user>/otcache/<name>.json', then "
           "appears in OTCache Schedule's preset list), and sample with the result.\nAdjust: the model file names; "
           "Calibrate's steps/sampler/scheduler/cfg to match the KSampler; 'trials' and 'samples' trade time for "
           "quality; 'budget' in OTCache Schedule. Re-running resumes an interrupted calibration.",
           "What to adjust")
    unet = unet_loader(w, (0, 0), "flux1-dev.safetensors")
    positive, negative = flux_text(w, 0, 300, FLUX_PROMPT)
    latent = w.node("EmptySD3LatentImage", (0, 520), (340, 106), [1024, 1024, 1], outputs=[("LATENT", "LATENT")])
    vae = vae_loader(w, (0, 680), "ae.safetensors")
    calibrate = otcache_node(w, "OTCacheCalibrate", (420, 520), 360, steps=28, cfg=1.0, sampler_name="euler",
                             scheduler="simple", name="flux1-dev-28-euler-simple")
    schedule = otcache_schedule(w, (840, 520), "flux.1-dev", 28, 10)
    sampler = ksampler(w, (1560, 520), 42, 28, 1.0, "euler", "simple")
    decode = vae_decode(w, (1920, 520))
    save = save_image(w, (2160, 520), "OTCache/flux1-dev-calibrated")
    cal_summary = preview_text(w, (840, 820), "Calibration summary")  # its preview image shows on the node
    w.link(unet, 0, calibrate, "model")
    w.link(positive, 0, calibrate, "positive")
    w.link(negative, 0, calibrate, "negative")
    w.link(latent, 0, calibrate, "latent_image")
    w.link(vae, 0, calibrate, "vae")
    w.link(calibrate, 0, schedule, "calibration")
    w.link(calibrate, 2, cal_summary, "source")
    wire_cached_sampling(w, unet, positive, negative, latent, vae, schedule=schedule, sampler=sampler,
                         decode=decode, save=save, apply_at=(1200, 520), previews_at=(1440, 820),
                         grouped_with=(calibrate,))
    return w.to_json()


def hunyuan_video() -> dict:
    w = Workflow()
    w.note((0, -330), (760, 170),
           "OTCache on HunyuanVideo T2V (720p release; the HunyuanVideo this ComfyUI runs). No published schedule "
           "exists for this model (LeMiCa publishes HunyuanVideo-1.5's), so the preset is 'generic'; for a schedule "
           "fitted to your setting run OTCache Calibrate once (see otcache_calibrate_flux.json).\n"
           "Adjust: the model file names in the loaders; 'budget' in OTCache Schedule (12 of 30 steps here); "
           "FluxGuidance is HunyuanVideo's embedded guidance (cfg stays 1.0: one model call per step).",
           "What to adjust")
    unet = unet_loader(w, (0, 0), "hunyuan_video_t2v_720p_bf16.safetensors")
    shift = w.node("ModelSamplingSD3", (0, 130), (340, 58), [7.0], inputs=[("model", "MODEL")],
                   outputs=[("MODEL", "MODEL")])
    clip = w.node("DualCLIPLoader", (0, 300), (340, 130),
                  ["clip_l.safetensors", "llava_llama3_fp8_scaled.safetensors", "hunyuan_video", "default"],
                  outputs=[("CLIP", "CLIP")])
    encode = text_encode(w, (380, 300), "a paper boat drifting down a rain-filled street gutter, reflections of neon "
                         "signs, slow dolly shot, shallow depth of field", "Prompt")
    guidance = w.node("FluxGuidance", (840, 300), (300, 58), [6.0], inputs=[("conditioning", "CONDITIONING")],
                      outputs=[("CONDITIONING", "CONDITIONING")])
    zero = w.node("ConditioningZeroOut", (840, 410), (300, 26), [], inputs=[("conditioning", "CONDITIONING")],
                  outputs=[("CONDITIONING", "CONDITIONING")], title="Negative (unused at cfg 1.0)")
    latent = w.node("EmptyHunyuanLatentVideo", (0, 520), (340, 130), [848, 480, 73, 1], outputs=[("LATENT", "LATENT")])
    vae = vae_loader(w, (0, 700), "hunyuan_video_vae_bf16.safetensors")
    schedule = otcache_schedule(w, (420, -40), "generic", 30, 12)
    sampler = ksampler(w, (1200, 0), 42, 30, 1.0, "euler", "simple")
    # VAEDecodeTiled: tile_size, overlap, temporal_size, temporal_overlap (a 73-frame 720p decode needs tiles)
    decode = w.node("VAEDecodeTiled", (1560, 0), (270, 150), [256, 64, 64, 8], inputs=[("samples", "LATENT"), ("vae", "VAE")],
                    outputs=[("IMAGE", "IMAGE")])
    save = animated_webp(w, (1880, 0), "OTCache/hunyuan-video", 24.0)
    w.link(unet, 0, shift, "model")
    w.link(clip, 0, encode, "clip")
    w.link(encode, 0, guidance, "conditioning")
    w.link(encode, 0, zero, "conditioning")
    wire_cached_sampling(w, shift, guidance, zero, latent, vae, schedule=schedule, sampler=sampler,
                         decode=decode, save=save, apply_at=(840, 0), previews_at=(900, 720))
    return w.to_json()


def wan22_t2v() -> dict:
    w = Workflow()
    w.note((0, -380), (900, 190),
           "OTCache on Wan 2.2 T2V A14B: the high-noise model samples steps 0-10 of 20 and the low-noise model "
           "steps 10-20, in two KSamplerAdvanced. Each model has its own OTCache Apply and Schedule: every sampling "
           "run is scheduled on its own 10 steps (here 6 of 10 computed on the high-noise run, where the layout "
           "forms, and 4 of 10 on the low-noise run).\nNo published schedule exists for Wan 2.2; the presets are "
           "Wan 2.1 14B's (same architecture); calibrate each model for fitted ones.\nAdjust: the model file "
           "names; the budgets; the split step (end_at_step of the first sampler = start_at_step of the second).",
           "What to adjust")
    clip = clip_loader(w, (0, 300), "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan")
    positive = text_encode(w, (380, 300), "a hummingbird hovering at a red hibiscus flower, wings blurred, morning "
                           "dew, macro shot, slow motion", "Positive prompt")
    negative = text_encode(w, (380, 500), "blurry, low quality, static, overexposed, distorted, deformed, watermark, "
                           "subtitles, jpeg artifacts", "Negative prompt")
    latent = w.node("EmptyHunyuanLatentVideo", (0, 720), (340, 130), [640, 640, 81, 1], outputs=[("LATENT", "LATENT")])
    vae = vae_loader(w, (0, 900), "wan_2.1_vae.safetensors")
    w.link(clip, 0, positive, "clip")
    w.link(clip, 0, negative, "clip")
    samplers = []
    for row, (noise, budget, start, end, add_noise, leftover) in enumerate(
            (("high", 6, 0, 10, "enable", "enable"), ("low", 4, 10, 10000, "disable", "disable"))):
        x0, y = 900, -40 + row * 1100
        unet = unet_loader(w, (x0, y + 40), f"wan2.2_t2v_{noise}_noise_14B_fp8_scaled.safetensors")
        shift = w.node("ModelSamplingSD3", (x0, y + 170), (340, 58), [8.0], inputs=[("model", "MODEL")],
                       outputs=[("MODEL", "MODEL")])
        schedule = otcache_schedule(w, (x0 + 380, y), "wan2.1-t2v-14b", 10, budget)
        apply_ = otcache_apply(w, (x0 + 760, y + 40))
        # KSamplerAdvanced: add_noise, noise_seed, <control_after_generate>, steps, cfg, sampler_name, scheduler,
        # start_at_step, end_at_step, return_with_leftover_noise
        sampler = w.node("KSamplerAdvanced", (x0 + 1120, y + 40), (320, 334),
                         [add_noise, 42, "fixed", 20, 3.5, "euler", "simple", start, end, leftover],
                         inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                                 ("latent_image", "LATENT")],
                         outputs=[("LATENT", "LATENT")], title=f"KSamplerAdvanced ({noise} noise, steps {start}-"
                         f"{min(end, 20)})")
        strips = preview_image(w, (x0 + 380, y + 330), f"OTCache schedule preview ({noise} noise)", size=(560, 260))
        summary = preview_text(w, (x0 + 960, y + 420), f"OTCache schedule summary ({noise} noise)")
        w.link(unet, 0, shift, "model")
        w.link(shift, 0, apply_, "model")
        w.link(schedule, 0, apply_, "schedule")
        w.link(schedule, 1, strips, "images")
        w.link(schedule, 2, summary, "source")
        w.link(apply_, 0, sampler, "model")
        w.link(positive, 0, sampler, "positive")
        w.link(negative, 0, sampler, "negative")
        w.link(samplers[-1] if samplers else latent, 0, sampler, "latent_image")
        w.group(f"OTCache ({noise} noise)", [schedule, apply_])
        samplers.append(sampler)
    decode = vae_decode(w, (2600, 1100))
    save = animated_webp(w, (2600, 1200), "OTCache/wan22-t2v", 16.0)
    w.link(samplers[-1], 0, decode, "samples")
    w.link(vae, 0, decode, "vae")
    w.link(decode, 0, save, "images")
    return w.to_json()


def flux1_dev_controlnet() -> dict:
    w = Workflow()
    w.note((0, -330), (860, 170),
           "OTCache on FLUX.1-dev with a ControlNet (canny edges of the input image): 28 steps, 10 computed. At "
           "the steps OTCache reuses, the ControlNet's outputs only feed blocks that do not run.\n"
           "Adjust: the model file names (the ControlNet file is XLabs' FLUX canny ControlNet v3; no ComfyUI "
           "template names a FLUX ControlNet; any FLUX ControlNet loads here, an InstantX/Union one also needs the "
           "VAE connected to Apply ControlNet); the image; strength and end_percent of Apply ControlNet; "
           "'budget' in OTCache Schedule.",
           "What to adjust")
    unet = unet_loader(w, (0, 0), "flux1-dev.safetensors")
    positive, negative = flux_text(w, 0, 300, "a lighthouse on a rocky coast at sunset, dramatic clouds, crashing "
                                   "waves, oil painting")
    # LoadImage: image, <upload>; ComfyUI's input folder ships example.png
    image = w.node("LoadImage", (0, 520), (340, 320), ["example.png", "image"],
                   outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")])
    canny = w.node("Canny", (380, 520), (300, 82), [0.2, 0.5], inputs=[("image", "IMAGE")], outputs=[("IMAGE", "IMAGE")])
    control = w.node("ControlNetLoader", (380, 660), (340, 58), ["flux-canny-controlnet-v3.safetensors"],
                     outputs=[("CONTROL_NET", "CONTROL_NET")])
    # ControlNetApplyAdvanced: strength, start_percent, end_percent (vae is an optional socket)
    apply_control = w.node("ControlNetApplyAdvanced", (1180, 300), (320, 186), [0.7, 0.0, 0.8],
                           inputs=[("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                                   ("control_net", "CONTROL_NET"), ("image", "IMAGE"), ("vae", "VAE")],
                           outputs=[("positive", "CONDITIONING"), ("negative", "CONDITIONING")])
    latent = w.node("EmptySD3LatentImage", (0, 880), (340, 106), [1024, 1024, 1], outputs=[("LATENT", "LATENT")])
    vae = vae_loader(w, (0, 1040), "ae.safetensors")
    edges = preview_image(w, (760, 520), "Canny edges", size=(360, 360))
    schedule = otcache_schedule(w, (420, -40), "flux.1-dev", 28, 10)
    sampler = ksampler(w, (1560, 0), 42, 28, 1.0, "euler", "simple")
    decode = vae_decode(w, (1920, 0))
    save = save_image(w, (2160, 0), "OTCache/flux1-dev-controlnet")
    w.link(image, 0, canny, "image")
    w.link(canny, 0, edges, "images")
    w.link(positive, 0, apply_control, "positive")
    w.link(negative, 0, apply_control, "negative")
    w.link(control, 0, apply_control, "control_net")
    w.link(canny, 0, apply_control, "image")
    wire_cached_sampling(w, unet, apply_control, apply_control, latent, vae, schedule=schedule, sampler=sampler,
                         decode=decode, save=save, apply_at=(840, 0), previews_at=(1180, 560), negative_slot=1)
    return w.to_json()


WORKFLOWS = {
    "otcache_flux1_dev.json": flux1_dev,
    "otcache_flux1_dev_controlnet.json": flux1_dev_controlnet,
    "otcache_wan21_t2v.json": wan21_t2v,
    "otcache_wan22_t2v_14b.json": wan22_t2v,
    "otcache_hunyuan_video.json": hunyuan_video,
    "otcache_qwen_image.json": qwen_image,
    "otcache_calibrate_flux.json": calibrate_flux,
}


def render(build) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale, failed = [], []
    for name, build in WORKFLOWS.items():
        path = HERE / name
        try:
            text = render(build)
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
