"""StageTrace's /stagetrace/ routes in a real ComfyUI server (tests/comfy_server.py): a prompt submitted
through ComfyUI's own POST /prompt is listed and served (summary, findings, trace, HTML report); ids and
names that try to leave StageTrace's trace folder or ComfyUI's model folders get a 4xx and nothing of a
sentinel file outside ever reaches a response; the test auth middleware guards the routes too."""

import json
import os
import time

import pytest

from comfy_nodes.demo.harness import tiny_txt2img

SENTINEL = "STAGETRACE-SENTINEL-7f3a91"


@pytest.fixture(scope="module")
def ran(comfy_server):
    """One tiny prompt run through the server; (server, prompt id, trace path, sentinel path)."""
    prompt_id = comfy_server.run_prompt(tiny_txt2img("tiny_sd15.safetensors", seed=11, filename_prefix="routes"))
    trace = comfy_server.wait_trace(prompt_id)
    # a sentinel outside every allowed folder, and a symlink to it inside the checkpoints folder
    sentinel = os.path.join(comfy_server.base, "outside.safetensors")
    with open(sentinel, "w") as f:
        f.write(SENTINEL)
    link = os.path.join(comfy_server.checkpoints, "escape.safetensors")
    if not os.path.lexists(link):
        os.symlink(sentinel, link)
    secret = os.path.join(comfy_server.base, "secret.trace.json")
    with open(secret, "w") as f:
        f.write(SENTINEL)
    return comfy_server, prompt_id, trace, sentinel


def test_a_prompt_is_listed_and_served(ran):
    server, prompt_id, trace, _ = ran
    status, listing = server.get_json("/stagetrace/prompts?limit=5")
    assert status == 200
    first = listing["prompts"][0]
    assert first["prompt_id"] == prompt_id and first["outcome"] == "ok"
    assert first["trace"] == os.path.basename(trace) and first["wall_s"] > 0
    assert {"sample", "vae_decode"} <= set(first["stages"])

    status, report = server.get_json(f"/stagetrace/prompts/{prompt_id}")
    assert status == 200
    assert report["prompt_id"] == prompt_id and isinstance(report["findings"], list)
    assert report["summary"]["trace_path"] == os.path.basename(trace)  # no server paths
    assert any(s["stage"] == "sample" for s in report["stages"])
    with open(trace[: -len(".trace.json")] + ".report.json") as f:
        assert [x["title"] for x in json.load(f)["findings"]] == [x["title"] for x in report["findings"]]

    status, headers, body = server.get(f"/stagetrace/prompts/{prompt_id}/trace")
    assert status == 200 and headers["content-type"].startswith("application/json")
    with open(trace, "rb") as f:
        assert body == f.read()
    status, headers, body = server.get(f"/api/stagetrace/prompts/{prompt_id}/report.html")  # ComfyUI's /api twin
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in headers["content-security-policy"] and b"<html" in body.lower()


def test_model_anatomy_and_gpu_samples(ran):
    server, *_ = ran
    status, anatomy = server.get_json("/stagetrace/anatomy/checkpoints/tiny_sd15.safetensors")
    assert status == 200 and anatomy["readable"] and anatomy["family"] == "sd1" and anatomy["bytes"] > 0
    assert "/" not in json.dumps(anatomy.get("path", ""))
    now = time.time()
    status, gpu = server.get_json(f"/stagetrace/gpu?since={now - 600}&until={now}")
    assert status == 200 and gpu["clock"] == "epoch seconds"
    assert gpu["samples"] or gpu["no_samples"]  # a machine without a GPU says why, cleanly
    assert server.get_json("/stagetrace/gpu?since=abc")[0] == 400
    assert server.get_json(f"/stagetrace/gpu?since={now}&until={now - 5}")[0] == 400


