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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
