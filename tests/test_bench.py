"""`stagetrace bench` against a real ComfyUI server on loopback (tests/comfy_server.py) with StageTrace
loaded: preflight, runs followed over the WebSocket, the stage split from StageTrace's route, and the
authentication plugins people use (test middlewares installed into the real PromptServer)."""

import asyncio
import json
import os
import subprocess
import sys

import pytest
from comfy_server import BASIC_PASSWORD, BASIC_USER
from workflows import seed_workflow

from comfy_nodes.client.bench import bench
from comfy_nodes.client.server import AUTH_EXIT, Credentials
from comfy_nodes.demo.harness import tiny_txt2img

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bench(server, prompt, runs=3, warmup=1, credentials=None, timeout=300.0):
    return asyncio.run(bench(server.url, prompt, runs, warmup, credentials or Credentials(), timeout, progress=False))


def tiny(seed=1):
    return tiny_txt2img("tiny_sd15.safetensors", seed=seed, steps=2)


def test_three_runs_split_their_execution_time_by_stage(comfy_server):
    code, out = run_bench(comfy_server, tiny(seed=11))
    assert code == 0, out.get("message") or out.get("table")
    runs = out["runs"]
    assert [r["cold"] for r in runs] == [True, False, False, False] and all(r["outcome"] == "ok" for r in runs)
    assert out["stagetrace"] is True and out["preflight"] == []
    for r in runs:
        assert r["queue_wait_s"] >= 0 and r["execution_s"] > 0 and r["e2e_s"] >= r["execution_s"]
    cold = runs[0]
    assert cold["steps"] == 2 and cold["stages_s"] and cold["stages_s"]["sample"] > 0
    # the stage split from inside adds up to the execution time measured from outside: the prompt span is
    # the execution, seen from the server; the WebSocket's start and end messages bracket it. For the warm
    # runs the two agree within the messages' delivery (50 ms + 20 %); after the first prompt ComfyUI's
    # worker runs gc.collect() before the end message goes out, so the cold run is only bracketed.
    for r in runs:
        inside = r["stages_s"]["prompt"]
        assert inside <= r["execution_s"] + 0.05, r
        assert r["cold"] or r["execution_s"] - inside <= 0.05 + 0.2 * r["execution_s"], r
        assert r["stages_s"]["node"] <= inside + 1e-3
    warm = out["summary"]["warm"]
    assert warm["execution_s"]["n"] == 3 and warm["execution_s"]["min"] <= warm["execution_s"]["median"]
    assert "warm execution: mean" in out["table"] and "where the time went" in out["table"]


def test_the_seed_workflow_is_stopped_by_the_preflight_and_never_run(comfy_server):
    before = comfy_server.get_json("/history")
    seed = seed_workflow()
    code, out = run_bench(comfy_server, seed)
    assert code == 2 and out["runs"] == []
    assert sorted(p["kind"] for p in out["preflight"]) == ["missing-model", "unknown-node", "wrong-loader"]
    missing = next(p for p in out["preflight"] if p["kind"] == "missing-model")
    assert "tiny_sd15.safetensors" in missing["suggestions"]  # the file the server does have
    assert comfy_server.get_json("/history") == before  # nothing was submitted


def test_a_diffusion_only_checkpoint_is_caught_by_the_servers_anatomy(comfy_server):
    """The file is on the server: StageTrace's anatomy route says what it holds."""
    from comfy_nodes.demo.tiny_checkpoint import write_tiny_diffusion_model_only

    name = "tiny_unet_only_for_bench.safetensors"
    path = os.path.join(comfy_server.checkpoints, name)
    if not os.path.exists(path):
        write_tiny_diffusion_model_only(path)
    prompt = tiny(seed=12)
    prompt["4"]["inputs"]["ckpt_name"] = name
    prompt["6"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}}
    code, out = run_bench(comfy_server, prompt, runs=1, warmup=0)
    assert code == 2 and out["runs"] == []
    (problem,) = out["preflight"]
    assert problem["kind"] == "wrong-loader" and "judged by the file's name" not in problem["message"]
    assert "CLIPTextEncode #6" in problem["message"] and "VAEDecode #8" in problem["message"]


def test_an_execution_error_is_counted_with_its_node(comfy_server):
    prompt = tiny(seed=13)
    prompt["6"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}}  # no CLIP in it
    code, out = run_bench(comfy_server, prompt, runs=1, warmup=0)
    # the tiny checkpoint has no CLIP: the anatomy route finds the gap before any run
    assert code == 2 and out["preflight"][0]["kind"] == "wrong-loader"
    broken = tiny(seed=14)
    broken["3"]["inputs"]["steps"] = 1
    broken["8"]["inputs"]["vae"] = ["5", 0]  # a LATENT where the VAE goes: ComfyUI rejects it at validation
    code, out = run_bench(comfy_server, broken, runs=1, warmup=0)
    assert code == 1 and out["runs"][0]["outcome"] == "rejected" and "HTTP 400" in out["runs"][0]["error"]


@pytest.mark.parametrize("mode", ["login", "basic"])
def test_authentication_is_told_apart_and_passed(comfy_server, mode):
    with comfy_server.auth(mode):
        code, out = run_bench(comfy_server, tiny(seed=21), runs=1, warmup=0)
        assert code == AUTH_EXIT and out["runs"] == []
        assert out["message"].startswith("authentication required") and "--token" in out["message"]
        if mode == "login":
            assert out["auth"]["status"] == 302 and "/login" in out["auth"]["asked"]
            good = Credentials(token=comfy_server.login_token)
            wrong = Credentials(token="not-the-token")
        else:
            assert out["auth"]["status"] == 401 and "Basic" in out["auth"]["asked"]  # what the server asked for
            good = Credentials(user=BASIC_USER, password=BASIC_PASSWORD)
            wrong = Credentials(user=BASIC_USER, password="wrong")
        code, out = run_bench(comfy_server, tiny(seed=22), runs=1, warmup=0, credentials=wrong)
        assert code == AUTH_EXIT
        code, out = run_bench(comfy_server, tiny(seed=23 if mode == "login" else 24), runs=1, warmup=0,
                              credentials=good)
        assert code == 0 and out["runs"][0]["outcome"] == "ok", out.get("message")


def test_the_command_line_prints_the_table_and_json(comfy_server, tmp_path):
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps({"prompt": tiny(seed=31)}))
    proc = subprocess.run([sys.executable, "-m", "comfy_nodes", "bench", comfy_server.url, str(path), "-n", "1",
                           "--warmup", "0", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["runs"][0]["outcome"] == "ok" and out["summary"]["warm"]["e2e_s"]["n"] == 1
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    proc = subprocess.run([sys.executable, "-m", "comfy_nodes", "bench", comfy_server.url, str(ui)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Export (API)" in proc.stderr
