"""The ``stagetrace`` command.

    stagetrace report TRACE [--format text|md|html|json]
                                       the stage summary of a saved trace and
                                       the findings: cause, evidence, fix
    stagetrace inspect FILE... [--json] [--models-dir DIR]
                                       what a model file holds and lacks (exit 0
                                       complete, 1 incomplete, 2 unreadable)
    stagetrace demo [--comfyui DIR] [--workdir DIR] [--serve [--port P]]
                                       profile a real tiny workflow on the CPU in the
                                       ComfyUI StageTrace sits in (or DIR, or
                                       $COMFYUI_DIR); outside one, the user's case
                                       in miniature; --serve: that ComfyUI as a
                                       server with the tiny workflow, to bench
    stagetrace bench URL WORKFLOW.json [-n 5] [--warmup 1] [--json] [--timeout S]
                 [--report FILE.html|FILE.md] [--overwrite]
                 [--token T] [--header 'N: v'] [--cookie n=v] [--user U --password P]
                                       run a workflow on a ComfyUI server N times after a
                                       preflight; queue wait, execution, end to end,
                                       steps/s, the stage split and the GPU (exit 0 all ran,
                                       1 some failed, 2 preflight problems or bad options,
                                       3 authentication required, 130 interrupted)
    stagetrace load URL[,URL...] WORKFLOW.json (--users N --requests M | --rate R --duration S)
                 [--slo e2e=120s] [--threshold 'p95(e2e)<120s'] [--json] [--report FILE]
                 [--prometheus URL] [auth options]
                                       many users against a service: success rate, p50/p95/p99
                                       of queue wait, execution and end to end, images a
                                       minute, goodput, errors by class, per worker, per stage
                                       (exit 0 met, 1 a threshold missed, 2 bad options or no
                                       server reached, 3 authentication, 130 interrupted)
    stagetrace history [--db PATH] [--workflow ID] [--limit N] [--json]
    stagetrace history --compare A B [--db PATH] [--json]
    stagetrace history --workflows [--db PATH] [--limit N] [--json]
                                       the recorded runs (newest first: time, prompt, workflow,
                                       outcome, wall, top stages, first finding), two runs
                                       stage by stage (A - B, A / B), or the workflows; the
                                       database: --db, else $STAGETRACE_OUTPUT_DIR/history.sqlite3,
                                       else ./output/stagetrace/history.sqlite3 (exit 0, 2 no
                                       usable database or an unknown run)
    stagetrace doctor [--comfyui DIR] [--models-dir DIR] [--cuda-device N] [--json]
                                       check everything StageTrace and a GPU run depend on, in
                                       plain words (exit 0 fine, 1 problems found, 2 bad options)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from ..record.tracefile import TraceError


def _report(args) -> int:
    from ..analysis.diagnose import diagnose
    from ..record.tracefile import read
    from ..render.report import render

    failed: list[str] = []
    fmt = "json" if args.json else args.format
    for path in args.trace:
        try:
            trace = read(path)  # streams, in bounded memory
        except TraceError as exc:
            print(f"stagetrace: {exc}", file=sys.stderr)
            failed.append(path)
            continue
        try:
            report = diagnose(trace)
            report.summary.trace_path = path
            text = render(report, fmt, trace)
        except (BrokenPipeError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - one trace StageTrace cannot analyse never stops the others
            print(f"stagetrace: {path}: this trace could not be analysed ({type(exc).__name__}: {exc})",
                  file=sys.stderr)
            failed.append(path)
            continue
        print(text)
        del trace, report, text  # one trace's events at a time
    if failed and len(args.trace) > 1:
        print(f"stagetrace report: {len(failed)} of {len(args.trace)} traces failed: {', '.join(failed)}",
              file=sys.stderr)
    return 2 if failed else 0


def _inspect(args) -> int:
    from ..cli import inspect_files

    if not args.files and not args.models_dir:
        print("stagetrace inspect: give model files, or --models-dir DIR", file=sys.stderr)
        return inspect_files.UNREADABLE
    reports = [inspect_files.inspect_file(path) for path in args.files]
    if args.models_dir:
        try:  # a folder that does not exist, is no folder or cannot be listed: an error, named
            reports += inspect_files.walk_models_dir(args.models_dir)
        except inspect_files.ModelsDirError as exc:
            print(f"stagetrace inspect: {exc.strerror or exc}", file=sys.stderr)
            return inspect_files.UNREADABLE
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        print("\n\n".join(inspect_files.format_report(r) for r in reports))
    return inspect_files.exit_code(reports)


def _demo(args) -> int:
    from ..demo import run as demo

    return demo.run(comfyui_dir=args.comfyui, workdir=args.workdir, serve=args.serve, port=args.port)


def _report_paths(paths: list[str], overwrite: bool) -> list[tuple[str, str]]:
    """(path, format) of each --report file, checked before anything runs: a known suffix, a folder that
    exists, and no file already there unless --overwrite (nothing the user had is overwritten by surprise)."""
    import os

    from ..render.runreport import report_format

    checked = []
    for path in paths:
        fmt = report_format(path)
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ValueError(f"--report {path}: the folder {folder} does not exist")
        if os.path.lexists(path) and not overwrite:
            raise ValueError(f"--report {path}: the file exists; give another name, or --overwrite to replace it")
        checked.append((path, fmt))
    return checked


def _write_reports(render, out: dict, targets: list[tuple[str, str]], command: str) -> int:
    """Render and write each report file whole (or not at all); 0, or 2 when one could not be written."""
    from ..render.runreport import write_report

    status = 0
    for path, fmt in targets:
        try:
            write_report(path, render(out, fmt))
            print(f"report: {path}", file=sys.stderr)
        except (OSError, ValueError) as exc:
            print(f"stagetrace {command}: could not write the report {path}: {exc}", file=sys.stderr)
            status = 2
    return status


def _run_interruptible(coroutine_function):
    """Run the command's coroutine; Ctrl-C (SIGINT) cancels it, and the command cleans up and reports what it
    measured instead of dying with a traceback."""
    import asyncio
    import signal

    async def run():
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGINT, task.cancel)
        except (NotImplementedError, RuntimeError):  # no signal handlers on this platform: KeyboardInterrupt
            pass
        try:
            return await coroutine_function()
        finally:
            try:
                loop.remove_signal_handler(signal.SIGINT)
            except (NotImplementedError, RuntimeError):
                pass

    return asyncio.run(run())


def _client_inputs(args, command: str):
    """The workflow, the credentials and the report files of bench and load, or a message for exit 2."""
    from ..client.server import Credentials
    from ..client.workflow import WorkflowError, load_workflow

    try:
        prompt = load_workflow(args.workflow)
        credentials = Credentials.from_options(args.token, args.header, args.cookie, args.user, args.password)
        targets = _report_paths(args.report, args.overwrite)
    except (WorkflowError, ValueError) as exc:
        print(f"stagetrace {command}: {exc}", file=sys.stderr)
        return None
    return prompt, credentials, targets


def _bench(args) -> int:
    import os

    from ..client.bench import bench
    from ..client.server import AUTH_EXIT
    from ..render.runreport import bench_report

    inputs = _client_inputs(args, "bench")
    if inputs is None:
        return 2
    prompt, credentials, targets = inputs
    if args.runs < 1 or args.warmup < 0:
        print("stagetrace bench: -n must be at least 1 and --warmup at least 0", file=sys.stderr)
        return 2
    code, out = _run_interruptible(lambda: bench(args.url, prompt, args.runs, args.warmup, credentials, args.timeout,
                                                 progress=not args.json and sys.stderr.isatty()))
    out["workflow"] = os.path.basename(args.workflow)
    if args.json:
        print(json.dumps({k: v for k, v in out.items() if k != "table"}, indent=2, default=str))
    else:
        if out.get("message"):
            print(f"stagetrace bench: {out['message']}", file=sys.stderr if code else sys.stdout)
        if out.get("runs"):
            print(out["table"])
        if out.get("interrupted"):
            done = sum(1 for r in out["runs"] if r["outcome"] == "ok")
            print(f"interrupted: {done} run(s) measured; cancelled on the server: "
                  f"{', '.join(out.get('cancelled') or []) or 'nothing'}")
    if code != AUTH_EXIT and (out.get("runs") or out.get("preflight")):
        code = _write_reports(bench_report, out, targets, "bench") or code
    return code


def _load(args) -> int:
    import os

    from ..client.load import check_thresholds, load, parse_slo, parse_threshold, table
    from ..render.runreport import load_report

    inputs = _client_inputs(args, "load")
    if inputs is None:
        return 2
    prompt, credentials, targets = inputs
    try:
        thresholds = [parse_threshold(t) for t in args.threshold]
        slo = parse_slo(args.slo) if args.slo else None
        if (args.rate is None) == (args.users is None):
            raise ValueError("give either --users N --requests M (closed) or --rate R --duration S (open)")
        if (args.users is not None and (args.users < 1 or args.requests < 1)) or (
                args.rate is not None and args.rate <= 0) or (args.duration is not None and args.duration <= 0):
            raise ValueError("--users, --requests, --rate and --duration must be positive")
    except ValueError as exc:
        print(f"stagetrace load: {exc}", file=sys.stderr)
        return 2
    urls = [u.strip() for u in args.url.split(",") if u.strip()]
    code, out = _run_interruptible(lambda: load(urls, prompt, credentials, users=args.users, requests=args.requests,
                                                rate=args.rate, duration=args.duration, timeout=args.timeout,
                                                slo=slo, progress=not args.json and sys.stderr.isatty(),
                                                prometheus=args.prometheus))
    if code not in (0, 130):
        print(f"stagetrace load: {out.get('message')}", file=sys.stderr)
        return code
    out["workflow"] = os.path.basename(args.workflow)
    missed = check_thresholds(out, thresholds)
    out["thresholds_missed"] = missed
    print(json.dumps(out, indent=2, default=str) if args.json else table(out))
    for line in missed:
        print(f"threshold missed: {line}", file=sys.stderr)
    status = _write_reports(load_report, out, targets, "load")
    return code or status or (1 if missed else 0)


# --- history ---------------------------------------------------------------------------------------

HISTORY_HIDDEN_STAGES = ("node", "sample.step", "anatomy")  # inside other stages: not a top stage of their own


def _history_db(path: str | None) -> str:
    """The database the history command reads: --db, else the trace folder's; ValueError saying what to pass."""
    import os

    from ..history.store import FILE_NAME

    if path:
        return path
    if os.environ.get("STAGETRACE_OUTPUT_DIR"):
        return os.path.join(os.environ["STAGETRACE_OUTPUT_DIR"], FILE_NAME)
    local = os.path.join("output", "stagetrace", FILE_NAME)
    if os.path.exists(local):
        return local
    raise ValueError(f"no history database found (STAGETRACE_OUTPUT_DIR is not set and there is no ./{local}): "
                     "pass --db PATH")


