"""Which workflow a prompt is: a short, stable hash of its graph without what changes from run to run.

``workflow_id(prompt)`` hashes an API-format prompt ({node_id: {"class_type", "inputs"}}): the node ids,
the class types, the links (inputs that are ``[node_id, output_index]``) and every other input value,
EXCEPT the seeds and the prompt texts. So the same workflow run with other seeds and other texts keeps
its identity, while a changed step count, image size, model file or a removed node gives a new one.

What counts as a seed: an input named ``seed`` or ``noise_seed``, or any integer input whose name ends
with "seed". What counts as a prompt text: a string input named like a text box (``text``, ``text_g``,
``prompt``, ``positive``, ``clip_l``, ``t5xxl``, ...), and any string input of a node whose class type
contains "TextEncode" unless the string names a model file (``.safetensors``, ``.ckpt``, ...). Their
values are replaced by a placeholder, so adding or removing such an input still changes the identity.
Node titles (``_meta``) are cosmetic and not hashed.

The graph is written as canonical JSON (sorted keys, no spaces) and hashed with SHA-256; the identity is
the first 16 hex digits. It never raises: parts of odd shape (a node that is not a dict, a node without
a class type) are hashed as they are.
"""

from __future__ import annotations

import hashlib
import json

ID_HEX_DIGITS = 16
SCHEME = "stagetrace-workflow-1"  # hashed in front of the graph: a new scheme gives new identities

SEED_INPUTS = frozenset({"seed", "noise_seed"})
TEXT_INPUTS = frozenset({"text", "text_g", "text_l", "prompt", "positive", "negative", "clip_l", "t5xxl",
                         "system_prompt"})
MODEL_FILE_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")
SEED_PLACEHOLDER = "<seed>"
TEXT_PLACEHOLDER = "<text>"


def is_link(value: object) -> bool:
    """An input wired to another node's output: ``[node_id, output_index]``."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool))


def _is_seed(name: str, value: object) -> bool:
    if name in SEED_INPUTS:
        return True
    return isinstance(value, int) and not isinstance(value, bool) and name.endswith("seed")


def _is_text(name: str, value: object, class_type: object) -> bool:
    if not isinstance(value, str):
        return False
    if name in TEXT_INPUTS:
        return True
    return (isinstance(class_type, str) and "TextEncode" in class_type
            and not value.strip().lower().endswith(MODEL_FILE_SUFFIXES))


def _inputs(inputs: dict, class_type: object) -> dict:
    out = {}
    for name, value in inputs.items():
        key = str(name)
        if is_link(value):
            out[key] = value
        elif _is_seed(key, value):
            out[key] = SEED_PLACEHOLDER
        elif _is_text(key, value, class_type):
            out[key] = TEXT_PLACEHOLDER
        else:
            out[key] = value
    return out


def graph(prompt: object) -> object:
    """The part of a prompt that makes its identity: {node_id: {"class_type", "inputs"}} with seeds and
    texts replaced by placeholders. Anything that is not of that shape is returned as it is."""
    if not isinstance(prompt, dict):
        return prompt
    out = {}
    for node_id, node in prompt.items():
        if not isinstance(node, dict):
            out[str(node_id)] = node
            continue
        class_type = node.get("class_type")
        inputs = node.get("inputs")
        out[str(node_id)] = {"class_type": class_type,
                             "inputs": _inputs(inputs, class_type) if isinstance(inputs, dict) else inputs}
    return out


def _plain(value: object, depth: int = 0) -> object:
    """JSON-ready: dict keys as strings, tuples and sets as lists, anything else as its str()."""
    if depth > 64:
        return "<deep>"
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v, depth + 1) for v in value), key=repr)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def canonical(prompt: object) -> str:
    """The identity's input: the graph as canonical JSON (sorted keys, no spaces). This function can't fail."""
    try:
        return json.dumps(_plain(graph(prompt)), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    except Exception as exc:  # noqa: BLE001 - a prompt of any shape has an identity
        return f"<unhashable {type(prompt).__name__}: {type(exc).__name__}>"


def workflow_id(prompt: object) -> str:
    """The workflow's identity: 16 hex digits. Equal for the same graph run with other seeds and texts.
    This function can't fail."""
    digest = hashlib.sha256((SCHEME + "\n" + canonical(prompt)).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:ID_HEX_DIGITS]
