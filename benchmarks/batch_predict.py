"""`tessera batch-predict` against a plain loop over the same files, side by side in one run.

    .venv/bin/python benchmarks/batch_predict.py [--rows 4000000] [--files 16] [--work /tmp/bp-bench]

Generates iris-like rows (the example iris bundle's four float features plus an id) as Parquet,
then times, on the same files:

- loop (bundle): pyarrow reads each file, the bundle's `predict` runs in-process in batches, the
  outputs are written as Parquet (what a user would write instead of batch-predict);
- loop (sklearn): the same loop with scikit-learn's own `predict_proba`;
- batch-predict (`cluster.batch_predict.predict.run`, what the command runs, on one embedded Ray) with the
  `predict` and `serving_default` (Classify over tf.Example features) signatures, at
  --concurrency=1 and 2, timed from every worker ready (model loaded) to the output published. The
  fixed cost is printed on its own: the whole `tessera batch-predict` command on 1,000 rows,
  ray.init, and a 1,000-row job; and the start (listing, workers, model) of each big job.

- two loops at once: the bundle loop (one Arrow thread) in two processes, each over half the
  files, started together: what two processes get from the machine at that moment, the ceiling
  for --concurrency=2 with batch-predict's per-row cost equal to the loop's.

Prints seconds, rows/s and the ratios the issue asks for (against the faster of the bundle and
scikit-learn loops, and against the fastest loop of all), the CPU time of the loop and of the
workers (rows per CPU-second: what each row costs, whatever else the machine is running), and how
busy the workers were. Wall times on a shared 2-core machine are noisy: the load average is
printed; run it twice.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ray  # noqa: E402

from cluster.batch_predict.feeding import InputSelection  # noqa: E402
from cluster.batch_predict.predict import JobReport, run, start_ray  # noqa: E402
from cluster.batch_predict.worker import BatchJob  # noqa: E402
from examples.export_models import IRIS_FEATURES, export_trained, train_iris  # noqa: E402
from exporter.servable import load_servable  # noqa: E402
from exporter.storage import list_versions  # noqa: E402

BATCH = 8192


def generate(work: pathlib.Path, rows: int, files: int) -> tuple[pathlib.Path, pathlib.Path, object]:
    trained = train_iris()
    models = work / "models" / "iris"
    if not models.exists():
        export_trained(trained, str(models))
    data = work / f"in-{rows}-{files}"
    if not data.exists():
        rng = np.random.default_rng(0)
        tmp = work / "in.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        per = rows // files
        for f in range(files):
            x = trained.x_test[rng.integers(0, len(trained.x_test), per)] + rng.normal(0, 0.1, (per, 4))
            table = pa.table({"id": np.arange(f * per, (f + 1) * per), **{
                name: x[:, i].astype(np.float32) for i, name in enumerate(IRIS_FEATURES)}})
            pq.write_table(table, tmp / f"part-{f:03d}.parquet")
        tmp.rename(data)
    tiny = work / "tiny"
    if not tiny.exists():
        tiny.mkdir()
        pq.write_table(pq.read_table(next(data.iterdir())).slice(0, 1000), tiny / "part-0.parquet")
    return models, data, trained


def plain_loop(data: pathlib.Path, out: pathlib.Path, predict: object, threads: int | None = None) -> float:
    """pyarrow reads each file in batches, `predict` (x -> output columns) runs, Parquet is written:
    the id and the same output columns batch-predict writes for the `predict` signature. `threads`:
    Arrow's thread pool (Parquet decoding, encoding); default: one per CPU. Prints the CPU time."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    default_threads = pa.cpu_count()
    pa.set_cpu_count(threads or default_threads)
    cpu = time.process_time()
    started = time.perf_counter()
    for path in sorted(data.iterdir()):
        writer = None
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH):
            x = np.column_stack([batch.column(n).to_numpy() for n in IRIS_FEATURES])
            outputs = predict(x)  # type: ignore[operator]
            table = pa.table({"id": batch.column("id"), "class_ids": pa.array(outputs["class_ids"]),
                              "probabilities": pa.FixedSizeListArray.from_arrays(
                                  pa.array(outputs["probabilities"].astype(np.float32).reshape(-1)), 3)})
            writer = writer or pq.ParquetWriter(out / path.name, table.schema)
            writer.write_table(table)
        if writer:
            writer.close()
    elapsed = time.perf_counter() - started
    LOOP_CPU.append((elapsed, time.process_time() - cpu))
    pa.set_cpu_count(default_threads)
    return elapsed


