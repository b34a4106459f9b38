"""What a loader node can give, as data: when a checkpoint loader reads a file that lacks a part its
downstream nodes need (the text encoder, the VAE), the gap is recorded as a structured fact. The
missing-CLIP/VAE finding and its fix are produced from it by a diagnosis rule, and the console warning
before the failure is rendered from the same fact (``describe_gap``)."""

from __future__ import annotations

import os

from ..core.units import format_bytes

# Loader node class -> {output index: (component kind it needs, what to call it)}
LOADER_OUTPUTS: dict[str, dict[int, tuple[str, str]]] = {
    "CheckpointLoaderSimple": {1: ("text_encoder", "text encoder (CLIP)"), 2: ("vae", "VAE")},
    "CheckpointLoader": {1: ("text_encoder", "text encoder (CLIP)"), 2: ("vae", "VAE")},
    "unCLIPCheckpointLoader": {1: ("text_encoder", "text encoder (CLIP)"), 2: ("vae", "VAE")},
}


def consumers_of(prompt: dict, node_id: str, output: int) -> list[dict]:
    """The nodes of the prompt whose inputs take output ``output`` of node ``node_id``."""
    users = []
    for other_id, other in prompt.items():
        inputs = other.get("inputs") if isinstance(other, dict) else None
        for name, value in (inputs or {}).items() if isinstance(inputs, dict) else ():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == node_id and value[1] == output:
                users.append({"node_id": str(other_id), "class_type": str(other.get("class_type", "?")),
                              "input": name})
    return users


def file_facts(anatomy, name: str) -> dict:
    """What a loader check needs of a classified file (an analysis.anatomy.Anatomy), as data: family, the
    parts it holds, and the loaders it needs under its real name. The same shape comes over StageTrace's
    anatomy route, so a client can check a server's file without reading it."""
    return {"family": anatomy.family, "family_label": anatomy.family_label,
            "components": [{"kind": c.kind, "label": c.label, "prefix": c.prefix, "tensors": c.tensors,
                            "bytes": c.bytes} for c in anatomy.components],
            "advice": [step.to_dict() for step in anatomy.loading_advice(name)]}


def facts_from_anatomy_dict(anatomy: dict, name: str) -> dict | None:
    """``file_facts`` from an Anatomy's to_dict() (what StageTrace's anatomy route serves), its advice under
    the file's real name; None for a file the server could not read."""
    if not isinstance(anatomy, dict) or not isinstance(anatomy.get("components"), list):
        return None
    from .anatomy import THIS_FILE

    advice = [dict(step, inputs={k: (name if v == THIS_FILE else v) for k, v in (step.get("inputs") or {}).items()})
              for step in anatomy.get("loading_advice") or [] if isinstance(step, dict)]
    return {"family": anatomy.get("family"), "family_label": anatomy.get("family_label"),
            "components": anatomy["components"], "advice": advice}


def loader_gap(prompt: dict, node_id: str | None, path: str, anatomy) -> dict | None:
    """The gap between what loader node ``node_id`` will give from the file at path and what the prompt's
    nodes take from it, or None when there is none (or the node is not a checkpoint loader). ``anatomy``:
    an Anatomy, or its ``file_facts`` dict.

    The gap: {"loader": class, "node_id", "file", "family", "family_label", "components": [kind, label,
    tensors, bytes of each part the file holds], "missing": [{"kind", "what", "output", "consumers":
    [{node_id, class_type, input}]}], "advice": [{node, inputs, why}] (every loader that file needs), and
    "present_loaders": the loader classes the prompt already has}."""
    node = prompt.get(node_id) if node_id is not None else None
    outputs = LOADER_OUTPUTS.get(node.get("class_type")) if isinstance(node, dict) else None
    if not outputs:
        return None
    name = os.path.basename(path)
    facts = anatomy if isinstance(anatomy, dict) else file_facts(anatomy, name)
    kinds = {c.get("kind") for c in facts.get("components") or () if isinstance(c, dict)}
    missing = []
    for output, (kind, what) in outputs.items():
        if kind in kinds:
            continue
        users = consumers_of(prompt, str(node_id), output)
        if users:
            missing.append({"kind": kind, "what": what, "output": output, "consumers": users})
    if not missing:
        return None
    return {
        "loader": node["class_type"],
        "node_id": str(node_id),
        "file": name,
        "path": path,
        **facts,
        "missing": missing,
        "present_loaders": sorted({str(n.get("class_type")) for n in prompt.values() if isinstance(n, dict)
                                   and str(n.get("class_type", "")).endswith("Loader")}),
    }


