"""The KubeRay manifests: valid against KubeRay's CRD, and consistent with the code they run.

The RayCluster is validated offline against the CRD's openAPIV3Schema (shared/k8s); the gateway's
command line is parsed by `tessera serve`'s own flag parser; probes, ports and the Service must
agree with what the gateway serves; the model config must parse. Overlays are built with
`kubectl kustomize` when kubectl is installed.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
from typing import Any

import jsonschema
import pytest
import yaml

from cluster.flags import build_parser
from cluster.gateway.config_converters import server_config_from_text
from cluster.gateway.rest_server import LIVENESS_PATH, READINESS_PATH

K8S = pathlib.Path(__file__).resolve().parents[2] / "k8s"


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _base() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in _docs((K8S / "base" / name).read_text())]


def _overlays() -> list[pathlib.Path]:
    return sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))


def _built(overlay: pathlib.Path) -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60, check=True)
    return _docs(out.stdout)


@pytest.fixture(scope="module")
def raycluster_schema(kuberay_crds_dir: pathlib.Path) -> dict[str, Any]:
    crd = yaml.safe_load((kuberay_crds_dir / "ray.io_rayclusters.yaml").read_text())
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def _gateway(cluster: dict[str, Any]) -> dict[str, Any]:
    containers = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    (gateway,) = [c for c in containers if c.get("command", [])[:2] == ["tessera", "serve"]]
    return gateway


def check_manifests(docs: list[dict[str, Any]], schema: dict[str, Any]) -> None:
    cluster = _one(docs, "RayCluster")
    jsonschema.validate(cluster, schema)  # raises with the path of the first violation
    gateway = _gateway(cluster)
    args = build_parser().parse_args(gateway["command"][2:])  # the real flags, or exit 2
    assert args.ray_address, "the gateway must join the RayCluster, not start its own Ray"
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports == {"grpc": args.port, "http": args.rest_api_port}
    assert gateway["readinessProbe"]["httpGet"] == {"path": READINESS_PATH, "port": args.rest_api_port}
    assert gateway["livenessProbe"]["httpGet"] == {"path": LIVENESS_PATH, "port": args.rest_api_port}
    assert args.max_replicas is None or args.max_replicas >= args.num_replicas

    config_map = _one(docs, "ConfigMap")
    mount = {m["name"]: m["mountPath"] for m in gateway["volumeMounts"]}
    volumes = cluster["spec"]["headGroupSpec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["configMap"]["name"] == config_map["metadata"]["name"]]
    config_path = pathlib.PurePosixPath(args.model_config_file)
    assert str(config_path.parent) == mount[volume["name"]]
    config = server_config_from_text(config_map["data"][config_path.name])
    assert config.models

    service = _one(docs, "Service")
    assert service["spec"]["selector"] == {"ray.io/cluster": cluster["metadata"]["name"], "ray.io/node-type": "head"}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    namespaces = {d["metadata"].get("namespace") for d in docs}
    assert len(namespaces) == 1


def test_base_manifests(raycluster_schema: dict[str, Any]) -> None:
    check_manifests(_base(), raycluster_schema)


def test_a_broken_cluster_is_caught(raycluster_schema: dict[str, Any]) -> None:
    docs = _base()
    _one(docs, "RayCluster")["spec"]["workerGroupSpecs"][0].pop("groupName")
    with pytest.raises(jsonschema.ValidationError, match="groupName"):
        check_manifests(docs, raycluster_schema)
    docs = _base()
    _gateway(_one(docs, "RayCluster"))["command"].append("--no_such_flag=1")
    with pytest.raises(SystemExit):
        check_manifests(docs, raycluster_schema)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", _overlays(), ids=lambda p: p.name)
def test_overlays_build_and_stay_valid(overlay: pathlib.Path, raycluster_schema: dict[str, Any]) -> None:
    check_manifests(_built(overlay), raycluster_schema)