LOOP_CPU: list[tuple[float, float]] = []  # (wall, CPU) of each loop run, for the cores a loop keeps busy


def _bundle(models: pathlib.Path) -> object:
    version = list_versions(models)
    servable = load_servable("tensorflow", version[max(version)])

    def bundle(x: np.ndarray) -> dict[str, np.ndarray]:
        return servable.run("predict", {"x": x.astype(np.float32)})

    return bundle


def loop_child(models: pathlib.Path, files: list[pathlib.Path], out: pathlib.Path) -> None:
    """One of the two parallel loops: loads the model, says so, runs on "go", prints start, end, CPU."""
    data = out.parent / (out.name + ".in")
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    for f in files:
        (data / f.name).symlink_to(f)
    bundle = _bundle(models)
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.time()
    plain_loop(data, out, bundle, threads=1)
    print(started, time.time(), LOOP_CPU[-1][1], flush=True)


def parallel_loops(models: pathlib.Path, data: pathlib.Path, work: pathlib.Path) -> tuple[float, float]:
    """Two bundle loops at once in two processes, each over half the files: (wall, CPU)."""
    files = sorted(data.iterdir())
    children = [subprocess.Popen([sys.executable, __file__, "--loop_child", str(work / f"out-loop{i}"),
                                  "--work", str(work), *map(str, files[i::2])],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for i in range(2)]
    for child in children:  # both have imported everything and loaded the model
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    times = []
    for child in children:
        out, _ = child.communicate(timeout=600)
        if child.returncode:
            raise SystemExit("a loop child failed")
        times.append(tuple(map(float, out.split()[-3:])))
    return max(t[1] for t in times) - min(t[0] for t in times), sum(t[2] for t in times)


def cli_fixed_cost(models: pathlib.Path, tiny: pathlib.Path, out: pathlib.Path) -> float:
    """One `tessera batch-predict` on 1,000 rows, as a user runs it: imports, Ray, workers, model."""
    args = [str(REPO / ".venv" / "bin" / "tessera"), "batch-predict", f"--model_path={models}",
            f"--input={tiny}", f"--output={out}", "--overwrite", "--signature=predict",
            "--input_columns=x:" + ",".join(IRIS_FEATURES)]
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"},
                          timeout=600)
    if done.returncode:
        raise SystemExit(f"batch-predict failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def job(models: pathlib.Path, signature: str) -> BatchJob:
    stacked = {"x": IRIS_FEATURES} if signature == "predict" else {}
    return BatchJob(str(models), signature=signature, selection=InputSelection(stacked=stacked), batch_size=BATCH)


def timed_run(models: pathlib.Path, data: pathlib.Path, out: pathlib.Path, signature: str,
              concurrency: int) -> JobReport:
    # whole_cluster: as the command does on its embedded Ray, the workers share all its CPUs.
    report = run(job(models, signature), [str(data)], str(out), concurrency=concurrency, overwrite=True,
                 whole_cluster=True)
    assert report.counts.rows_failed == report.counts.bad_rows == 0
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2, help="each figure is the best of this many runs")
    parser.add_argument("--work", default="/tmp/bp-bench")
    parser.add_argument("--loop_child", default=None, help=argparse.SUPPRESS)  # one of the parallel loops
    parser.add_argument("child_files", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = pathlib.Path(args.work)
    if args.loop_child:
        loop_child(work / "models" / "iris", [pathlib.Path(f) for f in args.child_files], pathlib.Path(args.loop_child))
        return
    models, data, trained = generate(work, args.rows, args.files)
    rows = args.rows // args.files * args.files
    bundle = _bundle(models)

    def sklearn(x: np.ndarray) -> dict[str, np.ndarray]:
        probabilities = trained.estimator.predict_proba(x)  # type: ignore[attr-defined]
        return {"probabilities": probabilities, "class_ids": probabilities.argmax(axis=1)}

    print(f"{rows:,} rows in {args.files} Parquet files; batches of {BATCH}; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.1f}; best of {args.repeat}")
    cli = cli_fixed_cost(models, work / "tiny", work / "out-tiny")
    started = time.perf_counter()
    start_ray(None, num_cpus=os.cpu_count())  # as the command starts its embedded Ray
    ray_start = time.perf_counter() - started
    results: dict[str, list[float]] = {}
    for _ in range(args.repeat):  # interleaved, so the machine's noise falls on every figure alike
        results.setdefault("loop (bundle)", []).append(plain_loop(data, work / "out-loop", bundle))
        results.setdefault("loop (sklearn)", []).append(plain_loop(data, work / "out-loop", sklearn))
        results.setdefault("loop (bundle), 1 Arrow thread", []).append(
            plain_loop(data, work / "out-loop", bundle, threads=1))
        two = parallel_loops(models, data, work)
        results.setdefault("two loops at once", []).append(two[0])
        results.setdefault("cpu two loops at once", []).append(two[1])
        for c in (1, 2):
            tiny = timed_run(models, work / "tiny", work / "out-tiny", "predict", c)
            results.setdefault(f"fixed c={c}", []).append(tiny.start_s + tiny.run_s)
            for signature in ("predict", "serving_default"):
                report = timed_run(models, data, work / "out-bp", signature, c)
                results.setdefault(f"start {signature} c={c}", []).append(report.start_s)
                results.setdefault(f"batch-predict {signature} c={c}", []).append(report.run_s)
                results.setdefault(f"cpu {signature} c={c}", []).append(report.counts.cpu_s)
                results.setdefault(f"busy {signature} c={c}", []).append(report.busy)
    ray.shutdown()
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    best = {name: min(values) for name, values in results.items()}
    print(f"{'fixed cost: the tessera command, 1,000 rows':46s} {cli:7.2f} s")
    print(f"{'  of which ray.init (embedded local Ray)':46s} {ray_start:7.2f} s")
    for c in (1, 2):
        print(f"{'  of which a 1,000-row job, c=' + str(c):46s} {best[f'fixed c={c}']:7.2f} s  "
              f"(listing, workers, model: {best[f'start predict c={c}']:.2f} s on the big input)")
    fastest = min(best["loop (bundle)"], best["loop (sklearn)"])
    fastest_of_all = min(fastest, best["loop (bundle), 1 Arrow thread"])
    for name in ("loop (bundle)", "loop (sklearn)", "loop (bundle), 1 Arrow thread", "two loops at once"):
        print(f"{name:46s} {best[name]:7.2f} s  {rows / best[name]:12,.0f} rows/s")
    print(f"{'  CPU time of the two loops at once':46s} {best['cpu two loops at once']:7.2f} s  "
          f"(wall {fastest_of_all / best['two loops at once']:.2f}x the fastest single loop: what two "
          "processes got from the machine)")
    cores = [cpu / wall for wall, cpu in LOOP_CPU]
    print(f"{'  CPU time / wall time of the loops':46s} {min(cores):7.2f} .. {max(cores):.2f} "
          "(the cores a 'plain' loop keeps busy through Arrow's threads)")
    loop_cpu = min(cpu for _, cpu in LOOP_CPU[0::3])  # the bundle loop with Arrow's default threads
    print(f"{'  CPU time of the loop (bundle)':46s} {loop_cpu:7.2f} s  {rows / loop_cpu:12,.0f} rows per CPU-s")
    for signature in ("predict", "serving_default"):
        for c in (1, 2):
            seconds = best[f"batch-predict {signature} c={c}"]
            cpu = best[f"cpu {signature} c={c}"]
            print(f"{'batch-predict ' + signature + ' c=' + str(c):46s} {seconds:7.2f} s  "
                  f"{rows / seconds:12,.0f} rows/s  {fastest / seconds:5.2f}x the faster loop "
                  f"({fastest_of_all / seconds:.2f}x the fastest); workers' CPU {cpu:.2f} s "
                  f"({rows / cpu:,.0f} rows per CPU-s), busy {max(results[f'busy {signature} c={c}']):.0%}")
    for c in (1, 2):
        ratio = best[f"batch-predict serving_default c={c}"] / best[f"batch-predict predict c={c}"]
        print(f"Classify time / Predict time, c={c}: {ratio:.2f}")


if __name__ == "__main__":
    main()
