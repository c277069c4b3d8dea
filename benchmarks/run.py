"""`make bench`: the plain server, Tessera (1 and 2 replicas) and Ray Serve, one after another.

Exports the benchmark model once, then for each server: start it in its own session, wait for a
correct answer to a real Predict, drive it with the same load generator at every concurrency level,
note its memory, stop it (nothing left running). Writes results.json, results.md and results.png
next to this file.

    python -m benchmarks.run [--servers plain tessera-1 tessera-2 rayserve] [--duration 6]
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from benchmarks import h2load, loadgen, model, report
from benchmarks.ray_serve_peer import BATCH_WAIT_TIMEOUT_S, MAX_BATCH_SIZE, MAX_ONGOING_REQUESTS
from benchmarks.servers import ServerProcess, cpu_breakdown, free_port, server_env

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

HERE = pathlib.Path(__file__).resolve().parent
PY = sys.executable
TESSERA = str(pathlib.Path(PY).parent / "tessera")

# Tessera's replica batch queue: 32 rows like the Ray Serve peer's @serve.batch, and TF Serving's
# advice for CPUs (batch_timeout_micros 0: a batch is whatever queued while the previous one ran,
# so a lone request never waits); the `-t2ms` variant waits 2 ms like the peer.
# One batch thread: a replica has half a CPU. The queue holds more than the highest concurrency,
# so RESOURCE_EXHAUSTED can only mean a bug, never this benchmark's own load.
BATCHING_PARAMETERS = """\
max_batch_size {{ value: 32 }}
batch_timeout_micros {{ value: {timeout_us} }}
max_enqueued_batches {{ value: 128 }}
num_batch_threads {{ value: 1 }}
"""


@dataclass
class Context:
    """What every server command needs: the model and a scratch directory."""

    base: pathlib.Path  # model base path (version 1 under it)
    scratch: pathlib.Path
    tessera_flags: set[str]
    onnx_base: pathlib.Path | None = None  # the same model as model.onnx (Triton's layout)

    @property
    def version_dir(self) -> str:
        return str(self.base / "1")

    @property
    def onnx_version_dir(self) -> str:
        assert self.onnx_base is not None
        return str(self.onnx_base / "1")


@dataclass
class Spec:
    name: str
    label: str
    config: Callable[[Context], str]
    argv: Callable[[Context, int], list[str]]
    ready_timeout_s: float


def _tessera_argv(
    replicas: int, batching: bool, timeout_us: int = 2000, onnx: bool = False, gateways: str = "1"
) -> Callable[[Context, int], list[str]]:
    def argv(ctx: Context, port: int) -> list[str]:
        base = ctx.onnx_base if onnx else ctx.base
        args = [
            TESSERA, "serve", f"--port={port}", "--host=127.0.0.1",
            f"--model_name={model.MODEL_NAME}", f"--model_base_path={base}",
            *(["--model_platform=onnx"] if onnx else []),
            f"--num_replicas={replicas}", "--replica_num_cpus=0.5",
            "--file_system_poll_wait_seconds=0",  # one model, loaded once: no polling during the run
        ]
        if "--gateway_processes" in ctx.tessera_flags:
            args.append(f"--gateway_processes={gateways}")
        if batching and {"--enable_batching", "--batching_parameters_file"} <= ctx.tessera_flags:
            params = ctx.scratch / f"batching_parameters_{timeout_us}us.txt"
            params.write_text(BATCHING_PARAMETERS.format(timeout_us=timeout_us))
            args += ["--enable_batching=true", f"--batching_parameters_file={params}"]
        return args

    return argv


def _tessera_config(
    replicas: int, batching: bool, timeout_us: int = 2000, onnx: bool = False, gateways: str = "1"
) -> Callable[[Context], str]:
    def config(ctx: Context) -> str:
        text = f"`tessera serve`, embedded Ray, {replicas} replica(s) × 0.5 CPU"
        if gateways != "1":
            text += f", `--gateway_processes={gateways}`"
        if onnx:
            text += ", `--model_platform=onnx` (model.onnx, onnxruntime, 1 intra-op thread)"
        if not batching:
            return text + ", no replica batching (gateway coalescing only)"
        if {"--enable_batching", "--batching_parameters_file"} <= ctx.tessera_flags:
            text_format = BATCHING_PARAMETERS.format(timeout_us=timeout_us)
            params = " ".join(line.strip() for line in text_format.splitlines())
            return text + f", `--enable_batching` with `{params}`"
        return text + " (this build has no --enable_batching: gateway coalescing only)"

    return config


SPECS: dict[str, Spec] = {
    "plain": Spec(
        "plain", "plain grpc.aio",
        lambda ctx: "one process, grpc.aio, Runtime.run per request on the event loop",
        lambda ctx, port: [PY, "-m", "benchmarks.plain_server", f"--port={port}", f"--model_dir={ctx.version_dir}"],
        60,
    ),
    # TF Serving's advice on CPUs: batch_timeout_micros 0 (batches still form under load, as requests
    # wait for a free batch thread); the 2 ms variant matches the Ray Serve peer's batch wait.
    "tessera-1": Spec("tessera-1", "Tessera 1 replica", _tessera_config(1, True, 0), _tessera_argv(1, True, 0), 120),
    "tessera-2": Spec("tessera-2", "Tessera 2 replicas", _tessera_config(2, True, 0), _tessera_argv(2, True, 0), 120),
    "tessera-1-t2ms": Spec(
        "tessera-1-t2ms", "Tessera 1 replica, batch timeout 2 ms", _tessera_config(1, True, 2000),
        _tessera_argv(1, True, 2000), 120,
    ),
    "tessera-1-nobatch": Spec(
        "tessera-1-nobatch", "Tessera 1 replica, no batching", _tessera_config(1, False), _tessera_argv(1, False), 120
    ),
    # gRPC's floor (issue 12): the plain server answering from a cache, so what it costs per request
    # is grpc.aio's and asyncio's alone; `python -m benchmarks.gateways --servers plain plain-echo ...`.
    "plain-echo": Spec(
        "plain-echo", "plain grpc.aio, cached answers (gRPC's floor)",
        lambda ctx: "one process, grpc.aio, raw bytes in and out, each distinct request's answer cached",
        lambda ctx, port: [PY, "-m", "benchmarks.plain_server", f"--port={port}", f"--model_dir={ctx.version_dir}", "--echo"],
        60,
    ),
    # The same DNN as model.onnx in Triton's layout: onnxruntime behind both servers (issue 8).
    "plain-onnx": Spec(
        "plain-onnx", "plain grpc.aio, ONNX",
        lambda ctx: "one process, grpc.aio, one onnxruntime session (1 intra-op thread), run per request",
        lambda ctx, port: [PY, "-m", "benchmarks.plain_server", f"--port={port}",
                           f"--model_dir={ctx.onnx_version_dir}", "--model_platform=onnx"],
        60,
    ),
    "tessera-1-onnx": Spec(
        "tessera-1-onnx", "Tessera 1 replica, ONNX", _tessera_config(1, True, 0, onnx=True),
        _tessera_argv(1, True, 0, onnx=True), 120,
    ),
    # Issue 12: several gateway processes on one port (SO_REUSEPORT). Compare them with "plain" in
    # one run, with several connections per load-generator process (`--channels`), since the kernel
    # spreads connections, not requests: `--servers plain tessera-gw1 tessera-gw2 tessera-gwauto
    # --levels 128 --channels 8`.
    **{
        f"tessera-gw{n}": Spec(
            f"tessera-gw{n}", f"Tessera {n} gateway process(es)", _tessera_config(2, True, 0, gateways=n),
            _tessera_argv(2, True, 0, gateways=n), 150,
        )
        for n in ("1", "2", "auto")
    },
    "rayserve": Spec(
        "rayserve", "Ray Serve",
        lambda ctx: (
            f"Ray Serve {_version('ray')}, 1 replica × 0.5 CPU, @serve.batch({MAX_BATCH_SIZE}, "
            f"{BATCH_WAIT_TIMEOUT_S * 1000:g} ms), max_ongoing_requests {MAX_ONGOING_REQUESTS}, gRPC proxy"
        ),
        lambda ctx, port: [PY, "-m", "benchmarks.ray_serve_peer", f"--port={port}", f"--model_dir={ctx.version_dir}"],
        300,
    ),
}
DEFAULT_SERVERS = (
    "plain", "tessera-1", "tessera-2", "tessera-1-t2ms", "tessera-1-nobatch", "rayserve",
    "plain-onnx", "tessera-1-onnx",
)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    cpu_model = "unknown"
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    mem_kb = next(
        int(line.split()[1]) for line in pathlib.Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": mem_kb / 1024 / 1024,
        "platform": platform.platform(),
    }


def code_state() -> str:
    """The commit measured, and whether the server's packages had uncommitted edits at the time."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=HERE.parent, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "cluster", "exporter", "protos")
    return f"git {head}" + (f", with uncommitted changes to {len(dirty.splitlines())} file(s) in cluster/exporter/protos"
                           if dirty else ", clean")


