"""Preflight: what would make a workflow fail on a server, found before any run, from the server's own
``/object_info`` (and StageTrace's anatomy route when the server has StageTrace).

Three problems, each with what to use instead:
- a node class the server does not have, with the installed classes that look most like it;
- a model file the server does not have, with the files it does have in that folder;
- a model file the loader node cannot use as the workflow needs (a diffusion-model-only file in
  CheckpointLoaderSimple feeding CLIPTextEncode), with the loaders to use instead. When the server has
  StageTrace, its anatomy route says what the file holds; otherwise a file named as diffusers names a
  diffusion model's weights (``diffusion_pytorch_model*.safetensors``, ``transformer/``, ``unet/``) is
  taken for one, and the problem says it was judged by the name.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..analysis.loaders import LOADER_OUTPUTS, describe_gap, fitting_advice, loader_gap

# The model folder each loader input reads from (ComfyUI's folder_paths names).
MODEL_INPUTS = {
    "ckpt_name": "checkpoints", "unet_name": "diffusion_models", "clip_name": "text_encoders",
    "clip_name1": "text_encoders", "clip_name2": "text_encoders", "clip_name3": "text_encoders",
    "clip_name4": "text_encoders", "vae_name": "vae", "lora_name": "loras", "control_net_name": "controlnet",
    "model_name": "upscale_models", "style_model_name": "style_models", "clip_vision_name": "clip_vision",
}
MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")
DIFFUSERS_MODEL_NAMES = ("diffusion_pytorch_model",)
DIFFUSERS_MODEL_FOLDERS = ("transformer", "unet")


@dataclass
class Problem:
    kind: str  # "unknown-node", "missing-model", "wrong-loader"
    node_id: str
    class_type: str
    message: str
    input: str | None = None
    suggestions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def combo_options(spec: object) -> list[str] | None:
    """The choices of a combo input as /object_info gives it: [[choices...], {...}] or ["COMBO", {"options"}]."""
    if isinstance(spec, list) and spec:
        if isinstance(spec[0], list):
            return [str(x) for x in spec[0]]
        if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
            return [str(x) for x in spec[1].get("options") or []]
    return None


def input_spec(info: dict, name: str) -> object:
    inputs = info.get("input") or {}
    for group in ("required", "optional"):
        spec = (inputs.get(group) or {}).get(name)
        if spec is not None:
            return spec
    return None


def looks_like_diffusion_model(name: str) -> bool:
    """A file named as diffusers names a diffusion model's weights (a transformer or UNet alone)."""
    parts = name.replace("\\", "/").lower().split("/")
    return parts[-1].startswith(DIFFUSERS_MODEL_NAMES) or any(p in DIFFUSERS_MODEL_FOLDERS for p in parts[:-1])


def preflight(prompt: dict, object_info: dict, anatomy_of: Callable[[str, str], dict | None] | None = None
              ) -> list[Problem]:
    """The problems of an API-format prompt on a server whose /object_info is given. ``anatomy_of(folder,
    name)``: the file's facts from StageTrace's anatomy route (analysis.loaders.file_facts), or None."""
    problems: list[Problem] = []
    classes = sorted(object_info)
    for node_id, node in prompt.items():
        cls = node["class_type"]
        info = object_info.get(cls)
        if info is None:
            like = difflib.get_close_matches(cls, classes, n=3, cutoff=0.4)
            problems.append(Problem("unknown-node", str(node_id), cls,
                                    f"{cls} #{node_id}: the server has no node class {cls}"
                                    + (f"; the most alike it has: {', '.join(like)}" if like else ""),
                                    suggestions=like))
            continue
        for name, value in (node.get("inputs") or {}).items():
            if not isinstance(value, str):
                continue
            options = combo_options(input_spec(info, name))
            folder = MODEL_INPUTS.get(name)
            is_file = folder is not None or value.lower().endswith(MODEL_SUFFIXES)
            if options is None or not is_file:
                continue
            if value not in options:
                files = [o for o in options if o.lower().endswith(MODEL_SUFFIXES)] or options
                like = difflib.get_close_matches(value, files, n=5, cutoff=0.3) or files[:5]
                where = f"{folder}/" if folder else ""
                problems.append(Problem("missing-model", str(node_id), cls,
                                        f"{cls} #{node_id}: {name}={value!r} is not in the server's models/{where}"
                                        + (f"; it has: {', '.join(like)}" if like else " (which is empty)"),
                                        input=name, suggestions=like))
            problems += _loader_problems(prompt, str(node_id), cls, name, value, folder, value in options, anatomy_of)
    return problems


def _loader_problems(prompt, node_id, cls, name, value, folder, present, anatomy_of) -> list[Problem]:
    if cls not in LOADER_OUTPUTS or name != "ckpt_name":
        return []
    facts = anatomy_of(folder, value) if present and anatomy_of is not None else None
    by_name = facts is None and looks_like_diffusion_model(value)
    if by_name:  # judged by the name: a diffusion model alone, family unknown
        facts = {"family": "unknown", "family_label": "a diffusion model (by its file name)",
                 "components": [{"kind": "diffusion_model", "label": "diffusion model", "prefix": "", "tensors": 0,
                                 "bytes": 0}],
                 "advice": [{"node": "UNETLoader", "inputs": {"unet_name": os.path.basename(value),
                                                               "weight_dtype": "default"}, "why": "by its name"},
                            {"node": "CLIPLoader", "inputs": {"clip_name": "<the family's text encoder>"},
                             "why": "by its name"},
                            {"node": "VAELoader", "inputs": {"vae_name": "<the family's VAE>"}, "why": "by its name"}]}
    if facts is None:
        return []
    gap = loader_gap(prompt, node_id, value, facts)
    if gap is None:
        return []
    message = describe_gap(gap)
    if by_name:
        message += " (judged by the file's name: the server does not have the file to look into)"
    return [Problem("wrong-loader", node_id, cls, message, input=name,
                    suggestions=[s.get("node") for s in fitting_advice(gap)])]


def describe(problems: list[Problem]) -> str:
    """The problems as the console prints them, one paragraph each."""
    titles = {"unknown-node": "unknown node class", "missing-model": "model file not on the server",
              "wrong-loader": "loader cannot give what the workflow needs"}
    return "\n".join(f"preflight: {titles.get(p.kind, p.kind)}: {p.message}" for p in problems)
