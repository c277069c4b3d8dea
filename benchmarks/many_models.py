"""1,000 copies of the iris model under `make serve`'s defaults (issue 11).

Exports the iris model once (examples/export_models.py), copies its bundle directory N times
(default 1,000: each copy a model of its own, with its own base path), writes one model config
naming them all, and starts `tessera serve --port --rest_api_port --model_config_file` with every
other flag at its default, as `make serve` does (on free ports). It prints:

- the time from the process start until every model is AVAILABLE (the server's own "All models
  available" line), and until every one has answered a Predict correctly (compared with the same
  bundle run in this process);
- the total PSS (shared pages divided among sharers) of every process of the server's session:
  the tessera process, Ray's daemons, the controller and the replica hosts; and how many replica
  host processes there are;
- the load average, since the machine is shared.

Run: `.venv/bin/python -m benchmarks.many_models [--models 1000]`. Not a test.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from benchmarks.servers import REPO, ServerProcess, _label, free_port, session_pids


def session_pss_mb(sid: int) -> tuple[float, dict[str, tuple[int, float]]]:
    """Total PSS of a session in MiB, and per process label (count, MiB)."""
    total = 0.0
    by_label: dict[str, tuple[int, float]] = {}
    for pid in session_pids(sid):
        try:
            text = pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        match = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
        if match is None:
            continue
        mib = int(match.group(1)) / 1024
        total += mib
        label = _label(pid)
        count, size = by_label.get(label, (0, 0.0))
        by_label[label] = (count + 1, size + mib)
    return total, by_label


def write_models(root: pathlib.Path, count: int) -> tuple[list[str], pathlib.Path, pathlib.Path]:
    from examples.export_models import export_all

    source = root / "source"
    export_all(str(source))
    names = [f"iris{i:04d}" for i in range(count)]
    for name in names:
        shutil.copytree(source / "iris", root / name)
    config = root / "models.config"
    entries = "".join(
        f'  config {{ name: "{n}" base_path: "{root / n}" model_platform: "tensorflow" }}\n' for n in names
    )
    config.write_text("model_config_list {\n" + entries + "}\n")
    return names, config, source / "iris"


def expected_answer(bundle_base: pathlib.Path, x: np.ndarray) -> dict[str, np.ndarray]:
    from exporter.servable import LoadOptions, load_servable

    (version,) = [p for p in bundle_base.iterdir() if p.name.isdigit()]
    servable = load_servable("tensorflow", str(version), LoadOptions())
    try:
        return servable.run("predict", {"x": x})
    finally:
        servable.close()


def wait_all_available(server: ServerProcess, timeout: float) -> float:
    """Seconds from the server's start until its log says every model is AVAILABLE."""
    assert server.proc is not None
    deadline = time.monotonic() + timeout
    pattern = re.compile(rb"All models available after ([0-9.]+)s")
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"tessera serve exited with {server.proc.returncode}; see {server.log_path}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not every model available after {timeout:.0f}s; see {server.log_path}")
        if pattern.search(server.log_path.read_bytes()):
            return time.monotonic() - server.started_at
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for every model")
    parser.add_argument("--keep", help="directory for the models and the server log (default: a temporary one)")
    parser.add_argument("flags", nargs="*", help="extra tessera serve flags (default: none)")
    args = parser.parse_args(argv)
    from cluster.client.client import TesseraClient

    root = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="many-models-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    names, config, bundle_base = write_models(root, args.models)
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
    want = expected_answer(bundle_base, x)
    port, rest = free_port(), free_port()
    argv_serve = [
        str(REPO / ".venv" / "bin" / "tessera"), "serve", f"--port={port}", f"--rest_api_port={rest}",
        f"--model_config_file={config}", *args.flags,
    ]
    server = ServerProcess("tessera", argv_serve, port, root / "serve.log")
    server.start()
    assert server.proc is not None
    try:
        available_s = wait_all_available(server, args.timeout)

        def check(name: str) -> str | None:
            with TesseraClient(server.target, timeout=60) as client:
                got = client.predict(name, {"x": x}, signature_name="predict")
            for alias, array in want.items():
                if alias not in got or not np.allclose(got[alias], array, atol=1e-5):
                    return f"{name}: {alias} = {got.get(alias)!r}, want {array!r}"
            return None

        with ThreadPoolExecutor(8) as pool:
            wrong = [w for w in pool.map(check, names) if w is not None]
        answered_s = time.monotonic() - server.started_at
        pss, by_label = session_pss_mb(server.proc.pid)
        load = os.getloadavg()
    finally:
        server.stop()
    hosts = by_label.get("ray::ReplicaHost", (0, 0.0))
    print(f"models: {len(names)} copies of iris; flags: make serve's defaults{' + ' + ' '.join(args.flags) if args.flags else ''}")
    print(f"all AVAILABLE after {available_s:.1f}s; all {len(names)} answered Predict after {answered_s:.1f}s; "
          f"wrong answers: {len(wrong)}")
    for line in wrong[:5]:
        print("  ", line)
    print(f"total PSS of the session: {pss:.0f} MiB ({pss / 1024:.2f} GiB); "
          f"replica hosts: {hosts[0]} processes, {hosts[1]:.0f} MiB")
    for label, (count, mib) in sorted(by_label.items(), key=lambda kv: -kv[1][1]):
        print(f"  {label}: {count} process(es), {mib:.0f} MiB")
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (2 cores, shared)")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
