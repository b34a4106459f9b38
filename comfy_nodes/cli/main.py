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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