ATTEMPTS = [
    "/stagetrace/prompts/..",
    "/stagetrace/prompts/../../secret",
    "/stagetrace/prompts/%2e%2e/trace",
    "/stagetrace/prompts/..%2fsecret/trace",
    "/stagetrace/prompts/..%2F..%2Foutside/report.html",
    "/stagetrace/prompts/secret.trace.json/trace",
    "/stagetrace/prompts/no-such-prompt",
    "/stagetrace/prompts/no-such-prompt/trace",
    "/stagetrace/prompts/" + "a" * 81,
    "/stagetrace/prompts?limit=100000",
    "/stagetrace/prompts?limit=-1",
    "/stagetrace/anatomy/checkpoints/escape.safetensors",  # a symlink out of the folder
    "/stagetrace/anatomy/checkpoints/../outside.safetensors",
    "/stagetrace/anatomy/checkpoints/..%2foutside.safetensors",
    "/stagetrace/anatomy/checkpoints/%2e%2e/outside.safetensors",
    "/stagetrace/anatomy/checkpoints//etc/passwd",
    "/stagetrace/anatomy/checkpoints/%2fetc%2fpasswd",
    "/stagetrace/anatomy/checkpoints/sub/./x.safetensors",
    "/stagetrace/anatomy/checkpoints/tiny_sd15.safetensors%00.txt",
    "/stagetrace/anatomy/custom_nodes/stagetrace/README.safetensors",
    "/stagetrace/anatomy/no_such_folder/x.safetensors",
    "/stagetrace/anatomy/checkpoints/missing.safetensors",
    "/stagetrace/anatomy/checkpoints/notes.txt",
    "/stagetrace/anatomy/..%2f..%2fetc/passwd",
    "/stagetrace/nothing-here",
]


@pytest.mark.parametrize("path", ATTEMPTS)
def test_traversal_and_unknown_ids_are_refused(ran, path):
    server, *_ = ran
    status, headers, body = server.get(path)
    assert 400 <= status < 500, (path, status, body[:300])
    assert SENTINEL.encode() not in body
    if status != 404 or path.startswith("/stagetrace"):
        if headers.get("content-type", "").startswith("application/json"):
            assert "error" in json.loads(body)
    assert b"root:" not in body  # /etc/passwd never served


def test_absolute_path_in_the_request_line_is_refused(ran):
    server, _, _, sentinel = ran
    for path in (f"/stagetrace/anatomy/checkpoints/{sentinel}", f"/stagetrace/anatomy/checkpoints/{sentinel[1:]}"):
        status, _, body = server.get(path)
        assert 400 <= status < 500 and SENTINEL.encode() not in body


def test_a_request_never_breaks_the_server(ran):
    server, prompt_id, *_ = ran
    odd = ("/stagetrace/prompts/%ff%fe", "/stagetrace/anatomy/%e2%80%ae/x.safetensors", "/stagetrace/gpu?since=nan")
    for path in odd:
        status, _, _ = server.get(path)
        assert 400 <= status < 500
    assert server.get(f"/stagetrace/prompts/{prompt_id}")[0] == 200


def test_login_like_middleware_guards_the_routes(ran):
    server, prompt_id, *_ = ran
    path = f"/stagetrace/prompts/{prompt_id}"
    with server.auth("login"):
        status, headers, body = server.get(path)
        assert status == 302 and headers["location"] == "/login" and prompt_id.encode() not in body
        assert server.get("/stagetrace/prompts")[0] == 302
        assert server.get(path, {"Authorization": "Bearer wrong"})[0] == 302
        assert server.get(path, {"Authorization": f"Bearer {server.login_token}"})[0] == 200
        assert server.get(f"{path}?token={server.login_token}")[0] == 200
        status, headers, _ = server.request("POST", "/login", f"token={server.login_token}".encode(),
                                            {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 302
        cookie = headers["set-cookie"].split(";", 1)[0]
        status, _, body = server.get(path, {"Cookie": cookie})
        assert status == 200 and json.loads(body)["prompt_id"] == prompt_id
    assert server.get(path)[0] == 200  # disarmed again


def test_basic_auth_middleware_guards_the_routes(ran):
    server, prompt_id, *_ = ran
    with server.auth("basic"):
        status, headers, body = server.get("/stagetrace/prompts")
        assert status == 401 and headers["www-authenticate"].startswith("Basic") and prompt_id.encode() not in body
        wrong = {"Authorization": "Basic d3Jvbmc6d3Jvbmc="}
        assert server.get(f"/stagetrace/prompts/{prompt_id}/trace", wrong)[0] == 401
        status, _, body = server.get("/stagetrace/prompts", {"Authorization": server.basic_header})
        assert status == 200 and json.loads(body)["prompts"][0]["prompt_id"] == prompt_id


def test_a_symlink_out_of_the_models_folder_is_found_and_refused(ran):
    """ComfyUI itself lists the link (it follows symlinks); StageTrace's real-path check refuses it."""
    server, *_ = ran
    status, _, body = server.get("/stagetrace/anatomy/checkpoints/escape.safetensors")
    assert status == 403 and b"outside" in body and SENTINEL.encode() not in body
