"""The ``stagetrace`` command.

    stagetrace report TRACE [--format text|md|html|json]
                                       the stage summary of a saved trace and
                                       the findings: cause, evidence, fix
    stagetrace inspect FILE... [--json] [--models-dir DIR]
                                       what a model file holds and lacks (exit 0
                                       complete, 1 incomplete, 2 unreadable)
    stagetrace demo [--comfyui DIR]    profile a real tiny workflow on the CPU in the
                                       ComfyUI StageTrace sits in (or DIR, or
                                       $COMFYUI_DIR); outside one, the user's case
                                       in miniature
    stagetrace bench URL WORKFLOW.json [-n 5] [--warmup 1] [--json] [--timeout S]
                 [--token T] [--header 'N: v'] [--cookie n=v] [--user U --password P]
                                       run a workflow on a ComfyUI server N times after a
                                       preflight; queue wait, execution, end to end,
                                       steps/s and the stage split (exit 0 all ran, 1 some
                                       failed, 2 preflight problems, 3 authentication
                                       required, 130 interrupted)
    stagetrace load URL[,URL...] WORKFLOW.json (--users N --requests M | --rate R --duration S)
                 [--slo e2e=120s] [--threshold 'p95(e2e)<120s'] [--json] [auth options]
                                       many users against a service: success rate, p50/p95/p99
                                       of queue wait, execution and end to end, images a
                                       minute, goodput, errors by class, per worker, per stage
                                       (exit 0 met, 1 a threshold missed, 3 authentication)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ..record.tracefile import TraceError, load


def _report(args) -> int:
    from ..analysis.diagnose import diagnose
    from ..render.report import render

    status = 0
    fmt = "json" if args.json else args.format
    for path in args.trace:
        try:
            trace = load(path)
        except TraceError as exc:
            print(f"stagetrace: {exc}", file=sys.stderr)
            status = 2
            continue
        report = diagnose(trace)
        report.summary.trace_path = path
        print(render(report, fmt, trace))
    return status


def _inspect(args) -> int:
    from ..cli import inspect_files

    if not args.files and not args.models_dir:
        print("stagetrace inspect: give model files, or --models-dir DIR", file=sys.stderr)
        return inspect_files.UNREADABLE
    reports = [inspect_files.inspect_file(path) for path in args.files]
    if args.models_dir:
        reports += inspect_files.walk_models_dir(args.models_dir)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        print("\n\n".join(inspect_files.format_report(r) for r in reports))
    return inspect_files.exit_code(reports)


def _demo(args) -> int:
    from ..demo import run as demo

    return demo.run(comfyui_dir=args.comfyui, workdir=args.workdir)


def _bench(args) -> int:
    import asyncio
    import signal

    from ..client.bench import bench
    from ..client.server import Credentials
    from ..client.workflow import WorkflowError, load_workflow

    try:
        prompt = load_workflow(args.workflow)
        credentials = Credentials.from_options(args.token, args.header, args.cookie, args.user, args.password)
    except (WorkflowError, ValueError) as exc:
        print(f"stagetrace bench: {exc}", file=sys.stderr)
        return 2

    async def run():
        task = asyncio.current_task()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, task.cancel)  # Ctrl-C: stop cleanly
        return await bench(args.url, prompt, args.runs, args.warmup, credentials, args.timeout,
                           progress=not args.json and sys.stderr.isatty())

    code, out = asyncio.run(run())
    if args.json:
        print(json.dumps({k: v for k, v in out.items() if k != "table"}, indent=2, default=str))
    else:
        if out.get("message"):
            print(f"stagetrace bench: {out['message']}", file=sys.stderr if code else sys.stdout)
        if out.get("runs"):
            print(out["table"])
        if out.get("interrupted"):
            print(f"interrupted: {len(out['runs'])} run(s) measured; cancelled on the server: "
                  f"{', '.join(out.get('cancelled') or []) or 'nothing'}")
    return code


def _load(args) -> int:
    import asyncio

    from ..client.load import check_thresholds, load, parse_slo, parse_threshold, table
    from ..client.server import Credentials
    from ..client.workflow import WorkflowError, load_workflow

    try:
        prompt = load_workflow(args.workflow)
        credentials = Credentials.from_options(args.token, args.header, args.cookie, args.user, args.password)
        thresholds = [parse_threshold(t) for t in args.threshold]
        slo = parse_slo(args.slo) if args.slo else None
        if (args.rate is None) == (args.users is None):
            raise ValueError("give either --users N --requests M (closed) or --rate R --duration S (open)")
    except (WorkflowError, ValueError) as exc:
        print(f"stagetrace load: {exc}", file=sys.stderr)
        return 2
    urls = [u for u in args.url.split(",") if u.strip()]
    code, out = asyncio.run(load(urls, prompt, credentials, users=args.users, requests=args.requests,
                                 rate=args.rate, duration=args.duration, timeout=args.timeout, slo=slo))
    if code:
        print(f"stagetrace load: {out.get('message')}", file=sys.stderr)
        return code
    missed = check_thresholds(out, thresholds)
    out["thresholds_missed"] = missed
    print(json.dumps(out, indent=2, default=str) if args.json else table(out))
    for line in missed:
        print(f"threshold missed: {line}", file=sys.stderr)
    return 1 if missed else 0


def _auth_options(parser) -> None:
    parser.add_argument("--token", help="a token for the server's auth plugin (Authorization: Bearer; ?token= on "
                        "the WebSocket); default $STAGETRACE_TOKEN")
    parser.add_argument("--header", action="append", default=[], help="an extra header 'Name: value' (repeatable; "
                        "default $STAGETRACE_HEADER)")
    parser.add_argument("--cookie", action="append", default=[], help="a cookie 'name=value', e.g. a logged-in "
                        "session (repeatable; default $STAGETRACE_COOKIE)")
    parser.add_argument("--user", help="basic-auth user (default $STAGETRACE_USER)")
    parser.add_argument("--password", help="basic-auth password (default $STAGETRACE_PASSWORD)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stagetrace", description="StageTrace: where a ComfyUI run spends its time.")
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="the stage summary and the diagnosis of saved traces")
    report.add_argument("trace", nargs="+", help="a .trace.json file written by StageTrace")
    report.add_argument("--format", choices=("text", "md", "html", "json"), default="text",
                        help="text (the console summary and the findings), md, html (one self-contained page "
                        "with a timeline), json")
    report.add_argument("--json", action="store_true", help="the same as --format json")
    report.set_defaults(func=_report)
    inspect = sub.add_parser("inspect", help="what a model file holds, what it lacks, how to load it")
    inspect.add_argument("files", nargs="*", help=".safetensors files")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.add_argument("--models-dir", help="walk a ComfyUI models folder and flag problems")
    inspect.set_defaults(func=_inspect)
    demo = sub.add_parser("demo", help="profile a tiny ComfyUI workflow on the CPU (outside a ComfyUI: the user's "
                          "case in miniature)")
    demo.add_argument("--comfyui", default=None,
                      help="the ComfyUI to run (default: $COMFYUI_DIR, else the ComfyUI StageTrace is installed in)")
    demo.add_argument("--workdir", default=None, help="where models, images and traces go (default: a new temp dir)")
    demo.set_defaults(func=_demo)
    bench = sub.add_parser("bench", help="run a workflow on a ComfyUI server several times, after a preflight, "
                           "and say where each run's time went")
    bench.add_argument("url", help="the server, e.g. http://127.0.0.1:8188")
    bench.add_argument("workflow", help="an API-format workflow (ComfyUI: Workflow > Export (API))")
    bench.add_argument("-n", "--runs", type=int, default=5, help="measured runs (default 5)")
    bench.add_argument("--warmup", type=int, default=1, help="cold runs before them, reported apart (default 1)")
    bench.add_argument("--json", action="store_true", help="everything measured, as JSON")
    bench.add_argument("--timeout", type=float, default=1800.0, help="seconds a run may take (default 1800)")
    _auth_options(bench)
    bench.set_defaults(func=_bench)
    load = sub.add_parser("load", help="load a ComfyUI service with many users and report latency percentiles, "
                          "throughput, errors and the stage split")
    load.add_argument("url", help="one server, or several separated by commas (the load is spread over them)")
    load.add_argument("workflow", help="an API-format workflow")
    load.add_argument("--users", type=int, help="closed model: users, each waiting for its result")
    load.add_argument("--requests", type=int, default=1, help="closed model: requests per user (default 1)")
    load.add_argument("--rate", type=float, help="open model: arrivals a minute, whatever the results")
    load.add_argument("--duration", type=float, default=60.0, help="open model: seconds of arrivals (default 60)")
    load.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take (default 600)")
    load.add_argument("--slo", help="goodput under this bound, e.g. e2e=120s (queue, execution, e2e)")
    load.add_argument("--threshold", action="append", default=[], help="e.g. 'p95(e2e)<120s'; a miss exits 1 "
                      "(repeatable)")
    load.add_argument("--json", action="store_true", help="everything measured, as JSON")
    _auth_options(load)
    load.set_defaults(func=_load)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
