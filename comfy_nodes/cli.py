"""The ``stagetrace`` command.

    stagetrace report TRACE [--json]   the stage summary of a saved trace
    stagetrace demo [--comfyui DIR]    profile a real (tiny, CPU) ComfyUI run, or
                                       a built-in example when no ComfyUI is given
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

from .summary import format_text, summarize
from .tracefile import TraceError, load


def _report(args) -> int:
    status = 0
    for path in args.trace:
        try:
            summary = summarize(load(path), trace_path=path)
        except TraceError as exc:
            print(f"stagetrace: {exc}", file=sys.stderr)
            status = 2
            continue
        if args.json:
            print(json.dumps(dataclasses.asdict(summary), indent=2))
        else:
            print(format_text(summary))
    return status


def _demo(args) -> int:
    from . import demo

    return demo.run(comfyui_dir=args.comfyui, workdir=args.workdir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stagetrace", description="StageTrace: where a ComfyUI run spends its time.")
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="print the stage summary of saved traces")
    report.add_argument("trace", nargs="+", help="a .trace.json file written by StageTrace")
    report.add_argument("--json", action="store_true", help="machine-readable output")
    report.set_defaults(func=_report)
    demo = sub.add_parser("demo", help="profile a tiny ComfyUI workflow on the CPU (or a built-in example)")
    demo.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR"),
                      help="ComfyUI checkout to run (default: $COMFYUI_DIR)")
    demo.add_argument("--workdir", default=None, help="where models, images and traces go (default: a new temp dir)")
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
