"""The batch-prediction RayJob: valid against KubeRay's CRD, its command parsed by batch-predict's
own flag parser, and its workers fitting the cluster it starts."""

from __future__ import annotations

import pathlib
import shlex
from typing import Any

import jsonschema
import pytest
import yaml

from cluster.batch_predict.predict import build_parser
from cluster.batch_predict.resources import UnschedulableError, plan_workers

K8S = pathlib.Path(__file__).resolve().parents[2] / "k8s"


@pytest.fixture(scope="module")
def rayjob_schema(kuberay_crds_dir: pathlib.Path) -> dict[str, Any]:
    crd = yaml.safe_load((kuberay_crds_dir / "ray.io_rayjobs.yaml").read_text())
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


def _rayjob() -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all((K8S / "batch" / "rayjob.yaml").read_text()) if d]
    return doc


def check_rayjob(job: dict[str, Any], schema: dict[str, Any]) -> None:
    jsonschema.validate(job, schema)
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["tessera", "batch-predict"]
    args = build_parser().parse_args(words[2:])  # the real flags, or exit 2
    assert args.ray_address, "the job must join the RayJob's cluster, not start its own Ray"
    for uri in (args.model_path, args.output, *args.input):
        assert "://" in uri, f"{uri}: every pod must see the same storage"
    cluster = job["spec"]["rayClusterSpec"]
    worker_cpus = sum(float(g["rayStartParams"]["num-cpus"]) * g["replicas"] for g in cluster["workerGroupSpecs"])
    head_cpus = float(cluster["headGroupSpec"]["rayStartParams"].get("num-cpus", 0))
    # What batch-predict checks at start on a cluster that cannot grow: the workers fit.
    plan_workers(args.concurrency, args.num_cpus, worker_cpus + head_cpus, can_grow=False)
    for group in cluster["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        assert float(container["resources"]["limits"]["cpu"]) >= float(group["rayStartParams"]["num-cpus"])
    raycluster = yaml.safe_load((K8S / "base" / "raycluster.yaml").read_text())
    images = {c["image"] for c in raycluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]}
    assert {c["image"] for c in cluster["headGroupSpec"]["template"]["spec"]["containers"]} <= images


def test_rayjob_manifest(rayjob_schema: dict[str, Any]) -> None:
    check_rayjob(_rayjob(), rayjob_schema)


def test_a_broken_rayjob_is_caught(rayjob_schema: dict[str, Any]) -> None:
    job = _rayjob()
    job["spec"]["submitterConfig"]["backoffLimit"] = "zero"
    with pytest.raises(jsonschema.ValidationError, match="backoffLimit|'zero'"):
        check_rayjob(job, rayjob_schema)
    job = _rayjob()
    job["spec"]["entrypoint"] += " --no_such_flag=1"
    with pytest.raises(SystemExit):
        check_rayjob(job, rayjob_schema)
    job = _rayjob()
    job["spec"]["entrypoint"] = job["spec"]["entrypoint"].replace("--concurrency=4", "--concurrency=5")
    with pytest.raises(UnschedulableError, match="5 workers of 1 CPUs need 5 CPUs; the cluster has 4"):
        check_rayjob(job, rayjob_schema)
