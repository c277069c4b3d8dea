"""Gateway processes (issue 12): throughput at one concurrency with `--gateway_processes` 1, 2 and
auto against the plain grpc.aio server, side by side in one run, and the gateway processes' CPU per
Predict from their own counters (/proc/<pid>/stat utime + stime over the measured window).

    python -m benchmarks.gateways [--levels 128] [--duration 8] [--channels 8] [--rounds 2] [--client h2load]

Each round runs every server once, in order, so a change in the machine's load hits all of them;
the ratios are per round. Several connections per load-generator process (`--channels`): the
kernel spreads connections, not requests, over the processes sharing a port. `--client h2load`
drives the same level with nghttp2's C load generator (`benchmarks.h2load`, 2 × `--channels`
connections), which takes far less of the 2 cores than the Python one. Writes
benchmarks/gateways.json and prints a table (with the load average at each level).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import tempfile
import time
from typing import Any

from benchmarks import model
from benchmarks.run import HERE, SPECS, Context, _loadavg, _tessera_flags, bench_server, code_state, machine

SERVERS = ("plain", "tessera-gw1", "tessera-gw2", "tessera-gwauto")


def table(rounds: list[list[dict[str, Any]]]) -> str:
    lines = ["| round | server | c | req/s | × plain | p50 ms | gateway CPU µs/Predict | gateway CPU % "
             "| whole server CPU µs/Predict | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for i, servers in enumerate(rounds, 1):
        plain = {lv["concurrency"]: lv["rps"] for s in servers if s["name"] == "plain" for lv in s["levels"]}
        for server in servers:
            if "error" in server:
                lines.append(f"| {i} | {server['name']} | | FAILED: {server['error']} | | | | | | |")
                continue
            for level in server["levels"]:
                c = level["concurrency"]
                ratio = level["rps"] / plain[c] if plain.get(c) else float("nan")
                us = level.get("gateway_cpu_us_per_request")
                cpu = sum(v for k, v in level.get("server_cpu_pct", {}).items()
                          if k.split(" ×")[0] in ("tessera", "cluster.cli"))
                lines.append(
                    f"| {i} | {server['name']} | {c} | {level['rps']:.0f} | {ratio:.2f} | {level.get('p50_ms', 0):.1f} "
                    f"| {'' if us is None else f'{us:.0f}'} | {cpu:.0f} | {level.get('server_cpu_us_per_request', 0):.0f} "
                    f"| {level.get('loadavg', '')} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", nargs="+", choices=sorted(SPECS), default=list(SERVERS))
    parser.add_argument("--levels", type=int, nargs="+", default=[128])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--client", choices=("python", "h2load"), default="python",
                        help="the load generator: benchmarks.loadgen, or h2load (C; see benchmarks.h2load)")
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "gateways.json")
    args = parser.parse_args()
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="tessera-gw-bench-"))
    args.logs = scratch / "logs"
    started = time.monotonic()
    rounds: list[list[dict[str, Any]]] = []
    try:
        base = scratch / "models" / model.MODEL_NAME
        model.export(base)
        ctx = Context(base=base, scratch=scratch, tessera_flags=_tessera_flags())
        from benchmarks.wire import predict_request

        payload = predict_request(batch=1, seed=0).SerializeToString()
        for _ in range(args.rounds):
            rounds.append([bench_server(SPECS[name], ctx, args, payload) for name in args.servers])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = {"machine": machine(), "code": code_state(), "loadavg_end": _loadavg(), "channels": args.channels,
              "client": args.client,
              "duration_s": args.duration, "wall_s": time.monotonic() - started, "rounds": rounds}
    args.out.write_text(json.dumps(result, indent=1))
    print(table(rounds))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