# The loader node classes that give each part, and the kind of part each serves.
PART_LOADERS = {"CLIPLoader": "text_encoder", "DualCLIPLoader": "text_encoder", "TripleCLIPLoader": "text_encoder",
                "QuadrupleCLIPLoader": "text_encoder", "VAELoader": "vae"}


def fitting_advice(gap: dict) -> list[dict]:
    """The loader steps this workflow still needs, and only those: a loader for each part that is missing
    and that the workflow does not load already; the diffusion-model loader (UNETLoader) only when the file
    is not a checkpoint (a diffusion model stored without a checkpoint prefix), since a checkpoint loader
    gives a prefixed checkpoint's model fine and only its missing parts need loaders of their own."""
    present = set(gap.get("present_loaders") or ())
    missing_kinds = {m.get("kind") for m in gap.get("missing") or () if isinstance(m, dict)}
    model_in_checkpoint = any(isinstance(c, dict) and c.get("kind") == "diffusion_model" and c.get("prefix")
                              for c in gap.get("components") or ())
    steps = []
    for step in gap.get("advice") or ():
        if not isinstance(step, dict) or not isinstance(step.get("inputs"), dict):
            continue
        node = step.get("node")
        if node == gap.get("loader"):
            continue  # the loader in place already is this step
        if node == "UNETLoader" and model_in_checkpoint:
            continue
        part = PART_LOADERS.get(node)
        if part is not None and (part not in missing_kinds or node in present):
            continue
        steps.append(step)
    return steps


_GAP_FIELDS = {"loader": str, "node_id": str, "file": str, "family_label": str, "missing": list}
_MISSING_FIELDS = {"what": str, "consumers": list}


def gap_problem(gap: object) -> str | None:
    """What is wrong with a loader gap read from a trace file (a field missing or of the wrong type), or
    None when it can be rendered."""
    if not isinstance(gap, dict):
        return f"not an object but {type(gap).__name__}"
    for key, kind in _GAP_FIELDS.items():
        if not isinstance(gap.get(key), kind):
            return f"field '{key}' missing or not a {kind.__name__}"
    for i, m in enumerate(gap["missing"]):
        for key, kind in _MISSING_FIELDS.items():
            if not isinstance(m, dict) or not isinstance(m.get(key), kind):
                return f"field 'missing[{i}].{key}' missing or not a {kind.__name__}"
        if not all(isinstance(c, dict) for c in m["consumers"]):
            return f"field 'missing[{i}].consumers' holds something that is not an object"
    return None


def valid_gaps(other: dict) -> tuple[list[dict], list[str]]:
    """The renderable loader gaps of a trace's otherData, and a line for each one that is not, naming the
    field."""
    gaps, problems = [], []
    raw = other.get("loader_gaps") or []
    for i, gap in enumerate(raw if isinstance(raw, list) else [raw]):
        problem = gap_problem(gap)
        if problem is None:
            gaps.append(gap)
        else:
            problems.append(f"otherData.loader_gaps[{i}]: {problem}")
    return gaps, problems


def describe_gap(gap: dict) -> str:
    """The gap in words: the console warning before the prompt fails, and the finding's evidence."""
    needed = []
    for m in gap["missing"]:
        users = [f"{c.get('class_type', '?')} #{c.get('node_id', '?')}" for c in m["consumers"]]
        needed.append(f"no {m['what']}, which {', '.join(users)} need{'s' if len(users) == 1 else ''}")
    held = ", ".join(f"{c.get('label', '?')} ({c.get('tensors', '?')} tensors, {format_bytes(c.get('bytes'))})"
                     for c in gap.get("components") or () if isinstance(c, dict))
    text = (f"{gap['loader']} #{gap['node_id']} loads {gap['file']} ({gap['family_label']}), which has "
            f"{' and '.join(needed)}: this prompt will fail there. ")
    if held:
        text += f"The file holds: {held}. "
    advice = advice_text(fitting_advice(gap))
    return text + (f"Load it with: {advice}." if advice else "Use a complete checkpoint.")


def advice_text(steps: list[dict]) -> str:
    """Loader steps as 'UNETLoader (unet_name=x, weight_dtype=default); VAELoader (vae_name=y)'."""
    return "; ".join(f"{step.get('node', '?')} ({', '.join(f'{k}={v}' for k, v in (step.get('inputs') or {}).items())})"
                     for step in steps if isinstance(step, dict))
