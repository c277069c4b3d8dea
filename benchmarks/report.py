"""results.json -> results.md (tables, machine, versions, the issue's ratios) and results.png.

    python -m benchmarks.report   # re-renders both from benchmarks/results.json
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
TARGET_C = 32  # the targets are taken at concurrency 32 unless said

# name -> (colour, marker) so a server keeps its look across runs.
_STYLE = {
    "plain": ("#555555", "s"),
    "tessera-1": ("#1f77b4", "o"),
    "tessera-2": ("#2ca02c", "D"),
    "tessera-1-nobatch": ("#17becf", "v"),
    "tessera-1-t2ms": ("#9467bd", "P"),
    "rayserve": ("#d62728", "^"),
    "plain-onnx": ("#8c564b", "X"),
    "tessera-1-onnx": ("#ff7f0e", "*"),
}


def _level(server: dict[str, Any] | None, concurrency: int) -> dict[str, Any] | None:
    if server is None:
        return None
    return next((lv for lv in server.get("levels", []) if lv["concurrency"] == concurrency), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each as {what, value, target, ok}; None values where a server is missing."""
    servers = {s["name"]: s for s in results["servers"] if not s.get("error")}

    def rps(name: str, c: int = TARGET_C) -> float | None:
        lv = _level(servers.get(name), c)
        return lv["rps"] if lv else None

    def p50(name: str, c: int = 1) -> float | None:
        lv = _level(servers.get(name), c)
        return lv["p50_ms"] if lv else None

    rows = []
    for name in ("tessera-1", "tessera-2", "tessera-1-t2ms", "tessera-1-nobatch"):
        if name not in servers:
            continue
        label = servers[name]["label"]
        rows += [
            {"what": f"{label} / Ray Serve throughput, c={TARGET_C}", "value": _ratio(rps(name), rps("rayserve")),
             "target": ">= 4", "ok": lambda v: v >= 4},
            {"what": f"{label} / plain throughput, c={TARGET_C}", "value": _ratio(rps(name), rps("plain")),
             "target": ">= 0.8", "ok": lambda v: v >= 0.8},
            {"what": f"{label} p50 / plain p50, c=1", "value": _ratio(p50(name), p50("plain")),
             "target": "<= 3", "ok": lambda v: v <= 3},
        ]
    for c in (TARGET_C, 128):
        rows.append({"what": f"2 replicas / 1 replica throughput, c={c}", "value": _ratio(rps("tessera-2", c), rps("tessera-1", c)),
                     "target": ">= 1" if c == TARGET_C else "(info)", "ok": (lambda v: v >= 1) if c == TARGET_C else None})
    rows.append({"what": f"plain / Ray Serve throughput, c={TARGET_C}", "value": _ratio(rps("plain"), rps("rayserve")),
                 "target": "(info)", "ok": None})
    # ONNX in Triton's layout (issue 8): Tessera vs the plain server on the same onnxruntime session.
    rows += [
        {"what": f"Tessera 1 replica, ONNX / plain ONNX throughput, c={TARGET_C}",
         "value": _ratio(rps("tessera-1-onnx"), rps("plain-onnx")), "target": ">= 0.8", "ok": lambda v: v >= 0.8},
        {"what": "Tessera 1 replica, ONNX p50 / plain ONNX p50, c=1",
         "value": _ratio(p50("tessera-1-onnx"), p50("plain-onnx")), "target": "<= 3", "ok": lambda v: v <= 3},
        {"what": f"ONNX / numpy ops throughput, Tessera 1 replica, c={TARGET_C}",
         "value": _ratio(rps("tessera-1-onnx"), rps("tessera-1")), "target": "(info)", "ok": None},
    ]
    for row in rows:
        check = row.pop("ok")
        row["ok"] = None if (check is None or row["value"] is None) else bool(check(row["value"]))
    return rows


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def render_markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    out = ["# `make bench` results", ""]
    out += [
        f"Run {meta['date']}: one model ({meta['model']}), batch-1 Predict requests over gRPC on loopback, "
        f"closed loop at concurrency {', '.join(map(str, meta['levels']))}; each level {meta['warmup_s']:g} s "
        f"warm-up then {meta['duration_s']:g} s measured (requests completing in the window). "
        f"Load generator: {meta['loadgen']}.",
        "",
        "## Targets (issue 4)",
        "",
        "| ratio | measured | target | met |",
        "|---|---:|---:|:---:|",
    ]
    for row in ratios(results):
        met = "" if row["ok"] is None else ("yes" if row["ok"] else "**no**")
        out.append(f"| {row['what']} | {_fmt(row['value'], 3)} | {row['target']} | {met} |")
    out += ["", "## Results", "",
            "| server | concurrency | req/s | p50 ms | p90 ms | p99 ms | errors | loadgen CPU % |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in results["servers"]:
        if s.get("error"):
            out.append(f"| {s['label']} | — | failed: {s['error']} | | | | | |")
            continue
        for lv in s["levels"]:
            errs = str(lv["errors"]) + (f" {lv['error_codes']}" if lv["errors"] else "")
            out.append(
                f"| {s['label']} | {lv['concurrency']} | {lv['rps']:.0f} | {_fmt(lv['p50_ms'])} | {_fmt(lv['p90_ms'])} "
                f"| {_fmt(lv['p99_ms'])} | {errs} | {lv['client_cpu_pct']:.0f} |"
            )
    out += ["", "## Servers", "", "| server | configuration | first correct answer after | RSS after the run | notes |",
            "|---|---|---:|---:|---|"]
    for s in results["servers"]:
        ready = f"{s['ready_after_s']:.1f} s" if s.get("ready_after_s") is not None else "—"
        rss = f"{s['rss_mb']:.0f} MiB" if s.get("rss_mb") else "—"
        out.append(f"| {s['label']} | {s['config']} | {ready} | {rss} | {'; '.join(s.get('notes', [])) or ''} |")
    out += ["", f"## Where the CPU goes (measured window, % of one core; {results['meta']['machine']['nproc']} cores = "
            f"{100 * results['meta']['machine']['nproc']}%)", "",
            "| server | concurrency | server processes (≥ 1%) | server total | load generator |",
            "|---|---:|---|---:|---:|"]
    for s in results["servers"]:
        for lv in s.get("levels", []):
            cpu = lv.get("server_cpu_pct")
            if not cpu or lv["concurrency"] not in (1, TARGET_C):
                continue
            parts = ", ".join(f"{name} {pct:.0f}" for name, pct in cpu.items() if pct >= 1)
            out.append(f"| {s['label']} | {lv['concurrency']} | {parts} | {sum(cpu.values()):.0f} | {lv['client_cpu_pct']:.0f} |")
    m = meta["machine"]
    out += ["", "## Machine and versions", "",
            f"- {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']:.1f} GiB memory, {m['platform']}",
            "- load average before each server: "
            + ", ".join(f"{s['label']} {s.get('loadavg_before', '—')}" for s in results["servers"]),
            "- " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
            f"- code measured: {meta.get('code', 'unknown')}",
            "", "## Notes", ""]
    out += [f"- {n}" for n in meta.get("notes", [])]
    out += ["", "![throughput and p99 against concurrency](results.png)", ""]
    return "\n".join(out)


def write_plot(results: dict[str, Any], path: pathlib.Path) -> None:
    """Two panels: throughput and p99 latency against concurrency, one line per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax_rps, ax_p99) = plt.subplots(1, 2, figsize=(12, 5.6), constrained_layout=True)
    levels = results["meta"]["levels"]
    for s in results["servers"]:
        if s.get("error") or not s.get("levels"):
            continue
        colour, marker = _STYLE.get(s["name"], (None, "o"))
        cs = [lv["concurrency"] for lv in s["levels"]]
        ax_rps.plot(cs, [lv["rps"] for lv in s["levels"]], marker=marker, color=colour, label=s["label"])
        ax_p99.plot(cs, [lv["p99_ms"] for lv in s["levels"]], marker=marker, color=colour, label=s["label"])
    for ax, title, ylabel in ((ax_rps, "Throughput (higher is better)", "requests / s"),
                              (ax_p99, "p99 latency (lower is better)", "ms (log scale)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrency (closed loop, batch-1 requests)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_rps.set_ylim(bottom=0)
    ax_p99.set_yscale("log")
    ax_p99.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    # One legend under both panels: inside a panel it hides points.
    handles, labels = ax_rps.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False)
    m = results["meta"]["machine"]
    fig.suptitle(f"DNN 64-256-256-10 over gRPC Predict, {m['nproc']} CPUs ({m['cpu_model']}), {results['meta']['date']}")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(results: dict[str, Any], out_dir: pathlib.Path = HERE) -> None:
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out_dir / "results.md").write_text(render_markdown(results))
    write_plot(results, out_dir / "results.png")


def main() -> None:
    results = json.loads((HERE / "results.json").read_text())
    (HERE / "results.md").write_text(render_markdown(results))
    write_plot(results, HERE / "results.png")


if __name__ == "__main__":
    main()
