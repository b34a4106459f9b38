"""Workflows as a client sends them: ComfyUI's API format, read from a file, with fresh seeds per request.

ComfyUI's editor saves two formats. The API format ("Export (API)") is what POST /prompt takes: an
object of node id -> {"class_type", "inputs"}, bare or wrapped as {"prompt": {...}}. The UI format (the
editor's "Save") holds "nodes" and "links" for drawing; ComfyUI cannot run it as it is, and reading it
gets an error that says how to export the API format.
"""

from __future__ import annotations

import copy
import random

from ..core.jsonfile import read_json

SEED_INPUTS = ("seed", "noise_seed")
MAX_SEED = 2**53 - 1  # the largest seed ComfyUI's widgets hand out (JSON-safe)


class WorkflowError(ValueError):
    """A workflow file that cannot be sent; the message names the file and the field."""


def load_workflow(path: str) -> dict:
    """The API-format prompt in the JSON file at path. WorkflowError, naming the file and the byte offset or
    field, for anything else."""
    value = read_json(path, WorkflowError)
    return api_prompt(value, path)


def api_prompt(value: object, source: str = "workflow") -> dict:
    """The API-format prompt in a parsed workflow (bare, or wrapped as {"prompt": ...})."""
    if isinstance(value, dict) and isinstance(value.get("nodes"), list) and "links" in value:
        raise WorkflowError(
            f"{source}: this is the editor's UI format (it has 'nodes' and 'links'), which ComfyUI does not run "
            "as it is. In ComfyUI, use Workflow > Export (API) (older versions: enable the dev mode options in "
            "the settings, then 'Save (API Format)') and pass that file")
    if isinstance(value, dict) and isinstance(value.get("prompt"), dict):
        value = value["prompt"]
    if not isinstance(value, dict) or not value:
        raise WorkflowError(f"{source}: not an API-format workflow (an object of node id -> "
                            "{\"class_type\", \"inputs\"})")
    for node_id, node in value.items():
        if not isinstance(node, dict):
            raise WorkflowError(f"{source}: field '{node_id}': not an object")
        if not isinstance(node.get("class_type"), str) or not node["class_type"]:
            raise WorkflowError(f"{source}: field '{node_id}.class_type': missing or not a string")
        if not isinstance(node.get("inputs", {}), dict):
            raise WorkflowError(f"{source}: field '{node_id}.inputs': not an object")
    return value


def with_fresh_seeds(prompt: dict, rng: random.Random) -> tuple[dict, int]:
    """A copy of prompt whose seed inputs (seed, noise_seed) get new values, so ComfyUI's cache does not
    serve the request; and how many were changed. Linked inputs ([node, output]) are left alone."""
    fresh = copy.deepcopy(prompt)
    changed = 0
    for node in fresh.values():
        inputs = node.get("inputs") or {}
        for name in SEED_INPUTS:
            if isinstance(inputs.get(name), int) and not isinstance(inputs.get(name), bool):
                inputs[name] = rng.randint(0, MAX_SEED)
                changed += 1
    return fresh, changed
