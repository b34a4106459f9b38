"""The run history inside a real ComfyUI server (tests/comfy_server.py): each prompt is compared with its
workflow's earlier runs and recorded; a stage slowed by a test hook inside the sampler raises the regression
finding, an unchanged run does not; the history routes; a corrupt database leaves profiling running."""

import os
import uuid

from comfy_server import running_server

from comfy_nodes.demo.harness import tiny_txt2img


def run(server, seed: int, prefix: str) -> dict:
    prompt_id = server.run_prompt(tiny_txt2img("tiny_sd15.safetensors", seed=seed, steps=2, filename_prefix=prefix))
    server.wait_trace(prompt_id)
    status, report = server.get_json(f"/stagetrace/prompts/{prompt_id}")
    assert status == 200
    return report


def regression(report: dict) -> dict | None:
    return next((f for f in report["findings"] if f["rule"] == "regression"), None)


def test_a_slowed_stage_is_a_regression_against_the_workflows_runs_and_an_unchanged_run_is_not(comfy_server):
    prefix = f"history-{uuid.uuid4().hex[:8]}"  # a workflow of its own: no other test's runs in its history
    earlier = [run(comfy_server, 1000 + i, prefix) for i in range(3)]  # three seeds, one workflow
    assert all(regression(r) is None for r in earlier)
    workflow = comfy_server.get_json(f"/stagetrace/history/{earlier[0]['prompt_id']}")[1]["workflow_id"]
    status, listed = comfy_server.get_json(f"/stagetrace/history?workflow={workflow}&limit=10")
    assert status == 200 and [r["prompt_id"] for r in listed["runs"]] == [r["prompt_id"] for r in earlier[::-1]]
    # the sampler sleeps twice the slowest earlier sampling and more: far slower than the three before, whatever
    # the machine's speed and load
    slowest = max(r["stages_inclusive"]["sample"] for r in earlier)
    with open(comfy_server.slow_file, "w") as f:
        f.write(f"{2 * slowest + 0.5:.3f}")
    try:
        slowed = run(comfy_server, 1010, prefix)
    finally:
        os.unlink(comfy_server.slow_file)
    finding = regression(slowed)
    assert finding is not None, slowed["findings"]
    assert "sampl" in finding["title"].lower() and "median" in finding["title"] and finding["cost_s"] > 0.5
    # An unchanged run is no regression. A loaded machine can make one slow for real: such a run may be flagged
    # only with the excess measured; one of three unchanged runs must pass clean.
    for attempt in range(3):
        unchanged = run(comfy_server, 1011 + attempt, prefix)
        flagged = regression(unchanged)
        if flagged is None:
            break
        figures = flagged["figures"]
        assert figures["seconds"] >= 1.5 * figures["median_s"] and figures["seconds"] >= figures["median_s"] + 0.25
    assert flagged is None, unchanged["findings"]
    status, diff = comfy_server.get_json(f"/stagetrace/history/compare?a={slowed['prompt_id']}"
                                         f"&b={unchanged['prompt_id']}")
    assert status == 200
    stages = diff["stages"] if isinstance(diff["stages"], dict) else {s["stage"]: s for s in diff["stages"]}
    assert stages["sample"]["difference"] > 0.5
    panel = comfy_server.get_json(f"/stagetrace/prompts/{slowed['prompt_id']}/panel")[1]
    assert any(f["rule"] == "regression" for f in panel["findings"])  # the panel shows the writer's findings


def test_a_corrupt_history_file_leaves_profiling_running_and_is_kept(tmp_path):
    with running_server() as server:
        os.makedirs(server.traces, exist_ok=True)
        path = os.path.join(server.traces, "history.sqlite3")
        garbage = b"not a database, and nobody's to delete\n" * 64
        with open(path, "wb") as f:
            f.write(garbage)
        reports = [run(server, 1100 + i, "corrupt-history") for i in range(2)]
        assert all(r["outcome"] == "ok" for r in reports)  # profiling goes on: traces and reports
        with open(path, "rb") as f:
            assert f.read() == garbage  # never deleted nor overwritten
        with open(server.log_path, encoding="utf-8", errors="replace") as f:
            log = f.read()
        assert log.count("the run history cannot be used") == 1 and path in log
        status, _, body = server.get("/stagetrace/history")
        assert status == 503 and b"history" in body
