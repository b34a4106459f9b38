"""What every benchmark script shares: its two flags and the targets table."""

from __future__ import annotations

import argparse

Target = tuple[str, str, bool]  # (what, the measured figure, met)


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer calls and repeats: a smoke run")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return parser.parse_args()


def print_targets(targets: list[Target], check: bool, width: int = 48) -> int:
    """Print PASS/FAIL per target; the exit status (1 only with --check and a missed target)."""
    print("targets")
    for label, figure, ok in targets:
        print(f"   {'PASS' if ok else 'FAIL'}  {label:<{width}} {figure}")
    return 1 if check and not all(ok for _, _, ok in targets) else 0
