"""Runs the chaos scenarios and prints one line per scenario (see `benchmarks.chaos`).

    python -m benchmarks.chaos [--fast] [-k SUBSTRING]
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time

import benchmarks.chaos as chaos


def _scenarios() -> list[chaos.Scenario]:
    found: list[chaos.Scenario] = []
    for info in sorted(pkgutil.iter_modules(chaos.__path__), key=lambda m: m.name):
        if info.name.startswith("scenarios_"):
            module = importlib.import_module(f"{chaos.__name__}.{info.name}")
            found.extend(module.SCENARIOS)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__)
    parser.add_argument("--fast", action="store_true", help="only the scenarios that run in seconds")
    parser.add_argument("-k", default="", help="only scenarios whose name contains this")
    args = parser.parse_args(argv)
    failures = 0
    for scenario in _scenarios():
        if (args.fast and not scenario.fast) or args.k not in scenario.name:
            continue
        started = time.monotonic()
        try:
            outcome = scenario.run()
        except Exception as e:  # a scenario that breaks is reported, and the others still run
            print(f"{scenario.name:<40} ERROR {type(e).__name__}: {e}", flush=True)
            failures += 1
            continue
        print(outcome.line(scenario.name) + f"  ({time.monotonic() - started:.0f} s)", flush=True)
        failures += outcome.failed > 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