def _loadavg() -> str:
    return " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])


def _tessera_flags() -> set[str]:
    """The flags this build's `tessera serve` accepts (batching is being added while we measure)."""
    try:
        text = subprocess.run(
            [TESSERA, "serve", "--help"], capture_output=True, text=True, timeout=60, env=server_env()
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {word.split("=")[0].strip("[],") for word in text.split() if word.startswith("--")}


def bench_server(spec: Spec, ctx: Context, args: argparse.Namespace, payload: bytes) -> dict[str, Any]:
    """Runs every level against one server; always stops it."""
    entry: dict[str, Any] = {"name": spec.name, "label": spec.label, "config": spec.config(ctx),
                             "levels": [], "loadavg_before": _loadavg()}
    port = free_port()
    server = ServerProcess(spec.name, spec.argv(ctx, port), port, args.logs / f"{spec.name}.log",
                           ready_line="Tessera gRPC on" if spec.name.startswith("tessera") else "")
    print(f"== {spec.label}: starting ({' '.join(server.argv[1:4])} ...)", flush=True)
    try:
        server.start()
        server.wait_ready(spec.ready_timeout_s)
        entry["ready_after_s"] = server.ready_after_s
        print(f"   first correct answer after {server.ready_after_s:.1f}s", flush=True)
        for c in args.levels:
            # CPU per server process over the measured window: where the time goes.
            samples: dict[str, tuple[float, dict[int, tuple[str, int]]]] = {}

            def sample(edge: str, server: ServerProcess = server, samples: dict = samples) -> None:
                samples[edge] = (time.monotonic(), server.cpu_ticks())

            if getattr(args, "client", "python") == "h2load":
                result = h2load.run_level(server.target, c, payload, args.duration, args.warmup, on_window=sample,
                                          connections=2 * args.channels)  # the Python generator's 2 processes' worth
            else:
                result = loadgen.run_level(server.target, c, payload, args.duration, args.warmup, on_window=sample,
                                           channels=args.channels)
            level = result.to_dict()
            level["loadavg"] = _loadavg()
            if len(samples) == 2:
                (t0, before), (t1, after) = samples["start"], samples["end"]
                level["server_cpu_pct"] = cpu_breakdown(before, after, t1 - t0)
                whole_s = sum(t - before.get(pid, (label, 0))[1] for pid, (label, t) in after.items()) / CLOCK_TICKS
                if result.requests:
                    # Every process of the server's session (gateways, replica hosts, Ray's daemons).
                    level["server_cpu_us_per_request"] = 1e6 * whole_s / result.requests
                gateway_s = gateway_cpu_seconds(before, after)
                if gateway_s is not None and result.requests:
                    # The gateway processes' own counters (utime + stime), over the measured window.
                    level["gateway_cpu_us_per_request"] = 1e6 * gateway_s / result.requests
            entry["levels"].append(level)
            print("  " + loadgen.format_result(spec.name, result), flush=True)
        entry["rss_mb"] = server.rss_mb()
    except Exception as e:  # noqa: BLE001 - one broken server must not hide the others' numbers
        entry["error"] = f"{type(e).__name__}: {e}"
        print(f"   FAILED: {entry['error']}", flush=True)
    finally:
        server.stop()
        entry["notes"] = server.notes
    return entry


GATEWAY_LABELS = ("tessera", "cluster.cli")  # the `tessera serve` process and its `tessera gateway` ones


def gateway_cpu_seconds(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]]) -> float | None:
    """CPU seconds the gateway processes used between two snapshots; None if the server has none."""
    ticks = [t - before.get(pid, (label, 0))[1] for pid, (label, t) in after.items() if label in GATEWAY_LABELS]
    return sum(ticks) / CLOCK_TICKS if ticks else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", nargs="+", choices=sorted(SPECS), default=list(DEFAULT_SERVERS))
    parser.add_argument("--levels", type=int, nargs="+", default=list(loadgen.DEFAULT_LEVELS))
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each level")
    parser.add_argument("--channels", type=int, default=1,
                        help="gRPC channels (TCP connections) per load-generator process")
    parser.add_argument("--out", type=pathlib.Path, default=HERE, help="where results.{md,png,json} go")
    parser.add_argument("--logs", type=pathlib.Path, default=None, help="server logs (default: a temp dir)")
    parser.add_argument("--note", action="append", default=[], help="a line for the Notes section")
    args = parser.parse_args()

    started = time.monotonic()
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="tessera-bench-"))
    args.logs = args.logs or scratch / "logs"
    try:
        base = scratch / "models" / model.MODEL_NAME
        model.export(base)
        onnx_base = scratch / "models" / f"{model.MODEL_NAME}_onnx"
        model.export_onnx(onnx_base)
        code = code_state()  # before the run: what the servers load
        ctx = Context(base=base, scratch=scratch, tessera_flags=_tessera_flags(), onnx_base=onnx_base)
        from benchmarks.wire import predict_request

        payload = predict_request(batch=1, seed=0).SerializeToString()
        servers = [bench_server(SPECS[name], ctx, args, payload) for name in args.servers]
    finally:
        if args.logs.is_relative_to(scratch):
            shutil.rmtree(scratch, ignore_errors=True)
    results = {
        "meta": {
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "model": "DNN 64→256→256→10 float32, relu, softmax",
            "levels": args.levels,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "loadgen": (
                "benchmarks/loadgen.py, up to nproc worker processes × threads with synchronous gRPC calls on "
                "pre-serialized bytes (answers not parsed), one channel per process"
            ),
            "machine": machine(),
            "versions": {
                "python": platform.python_version(),
                **{d: _version(d) for d in ("ray", "grpcio", "numpy", "protobuf")},
            },
            "notes": args.note,
            "code": code,
            "wall_s": time.monotonic() - started,
        },
        "servers": servers,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_all(results, args.out)
    print(f"wrote {args.out / 'results.md'} and results.png in {time.monotonic() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
