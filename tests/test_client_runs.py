"""`stagetrace bench` and `stagetrace load` in the situations a real service puts them in, against real ComfyUI
servers started by the tests on loopback: the server's GPU during a bench (StageTrace's NVML sampler, fed by
tests/nvml/fake_nvml.c, a TEST DOUBLE of libnvidia-ml at the hardware boundary; and /system_stats without it),
a fleet of two workers, Ctrl-C in the middle of a bench, a worker killed in the middle of a load run, the
progress bars, and the report files."""

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from comfy_server import FAKE_GPU_USED, FAKE_GPU_UTIL, running_server

from comfy_nodes.client.bench import bench
from comfy_nodes.client.load import load
from comfy_nodes.client.server import Credentials
from comfy_nodes.demo.harness import tiny_txt2img

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sleep_workflow(seconds: float) -> dict:
    """A prompt that takes `seconds` on any machine (the test node HarnessSleep), stopped by ComfyUI's interrupt."""
    return {"1": {"class_type": "HarnessSleep", "inputs": {"seconds": seconds, "seed": 0}}}


@pytest.fixture(scope="module")
def gpu_server(fake_nvml):
    """A second real ComfyUI, whose StageTrace samples a GPU through the fake NVML (87 % busy, 21 GiB used)."""
    with running_server({"STAGETRACE_NVML_LIB": fake_nvml, "STAGETRACE_TEST_FAKE_GPU": "1",
                         "STAGETRACE_NVML_HZ": "20"}) as server:
        yield server


def history_ids(server) -> set[str]:
    status, history = server.get_json("/history")
    assert status == 200
    return set(history)


# --- the GPU during a bench ---------------------------------------------------------------------------------


def test_bench_gives_the_servers_gpu_from_stagetraces_sampler(gpu_server):
    code, out = asyncio.run(bench(gpu_server.url, sleep_workflow(0.6), 2, 1, Credentials(), 120, progress=False))
    assert code == 0, out.get("table")
    gpu = out["gpu"]
    assert gpu["source"] == "stagetrace" and gpu["note"] is None
    samples = gpu["samples"]
    assert len(samples) >= 3 * 0.6 * 20 * 0.5  # 3 runs of 0.6 s at 20 Hz, at least half of them
    assert {s["util_pct"] for s in samples if s["util_pct"] is not None} == {FAKE_GPU_UTIL}
    assert {s["mem_used_bytes"] for s in samples if s["mem_used_bytes"] is not None} == {float(FAKE_GPU_USED)}
    last = out["runs"][-1]
    assert all(-0.5 <= s["t"] <= last["at_s"] + last["e2e_s"] + 0.5 for s in samples)  # within the bench
    assert gpu["summary"]["util_mean_pct"] == FAKE_GPU_UTIL and gpu["summary"]["mem_peak_bytes"] == FAKE_GPU_USED
    assert f"utilisation mean {FAKE_GPU_UTIL} %" in out["table"] and "StageTrace's NVML sampler" in out["table"]


def test_bench_without_gpu_samples_reads_system_stats_and_says_why(comfy_server):
    code, out = asyncio.run(bench(comfy_server.url, sleep_workflow(0.4), 2, 0, Credentials(), 120, progress=False,
                                  gpu_interval=0.1))
    assert code == 0, out.get("table")
    gpu = out["gpu"]
    assert gpu["source"] == "system_stats" and "no GPU samples" in gpu["note"] and "system memory in use" in gpu["note"]
    assert len(gpu["samples"]) >= 4 and all(s["util_pct"] is None for s in gpu["samples"])
    assert all(0 < s["mem_used_bytes"] <= s["mem_total_bytes"] for s in gpu["samples"])  # the CPU's: RAM
    assert "no GPU: the server runs on the CPU; system memory in use peaked at" in out["table"]
    assert "samples from /system_stats" in out["table"]


def test_a_server_without_stagetrace_gives_node_times_from_the_websocket_and_says_so():
    with running_server(stagetrace=False) as plain:
        code, out = asyncio.run(bench(plain.url, tiny_txt2img("tiny_sd15.safetensors", seed=41, steps=2), 2, 1,
                                      Credentials(), 120, progress=False, gpu_interval=0.1))
        assert code == 0 and out["stagetrace"] is False, out.get("table")
        for run in out["runs"]:
            assert run["stages_s"] is None
            assert run["nodes_s"].get("KSampler #3", 0) > 0 and run["nodes_s"].get("VAEDecode #8", 0) > 0
            assert sum(run["nodes_s"].values()) <= run["execution_s"] + 0.05
        assert "the server has no StageTrace: node times come from the WebSocket" in out["table"]
        assert out["gpu"]["source"] == "system_stats" and "no StageTrace" in out["gpu"]["note"]
        code, out = asyncio.run(load([plain.url], sleep_workflow(0.05), Credentials(), users=1, requests=2,
                                     timeout=60, seed=2))
        assert code == 0 and out["ok"] == 2 and out["stages_s"] == {} and out["stagetrace"] == {plain.url: False}
        from comfy_nodes.client.load import table

        assert f"no stage split from {plain.url}: no StageTrace there" in table(out)


