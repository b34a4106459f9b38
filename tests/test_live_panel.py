"""What ComfyUI's StageTrace panel is fed, from a real ComfyUI server on loopback (tests/comfy_server.py): the
live "stagetrace.live" WebSocket messages while a prompt runs, sent to the page that queued it, and the
panel's data route once the trace is written."""

import asyncio
import json
import time
import uuid

import aiohttp

from comfy_nodes.demo.harness import tiny_txt2img


async def run_and_listen(server, prompt: dict, client_id: str, timeout: float = 120.0) -> tuple[str, list[dict]]:
    """Submit with client_id, collect every WebSocket message until StageTrace says the prompt is done."""
    messages: list[dict] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{server.url.replace('http', 'ws', 1)}/ws?clientId={client_id}") as ws:
            async with session.post(server.url + "/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
                assert r.status == 200, await r.text()
                prompt_id = (await r.json())["prompt_id"]
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                message = await ws.receive(timeout=deadline - time.monotonic())
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(message.data)
                event["at"] = time.monotonic()
                messages.append(event)
                data = event.get("data") or {}
                if event["type"] == "stagetrace.live" and data.get("state") == "done" and \
                        data.get("prompt_id") == prompt_id:
                    return prompt_id, messages
    raise TimeoutError(f"no 'done' message in {timeout} s; got {[m['type'] for m in messages]}")


def test_live_messages_follow_the_prompt_node_stage_and_step_to_its_page(comfy_server):
    client_id = f"panel-test-{uuid.uuid4().hex[:8]}"
    prompt_id, messages = asyncio.run(run_and_listen(comfy_server, tiny_txt2img("tiny_sd15.safetensors", seed=901,
                                                                                steps=12), client_id))
    live = [m["data"] for m in messages if m["type"] == "stagetrace.live"]
    running = [m for m in live if m["state"] == "running"]
    assert running and all(m["prompt_id"] == prompt_id for m in live)
    assert {"3", "8"} <= {m["node_id"] for m in running}  # sampler, decoder (the loader may be served from cache)
    steps = [m["step"] for m in running if m["step"]]
    assert steps[0] == 1 and steps[-1] == 12 and steps == sorted(steps)  # it moves, in order, first and last
    assert [m["steps"] for m in running if m["step"]][-1] == 12
    assert any(m["rate"] and m["rate"] > 0 for m in running if m["step"] and m["step"] > 1)
    assert any(m["stage"] == "vae_decode" for m in running)
    assert live[-1]["state"] == "done" and live[-1]["outcome"] == "ok"
    # the page's own messages still come, and StageTrace's are few (at most ~10 a second while sampling)
    assert any(m["type"] == "execution_success" for m in messages)
    span = max(m["at"] for m in messages) - min(m["at"] for m in messages)
    assert len(running) <= 10 * span + 20
    # "done" means the panel can answer now
    status, panel = comfy_server.get_json(f"/stagetrace/prompts/{prompt_id}/panel")
    assert status == 200 and panel["prompt_id"] == prompt_id


def test_a_page_that_did_not_queue_the_prompt_hears_nothing_of_it(comfy_server):
    async def listen_while_other_runs():
        other = f"bystander-{uuid.uuid4().hex[:8]}"
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{comfy_server.url.replace('http', 'ws', 1)}/ws?clientId={other}") as ws:
                prompt_id, _ = await run_and_listen(comfy_server, tiny_txt2img("tiny_sd15.safetensors", seed=902,
                                                                                steps=3), f"owner-{other}")
                seen = []
                while True:
                    try:
                        message = await ws.receive(timeout=0.5)
                    except asyncio.TimeoutError:
                        return prompt_id, seen
                    if message.type == aiohttp.WSMsgType.TEXT:
                        seen.append(json.loads(message.data)["type"])

    _, seen = asyncio.run(listen_while_other_runs())
    assert "stagetrace.live" not in seen


def test_the_panel_route_gives_stages_nodes_findings_steps_and_a_bounded_timeline(comfy_server):
    prompt_id = comfy_server.run_prompt(tiny_txt2img("tiny_sd15.safetensors", seed=903, steps=5))
    comfy_server.wait_trace(prompt_id)
    started = time.perf_counter()
    status, panel = comfy_server.get_json(f"/stagetrace/prompts/{prompt_id}/panel")
    assert status == 200, panel
    assert sum(s["share"] for s in panel["stages"]) == __import__("pytest").approx(1.0, abs=1e-6)
    assert {s["stage"] for s in panel["stages"]} >= {"sample.step", "vae_decode"}
    assert panel["stages_inclusive"]["sample"] >= panel["stages_inclusive"]["sample.step"]
    nodes = {n["node_id"]: n for n in panel["nodes"]}
    assert nodes["3"]["class_type"] == "KSampler" and nodes["3"]["stages"]["sample"] > 0
    assert nodes["8"]["stages"]["vae_decode"] > 0
    assert "4" in nodes or {"node_id": "4", "class_type": "CheckpointLoaderSimple"} in panel["cached"]
    assert [s["step"] for s in panel["steps"]] == [1, 2, 3, 4, 5] and all(s["ms"] > 0 for s in panel["steps"])
    lanes = {s["lane"] for s in panel["timeline"]["spans"]}
    assert {"node", "sample", "sample.step", "vae_decode"} <= lanes and not panel["timeline"]["truncated"]
    assert all(0 <= s["t_ms"] <= panel["timeline"]["wall_ms"] + 1 for s in panel["timeline"]["spans"])
    step_spans = [s for s in panel["timeline"]["spans"] if s["lane"] == "sample.step"]
    assert step_spans[0]["label"] == "step 1/5" and all(s["node_id"] == "3" for s in step_spans)
    cpu = next(f for f in panel["findings"] if f["rule"] == "cpu-sampling")
    assert cpu["node_ids"] == ["3"] and cpu["fix"]  # the mark goes on the sampler
    assert panel["links"]["trace"] == f"/stagetrace/prompts/{prompt_id}/trace"
    assert comfy_server.get(panel["links"]["report"])[0] == 200
    print(f"panel data: {len(json.dumps(panel)) / 1024:.1f} KB in {(time.perf_counter() - started) * 1e3:.1f} ms")
