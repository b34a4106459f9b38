"""The client's workflow reading and preflight, against the node list of a real ComfyUI 0.3.64 server
(tests/fixtures/object_info_0.3.64.json: its GET /object_info, every class name and the entries of the
classes used here)."""

import json
import os
import random

import pytest
from workflows import seed_workflow

from comfy_nodes.client.preflight import describe, looks_like_diffusion_model, preflight
from comfy_nodes.client.workflow import WorkflowError, api_prompt, load_workflow, with_fresh_seeds

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "object_info_0.3.64.json")


@pytest.fixture(scope="module")
def object_info():
    with open(FIXTURE) as f:
        data = json.load(f)
    # every class the server lists; the entries the tests use in full
    return {name: data["object_info"].get(name, {"input": {}}) for name in data["class_names"]}


def test_the_seed_workflow_gets_all_three_problems(object_info):
    problems = preflight(seed_workflow(), object_info)
    kinds = [p.kind for p in problems]
    assert sorted(kinds) == ["missing-model", "unknown-node", "wrong-loader"]
    unknown = next(p for p in problems if p.kind == "unknown-node")
    assert unknown.class_type == "QwenT2IWrapper" and unknown.suggestions  # the most alike classes it has
    assert all(s in object_info for s in unknown.suggestions)
    missing = next(p for p in problems if p.kind == "missing-model")
    assert missing.input == "ckpt_name" and "models/checkpoints/" in missing.message
    assert set(missing.suggestions) <= {"tiny_sd15.safetensors", "sd_xl_base_1.0.safetensors"} and missing.suggestions
    wrong = next(p for p in problems if p.kind == "wrong-loader")
    assert "CLIPTextEncode #2" in wrong.message and "VAEDecode #4" in wrong.message
    assert wrong.suggestions[0] == "UNETLoader" and "judged by the file's name" in wrong.message
    text = describe(problems)
    assert text.count("preflight: ") == 3 and "unknown node class" in text


def test_a_sound_workflow_has_no_problems(object_info):
    prompt = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
              "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["4", 1]}},
              "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 2, "cfg": 2.0, "sampler_name": "euler",
                                                         "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                         "positive": ["6", 0], "negative": ["6", 0],
                                                         "latent_image": ["5", 0]}},
              "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}}}
    assert preflight(prompt, object_info) == []


def test_the_server_s_anatomy_of_a_file_decides_over_its_name(object_info):
    """With StageTrace on the server, its anatomy route says what the file holds: a complete checkpoint under
    a diffusers-like name is fine, and a diffusion-only file under a plain name is caught."""
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
              "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}}}
    asked = []

    def unet_only(folder, name):
        asked.append((folder, name))
        return {"family": "sd1", "family_label": "SD1.x", "advice": [
                    {"node": "UNETLoader", "inputs": {"unet_name": name}, "why": ""},
                    {"node": "CLIPLoader", "inputs": {"clip_name": "clip_l.safetensors", "type": "stable_diffusion"},
                     "why": ""}],
                "components": [{"kind": "diffusion_model", "label": "SD1.x UNet", "prefix": "", "tensors": 686,
                                "bytes": 3_400_000_000}]}

    (wrong,) = preflight(prompt, object_info, anatomy_of=unet_only)
    assert asked == [("checkpoints", "tiny_sd15.safetensors")]
    assert wrong.kind == "wrong-loader" and "686 tensors, 3.4 GB" in wrong.message
    assert "judged by the file's name" not in wrong.message


def test_ui_format_is_refused_with_how_to_export(tmp_path):
    ui = {"last_node_id": 9, "nodes": [{"id": 4, "type": "CheckpointLoaderSimple"}], "links": [], "version": 0.4}
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(ui))
    with pytest.raises(WorkflowError, match="UI format.*Export \\(API\\)"):
        load_workflow(str(path))


def test_workflow_files_bare_wrapped_and_broken(tmp_path):
    prompt = seed_workflow()
    for name, value in (("bare.json", prompt), ("wrapped.json", {"prompt": prompt, "client_id": "x"})):
        (tmp_path / name).write_text(json.dumps(value))
        assert load_workflow(str(tmp_path / name)) == prompt
    (tmp_path / "bad.json").write_text('{"1": {"class_type": "X", "inputs": {}},\n "2": oops}')
    with pytest.raises(WorkflowError, match=r"bad.json: byte offset 47: invalid JSON"):
        load_workflow(str(tmp_path / "bad.json"))
    with pytest.raises(WorkflowError, match=r"field '2.class_type'"):
        api_prompt({"1": {"class_type": "X"}, "2": {"inputs": {}}}, "w.json")
    (tmp_path / "latin1.json").write_bytes(b'{"1": "caf\xe9"}')
    with pytest.raises(WorkflowError, match="byte offset 10: not UTF-8"):
        load_workflow(str(tmp_path / "latin1.json"))
    with pytest.raises(WorkflowError, match="cannot read"):
        load_workflow(str(tmp_path / "absent.json"))


def test_fresh_seeds_change_every_seed_and_nothing_else():
    prompt = {"3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 2, "model": ["4", 0]}},
              "9": {"class_type": "SamplerCustom", "inputs": {"noise_seed": 5, "add_noise": True}},
              "7": {"class_type": "KSampler", "inputs": {"seed": ["12", 0]}}}
    fresh, changed = with_fresh_seeds(prompt, random.Random(1))
    assert changed == 2 and fresh["3"]["inputs"]["seed"] != 1 and fresh["9"]["inputs"]["noise_seed"] != 5
    assert fresh["7"]["inputs"]["seed"] == ["12", 0] and fresh["9"]["inputs"]["add_noise"] is True
    assert prompt["3"]["inputs"]["seed"] == 1  # the original is untouched
    again, _ = with_fresh_seeds(prompt, random.Random(2))
    assert again["3"]["inputs"]["seed"] != fresh["3"]["inputs"]["seed"]


def test_diffusers_names_are_recognised():
    assert looks_like_diffusion_model("Qwen-Image-Edit-2509-FP8/diffusion_pytorch_model.safetensors")
    assert looks_like_diffusion_model("flux/transformer/model-00001.safetensors")
    assert not looks_like_diffusion_model("sd_xl_base_1.0.safetensors")
