"""`stagetrace load` against the real ComfyUI server on loopback (tests/comfy_server.py): closed and open
arrivals, percentiles, error classes, thresholds; and its parsers."""

import asyncio

import pytest

from comfy_nodes.client.load import check_thresholds, load, parse_slo, parse_threshold, percentile, table
from comfy_nodes.client.server import AUTH_EXIT, Credentials
from comfy_nodes.demo.harness import tiny_txt2img


def tiny(steps=2):
    return tiny_txt2img("tiny_sd15.safetensors", seed=1, steps=steps)


def run_load(server, prompt, **kw):
    return asyncio.run(load([server.url], prompt, kw.pop("credentials", Credentials()), seed=7, **kw))


def test_three_users_three_requests_queue_behind_each_other(comfy_server):
    code, out = run_load(comfy_server, tiny(), users=3, requests=3, timeout=300, slo=("e2e_s", 600.0))
    assert code == 0 and out["requests"] == 9 and out["ok"] == 9 and out["errors"] == {}
    detail = out["requests_detail"]
    assert len({r["prompt_id"] for r in detail}) == 9  # fresh seeds: nothing served from cache as one prompt
    # one worker, three users: while one prompt runs the other two wait, so waits are real, and the mean
    # wait of the later requests is above that of the first one's
    first, later = detail[0]["queue_wait_s"], [r["queue_wait_s"] for r in detail[3:]]
    assert sum(later) / len(later) > first and max(later) > 0.05
    assert out["e2e_s"]["p50"] <= out["e2e_s"]["p95"] <= out["e2e_s"]["max"]
    assert out["images_per_minute"] > 0 and out["slo"]["met"] == 9
    assert out["stages_s"]["sample"]["p50"] > 0  # the stage split from StageTrace's route
    assert out["queue_depth"][comfy_server.url]


SLEEP = {"1": {"class_type": "HarnessSleep", "inputs": {"seconds": 0.25, "seed": 0}}}  # 4 prompts a second at most


def test_an_open_model_faster_than_the_server_grows_its_queue(comfy_server):
    """Arrivals at 20 a second against a server that completes 4 a second, whatever the machine's speed."""
    code, out = run_load(comfy_server, SLEEP, rate=1200, duration=1.5, timeout=120)
    assert code == 0 and out["requests"] == 30 and out["ok"] == 30
    waits = [r["queue_wait_s"] for r in out["requests_detail"]]
    assert waits[-1] > waits[0] + 4.0  # arrivals did not wait: the last one queued behind the rest (~6 s)
    depth = [d for _, d in out["queue_depth"][comfy_server.url]]
    assert max(depth) >= 10 and depth.index(max(depth)) > 0  # the queue grew while the arrivals came
    assert f"server queue: peak {max(depth)} prompts at" in table(out)


def test_execution_errors_are_counted_with_their_node(comfy_server):
    prompt = tiny()
    prompt["6"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}}  # no CLIP
    code, out = run_load(comfy_server, prompt, users=1, requests=2, timeout=120)
    assert code == 0 and out["ok"] == 0 and out["errors"] == {"execution error": 2}
    assert "CLIPTextEncode #6" in out["requests_detail"][0]["error"]
    assert check_thresholds(out, [parse_threshold("p95(e2e)<120s")])  # no success: the threshold is missed


def test_authentication_stops_the_run_with_its_exit_code(comfy_server):
    with comfy_server.auth("login"):
        code, out = run_load(comfy_server, tiny(), users=2, requests=2, timeout=60)
        assert code == AUTH_EXIT and "authentication required" in out["message"]
        code, out = run_load(comfy_server, tiny(), users=1, requests=1, timeout=120,
                             credentials=Credentials(token=comfy_server.login_token))
        assert code == 0 and out["ok"] == 1


def test_thresholds_slo_and_percentiles_parse_and_compute():
    assert parse_threshold("p95(e2e)<120s") == ("p95", "e2e_s", "<", 120.0)
    assert parse_threshold("max(queue) <= 500ms") == ("max", "queue_wait_s", "<=", 0.5)
    with pytest.raises(ValueError, match="--threshold"):
        parse_threshold("p95(latency)<1s")
    assert parse_slo("e2e=120s") == ("e2e_s", 120.0) and parse_slo("execution=750ms") == ("execution_s", 0.75)
    with pytest.raises(ValueError, match="--slo"):
        parse_slo("e2e<120")
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([5], 95) == 5 and percentile([], 50) is None
    result = {"e2e_s": {"p95": 130.0}}
    assert check_thresholds(result, [parse_threshold("p95(e2e)<120s")])
    assert not check_thresholds(result, [parse_threshold("p95(e2e)<140s")])