# --- a fleet ------------------------------------------------------------------------------------------------


def test_load_spreads_over_two_workers_and_splits_the_figures_per_worker(comfy_server, gpu_server):
    before = {s.url: history_ids(s) for s in (comfy_server, gpu_server)}
    code, out = asyncio.run(load([comfy_server.url, gpu_server.url], sleep_workflow(0.1), Credentials(),
                                 users=2, requests=4, timeout=120, seed=3))
    assert code == 0 and out["requests"] == 8 and out["ok"] == 8
    per = out["per_worker"]
    assert set(per) == {comfy_server.url, gpu_server.url}
    for server in (comfy_server, gpu_server):
        mine = {r["prompt_id"] for r in out["requests_detail"] if r["worker"] == server.url}
        assert per[server.url]["requests"] == len(mine) == 4 and per[server.url]["ok"] == 4
        assert history_ids(server) - before[server.url] == mine  # each ran where the report says it ran
        assert per[server.url]["stages_s"]["prompt"]["p50"] >= 0.09  # its own StageTrace's split
        assert out["queue_depth"][server.url]


# --- Ctrl-C in a bench --------------------------------------------------------------------------------------


def running_prompt(server) -> tuple[str, dict] | None:
    status, queue = server.get_json("/queue")
    for item in queue.get("queue_running") or ():
        return item[1], item[3]
    return None