def _when(ended: float | None) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ended)) if ended else "-"


def _top_stages(stages: dict, n: int = 3) -> str:
    from ..core.units import format_duration

    shown = sorted(((s, t) for s, t in stages.items() if s not in HISTORY_HIDDEN_STAGES), key=lambda x: -x[1])
    return ", ".join(f"{s} {format_duration(t)}" for s, t in shown[:n]) or "-"


def _columns(rows: list[tuple], right: tuple[int, ...] = ()) -> list[str]:
    """Rows as aligned text columns (the last one left ragged); ``right``: the columns aligned right."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]) - 1)] + [0]
    return ["  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                      for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]


def _history_table(runs: list[dict]) -> str:
    from ..core.units import format_duration

    if not runs:
        return "no runs recorded"
    rows = [("ended", "prompt", "workflow", "outcome", "wall", "top stages", "first finding")]
    for r in runs:
        first = r["findings"][0]["title"] if r["findings"] else "-"
        rows.append((_when(r["ended"]), r["prompt_id"], r["workflow_id"] or "-", r["outcome"],
                     format_duration(r["wall_s"]), _top_stages(r["stages"]), first))
    return "\n".join(_columns(rows, right=(4,)))


def _workflows_table(workflows: list[dict]) -> str:
    from ..core.units import format_duration

    if not workflows:
        return "no runs recorded"
    rows = [("workflow", "runs", "last run", "median wall (ok runs)")]
    rows += [(w["workflow_id"] or "-", str(w["runs"]), _when(w["last_ended"]), format_duration(w["median_wall_s"]))
             for w in workflows]
    return "\n".join(_columns(rows, right=(1,)))


def _comparison_table(c: dict) -> str:
    from ..core.units import format_duration

    def line(name: str, f: dict) -> tuple:
        ratio = f"{f['ratio']:.2f}x" if f["ratio"] is not None else "-"
        sign = "+" if f["difference"] > 0 else ""
        return (name, format_duration(f["a"]), format_duration(f["b"]), sign + format_duration(f["difference"]),
                ratio)

    out = [f"{side}: {run['prompt_id']}  {_when(run['ended'])}  {run['outcome']}  workflow {run['workflow_id'] or '-'}"
           for side, run in (("a", c["a"]), ("b", c["b"]))]
    if not c["same_workflow"]:
        out.append("(different workflows: the stages may differ for that reason alone)")
    rows = [("stage", "a", "b", "a - b", "a / b"), line("wall", c["wall"])]
    rows += [line(s["stage"], s) for s in c["stages"] if s["stage"] not in HISTORY_HIDDEN_STAGES]
    out += ["", *_columns([(*row, "") for row in rows], right=(1, 2, 3, 4)), ""]
    for side in ("a", "b"):
        found = c[f"findings_only_in_{side}"]
        out.append(f"findings only in {side}: " + ("; ".join(f["title"] for f in found) if found else "none"))
    return "\n".join(out)


def _history(args) -> int:
    from ..history.store import History, HistoryError, RunNotFound

    if args.limit < 1:
        print("stagetrace history: --limit must be at least 1", file=sys.stderr)
        return 2
    try:
        with History(_history_db(args.db), readonly=True) as history:
            if args.compare:
                out = history.compare(*args.compare)
                text = _comparison_table
            elif args.workflows:
                out = history.workflows(args.limit)
                text = _workflows_table
            else:
                out = history.runs(args.limit, args.workflow)
                text = _history_table
    except (ValueError, HistoryError, RunNotFound) as exc:
        print(f"stagetrace history: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2, default=str) if args.json else text(out))
    return 0


def _auth_options(parser) -> None:
    parser.add_argument("--token", help="a token for the server's auth plugin (Authorization: Bearer; ?token= on "
                        "the WebSocket); default $STAGETRACE_TOKEN")
    parser.add_argument("--header", action="append", default=[], help="an extra header 'Name: value' (repeatable; "
                        "default $STAGETRACE_HEADER)")
    parser.add_argument("--cookie", action="append", default=[], help="a cookie 'name=value', e.g. a logged-in "
                        "session (repeatable; default $STAGETRACE_COOKIE)")
    parser.add_argument("--user", help="basic-auth user (default $STAGETRACE_USER)")
    parser.add_argument("--password", help="basic-auth password (default $STAGETRACE_PASSWORD)")
    parser.add_argument("--report", action="append", default=[], metavar="FILE",
                        help="also write a one-page report: FILE.html (self-contained, with plots) or FILE.md "
                        "(repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace a --report file that exists")


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
    demo.add_argument("--serve", action="store_true", help="instead, serve the example from that ComfyUI on "
                      "loopback (the tiny checkpoint and tiny_workflow.json in the work folder) for bench and load, "
                      "until Ctrl-C")
    demo.add_argument("--port", type=int, default=None, help="with --serve: the port (default: a free one)")
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
    load.add_argument("--duration", type=float, default=None, help="open model: seconds of arrivals (default 60); "
                      "closed model: no request starts after it (default: no bound)")
    load.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take (default 600)")
    load.add_argument("--slo", help="goodput under this bound, e.g. e2e=120s (queue, execution, e2e)")
    load.add_argument("--threshold", action="append", default=[], help="e.g. 'p95(e2e)<120s'; a miss exits 1 "
                      "(repeatable)")
    load.add_argument("--json", action="store_true", help="everything measured, as JSON")
    load.add_argument("--prometheus", metavar="URL", help="a Prometheus that scrapes the workers' StageTrace "
                      "metrics: put the fleet's server-side p50/p95 (queue, execution, end to end, each stage) "
                      "beside the client's")
    _auth_options(load)
    load.set_defaults(func=_load)
    history = sub.add_parser("history", help="the recorded runs of this ComfyUI (newest first), two runs compared "
                             "stage by stage, or the workflows")
    history.add_argument("--db", help="the history database (default: $STAGETRACE_OUTPUT_DIR/history.sqlite3, "
                         "else ./output/stagetrace/history.sqlite3)")
    history.add_argument("--workflow", help="only the runs of this workflow id")
    history.add_argument("--limit", type=int, default=20, help="runs (or workflows) listed (default 20)")
    history.add_argument("--json", action="store_true", help="machine-readable output")
    shown = history.add_mutually_exclusive_group()
    shown.add_argument("--compare", nargs=2, metavar=("A", "B"), help="run A against run B (prompt ids), stage "
                       "by stage")
    shown.add_argument("--workflows", action="store_true", help="the workflows with runs, the last run first")
    history.set_defaults(func=_history)
    from .doctor import add_parser as add_doctor

    add_doctor(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        code = args.func(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # `stagetrace ... | head`: the reader left; that is no error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's final flush
        return 0


if __name__ == "__main__":
    sys.exit(main())
