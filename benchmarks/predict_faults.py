"""Page faults per thread, and the gateway loop's worst gap, over a series of ~100 MB Predicts.

    python -m benchmarks.predict_faults [--predicts 8] [--flags '--gateway_retained_heap_bytes=0']

A real `tessera serve` (the chaos scenarios' cluster: embedded Ray, loopback, models `bench` and
`target`), a sender process that sends the chaos scenario's two ~95 MiB Predicts on `target`
(float_val, tensor_content) in turn, one at a time, and the chaos stream (normal Predicts on
`bench`, and gRPC health checks back to back on their own connection: the probe of the gateway's
loop). Before and after each Predict the minor page faults of every thread of the gateway process
and of each replica host process are read from /proc/<pid>/task/<tid>/stat, so each line says
where fresh pages were faulted in: on the gateway's loop thread (the process's main thread), on
its other threads, on the replica host's; and the loop thread's CPU time over the Predict. Counted
events and CPU time, which a crowded machine changes far less than the probe's worst (wall time),
printed beside them.

`--flags` (or `TESSERA_CHAOS_SERVE_FLAGS`) adds `tessera serve` flags, e.g. a before/after of one
setting. `--env NAME=VALUE` sets the server's environment (e.g. `MALLOC_ARENA_MAX=1`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

from benchmarks.chaos.scenarios_input import SENDER_PREAMBLE

_SENDER = SENDER_PREAMBLE + """
n = 0
while sys.stdin.readline():
    started = time.perf_counter()
    try:
        call(bodies[n % 2], timeout=60)
        code = "OK"
    except grpc.RpcError as err:
        code = err.code().name
    print(code, started, time.perf_counter(), flush=True)
    n += 1
"""


def thread_faults(pid: int) -> dict[int, tuple[str, int]]:
    """{tid: (comm, minor faults)} of every thread of `pid` (empty if it is gone), and under tid -1
    the process's system CPU time in ms (zeroing fresh pages is kernel time: huge pages, which numpy
    asks for, fault once per 2 MiB, so their cost shows here and not in the count)."""
    out: dict[int, tuple[str, int]] = {}
    try:
        tasks = list(pathlib.Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(task.name)] = (comm, int(fields[7]))  # minflt is stat's 10th field
    tick_ms = 1000 // os.sysconf("SC_CLK_TCK")
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        out[-1] = ("stime_ms", int(stat[stat.rindex(")") + 2 :].split()[12]) * tick_ms)
        stat = pathlib.Path(f"/proc/{pid}/task/{pid}/stat").read_text()  # the main thread: the loop's
        fields = stat[stat.rindex(")") + 2 :].split()
        out[-2] = ("loop_cpu_ms", (int(fields[11]) + int(fields[12])) * tick_ms)
    except OSError:
        pass
    return out


def _delta(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]]) -> dict[int, tuple[str, int]]:
    return {tid: (comm, n - before.get(tid, (comm, 0))[1]) for tid, (comm, n) in after.items()}


def memory(pid: int) -> dict[str, int]:
    """The process's resident set and its brk heap's size, in MiB, and its big anonymous mappings
    (over 32 MiB, outside the brk heap: chunks glibc mmap'd, or other arenas' heaps)."""
    out = {"rss": 0, "heap": 0, "big_maps": 0}
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss"] = int(line.split()[1]) // 1024
        for line in pathlib.Path(f"/proc/{pid}/maps").read_text().splitlines():
            parts = line.split()
            start, end = (int(x, 16) for x in parts[0].split("-"))
            if parts[-1] == "[heap]":
                out["heap"] += (end - start) >> 20
            elif len(parts) == 5 and end - start > 32 << 20:
                out["big_maps"] += 1
    except OSError:
        pass
    return out


def replica_hosts(leader: int) -> list[int]:
    from benchmarks.servers import session_pids

    found = []
    for pid in session_pids(leader):
        try:
            if b"ReplicaHost" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return sorted(found)


def _summary(pid: int, delta: dict[int, tuple[str, int]]) -> dict[str, object]:
    loop = delta.get(pid, ("", 0))[1]
    others = sorted(((n, f"{comm}/{tid}") for tid, (comm, n) in delta.items() if tid not in (pid, -1, -2) and n),
                    reverse=True)
    return {"main": loop, "others": sum(n for n, _ in others), "top": [f"{w}:{n}" for n, w in others[:3]],
            "stime_ms": delta.get(-1, ("", 0))[1], "main_cpu_ms": delta.get(-2, ("", 0))[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predicts", type=int, default=8)
    parser.add_argument("--flags", default="", help="more `tessera serve` flags")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    parser.add_argument("--json", type=pathlib.Path, help="write the rows here too")
    args = parser.parse_args()
    if args.flags:
        os.environ["TESSERA_CHAOS_SERVE_FLAGS"] = (os.environ.get("TESSERA_CHAOS_SERVE_FLAGS", "") + " " + args.flags).strip()
    for item in args.env:
        name, value = item.split("=", 1)
        os.environ[name] = value  # benchmarks.servers.server_env() starts from os.environ

    from benchmarks.chaos.scenarios_input import _cluster, _Stream, _wait_available

    cluster = _cluster()
    _wait_available(cluster, "bench", 120)
    assert cluster.server.proc is not None
    gateway = cluster.server.proc.pid
    sender = subprocess.Popen([sys.executable, "-c", _SENDER, cluster.server.target], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=pathlib.Path(__file__).parents[1])
    assert sender.stdin is not None and sender.stdout is not None
    rows = []
    try:
        size = int(sender.stdout.readline())
        hosts = replica_hosts(gateway)
        print(f"gateway pid {gateway}, replica hosts {hosts}, {size / 2**20:.0f} MiB Predicts,"
              f" flags {os.environ.get('TESSERA_CHAOS_SERVE_FLAGS', '')!r} env {args.env}", flush=True)
        with _Stream(cluster) as stream:
            for n in range(args.predicts):
                time.sleep(0.5)
                before = {pid: thread_faults(pid) for pid in (gateway, *hosts)}
                sender.stdin.write("go\n")
                sender.stdin.flush()
                code, started, ended = sender.stdout.readline().split()
                time.sleep(0.3)  # the answer's buffers freed, the loop settled
                after = {pid: thread_faults(pid) for pid in (gateway, *hosts)}
                probe = stream.probe_worst(float(started), float(ended))
                gw = _summary(gateway, _delta(before[gateway], after[gateway]))
                rh = {str(pid): _summary(pid, _delta(before[pid], after[pid])) for pid in hosts}
                load = os.getloadavg()[0]
                gw["memory"] = memory(gateway)
                row = {"n": n + 1, "kind": ("float_val", "tensor_content")[n % 2], "code": code,
                       "seconds": round(float(ended) - float(started), 2), "probe_ms": round(probe * 1000),
                       "gateway": gw, "hosts": rh, "load": round(load, 2)}
                rows.append(row)
                hosts_text = "; ".join(f"host {pid}: main {s['main']} others {s['others']} {s['top']} sys {s['stime_ms']} ms"
                                       for pid, s in rh.items() if s["main"] or s["others"])
                print(f"{n + 1} {row['kind']:<14} {code} {row['seconds']:5.2f} s  probe {row['probe_ms']:4d} ms"
                      f"  gateway loop {gw['main']:6d} faults, {gw['main_cpu_ms']} ms CPU; others {gw['others']:6d}"
                      f" {gw['top']} sys {gw['stime_ms']} ms"
                      f" {gw['memory']}  {hosts_text}"
                      f"  load {load:.2f}", flush=True)
    finally:
        sender.kill()  # by its pid
        sender.wait(10)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