def test_ctrl_c_in_bench_prints_what_was_measured_and_cancels_only_its_own_prompt(gpu_server, tmp_path):
    workflow = tmp_path / "sleep.json"
    workflow.write_text(json.dumps(sleep_workflow(1.0)))
    report = tmp_path / "bench.html"
    proc = subprocess.Popen([sys.executable, "-m", "comfy_nodes", "bench", gpu_server.url, str(workflow), "-n", "5",
                             "--warmup", "0", "--report", str(report)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        seen, deadline, bench_prompt = set(), time.monotonic() + 60, None
        while time.monotonic() < deadline:  # wait for the second run to be running
            running = running_prompt(gpu_server)
            if running and running[1].get("client_id", "").startswith("stagetrace-bench-"):
                seen.add(running[0])
                if len(seen) == 2:
                    bench_prompt = running[0]
                    break
            time.sleep(0.05)
        assert bench_prompt, proc.stderr.read() if proc.poll() is not None else "the bench's second run never ran"
        # someone else's prompt, queued behind the bench's: Ctrl-C must not touch it
        other = {"prompt": sleep_workflow(0.2), "client_id": "someone-else"}
        other["prompt"]["1"]["inputs"]["seed"] = 4242
        status, _, raw = gpu_server.request("POST", "/prompt", json.dumps(other).encode(),
                                            {"Content-Type": "application/json"})
        assert status == 200
        other_id = json.loads(raw)["prompt_id"]
        interrupted_at = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert f"interrupted: 1 run(s) measured; cancelled on the server: {bench_prompt}" in stdout
    lines = [line.split() for line in stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [(row[0], row[2]) for row in lines[:2]] == [("1", "ok"), ("2", "interrupted")]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, history = gpu_server.get_json(f"/history/{other_id}")
        if history and history.get(other_id, {}).get("status", {}).get("completed"):
            break
        time.sleep(0.05)
    assert history[other_id]["status"]["status_str"] == "success"  # the other client's prompt ran
    status, ours = gpu_server.get_json(f"/history/{bench_prompt}")
    assert ours[bench_prompt]["status"]["status_str"] == "error"  # ComfyUI's status for an interrupted prompt
    assert any(m[0] == "execution_interrupted" for m in ours[bench_prompt]["status"]["messages"])
    assert time.monotonic() - interrupted_at < 30
    page = report.read_text()  # the report of what was measured is written
    assert "<svg" in page and "interrupted" in page


def interrupted_in_history(server, prompt_id: str, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status, history = server.get_json(f"/history/{prompt_id}")
        entry = (history or {}).get(prompt_id)
        if entry:
            return any(m[0] == "execution_interrupted" for m in entry["status"]["messages"])
        time.sleep(0.05)
    return False


def test_a_prompt_past_its_timeout_is_counted_and_stopped_on_the_server(gpu_server):
    """The client gave up: the prompt must not run on (3 s here) and slow down what comes after it."""
    code, out = asyncio.run(load([gpu_server.url], sleep_workflow(3.0), Credentials(), users=1, requests=1,
                                 timeout=0.5, seed=11))
    assert code == 0 and out["errors"] == {"timeout": 1} and out["ok"] == 0
    (request,) = out["requests_detail"]
    assert "no end within 500.0 ms" in request["error"]
    assert interrupted_in_history(gpu_server, request["prompt_id"], within=2.0)
    code, out = asyncio.run(bench(gpu_server.url, sleep_workflow(3.0), 1, 0, Credentials(), 0.5, progress=False))
    (run,) = out["runs"]
    assert code == 1 and run["outcome"] == "timeout"
    assert interrupted_in_history(gpu_server, run["prompt_id"], within=2.0)


# --- a worker killed in the middle of a load run ------------------------------------------------------------


def test_a_worker_killed_mid_run_counts_connection_errors_and_keeps_the_partial_results():
    with running_server() as victim:
        result: dict = {}

        def run():
            result["code"], result["out"] = asyncio.run(load([victim.url], sleep_workflow(0.3), Credentials(),
                                                             users=2, requests=6, timeout=60, seed=5))

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(history_ids(victim)) < 3:
            time.sleep(0.05)
        victim.proc.kill()  # SIGKILL: no goodbye on the WebSocket, connections reset
        victim.proc.wait(10)
        thread.join(120)
        assert not thread.is_alive(), "the load run did not end after its server died"
    code, out = result["code"], result["out"]
    assert code == 0 and out["requests"] == 12
    assert out["ok"] >= 3 and out["errors"].get("connection lost", 0) >= 1
    assert out["ok"] + out["errors"]["connection lost"] == 12  # every request is accounted for, as one or other
    done = [r for r in out["requests_detail"] if r["outcome"] == "ok"]
    assert all(r["e2e_s"] > 0.25 for r in done) and out["e2e_s"]["p50"] > 0.25  # the partial results are kept
    lost = [r for r in out["requests_detail"] if r["outcome"] == "connection lost"]
    assert all(r["error"] for r in lost)
    from comfy_nodes.client.load import table

    assert "connection lost" in table(out)


# --- progress bars ------------------------------------------------------------------------------------------


def test_progress_bars_show_the_run_the_step_and_the_requests(comfy_server):
    bar = io.StringIO()
    code, out = asyncio.run(bench(comfy_server.url, tiny_txt2img("tiny_sd15.safetensors", seed=31, steps=3), 2, 1,
                                  Credentials(), 120, progress=bar))
    assert code == 0
    text = bar.getvalue()
    assert "3/3 [" in text and "run 3" in text and "step 3/3" in text  # runs done, the run and its step
    assert "<" in text  # tqdm's elapsed<remaining: the ETA
    bar = io.StringIO()
    code, out = asyncio.run(load([comfy_server.url], sleep_workflow(0.05), Credentials(), users=2, requests=2,
                                 timeout=60, seed=9, progress=bar))
    assert code == 0 and "4/4" in bar.getvalue() and "4 ok, 0 failed" in bar.getvalue()


# --- the built-in example, served: what the README's bench and load commands run against -------------------


def test_demo_serve_runs_the_built_in_example_for_bench_and_load(tmp_path):
    from comfy_server import find_comfyui, skip_reason

    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    workdir = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "comfy_nodes", "demo", "--serve", "--comfyui", find_comfyui(),
                             "--workdir", str(workdir)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        url = workflow = None
        for line in proc.stdout:  # bounded: the demo gives up after its start timeout and exits
            if line.startswith("serving "):
                url = line.split()[1]
            elif line.startswith("the built-in workflow: "):
                workflow = line.split(": ", 1)[1].strip()
            elif "load " in line and url:
                break
        assert url and url.startswith("http://127.0.0.1:") and workflow, proc.stderr.read()
        report = tmp_path / "bench.html"
        bench_run = subprocess.run([sys.executable, "-m", "comfy_nodes", "bench", url, workflow, "-n", "2",
                                    "--report", str(report), "--report", str(tmp_path / "bench.md")],
                                   cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert bench_run.returncode == 0, bench_run.stdout + bench_run.stderr
        assert "where the time went" in bench_run.stdout and "sample" in bench_run.stdout
        assert report.read_text().count("<svg") >= 2 and "| run |" in (tmp_path / "bench.md").read_text()
        again = subprocess.run([sys.executable, "-m", "comfy_nodes", "bench", url, workflow, "-n", "1",
                                "--report", str(report)], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert again.returncode == 2 and "the file exists" in again.stderr  # nothing overwritten, nothing run
        load_run = subprocess.run([sys.executable, "-m", "comfy_nodes", "load", url, workflow, "--users", "2",
                                   "--requests", "2", "--json"], cwd=ROOT, capture_output=True, text=True,
                                  timeout=300)
        assert load_run.returncode == 0, load_run.stderr
        assert json.loads(load_run.stdout)["ok"] == 4
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "stopping the server" in out, err
        assert (workdir / "models" / "checkpoints" / "tiny_sd15.safetensors").exists()
        assert list((workdir / "output" / "stagetrace").glob("*.trace.json"))  # StageTrace recorded the runs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
