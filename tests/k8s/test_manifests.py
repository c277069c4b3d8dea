"""The KubeRay manifests: valid offline, and consistent with the code they run.

- The RayCluster is validated against KubeRay's CRD (openAPIV3Schema, shared/k8s); the Deployment,
  HorizontalPodAutoscaler, PodDisruptionBudget, Service and ConfigMap against Kubernetes' own
  schemas (kubernetes-validate, strict: unknown fields are errors). No API server is needed.
- The controller's command line is parsed by `tessera serve`'s flag parser; the gateway pods'
  script is split into its commands (shlex), its `ray start` parsed by Ray's own CLI (click) and its
  `tessera gateway` by `tessera gateway`'s parser: a flag that does not exist, or a bad value, fails
  here.
- The wiring: the Service reaches the gateway pods and not Ray's head; each gateway pod joins the
  head's GCS port as a Ray node with no CPUs (so no replica lands there) and its gateway is a driver
  of that node; gateways end connections after an age (so
  long-lived gRPC clients reach new gateway pods); probes and ports agree with what the gateway
  serves; the HPA scales the Deployment on CPU, which the pods request; the KubeRay autoscaler is
  on and its worker group has room for every replica Tessera may ask for.
- Overlays are built with `kubectl kustomize` (offline) where kubectl is installed, and checked
  the same way.
"""

from __future__ import annotations

import copy
import pathlib
import shlex
import shutil
import subprocess
from typing import Any

import click
import jsonschema
import pytest
import yaml

from cluster.flags.gateway import build_gateway_parser
from cluster.flags.serve import build_parser
from cluster.gateway.config_converters import server_config_from_text
from cluster.gateway.rest_server import LIVENESS_PATH, READINESS_PATH

K8S = pathlib.Path(__file__).resolve().parents[2] / "k8s"
KUBERNETES_VERSION = "1.32"  # the oldest Kubernetes the manifests are checked against
GCS_PORT = 6379


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


def _command(container: dict[str, Any], program: list[str]) -> list[str]:
    assert container["command"][: len(program)] == program, container["command"]
    return list(container["command"][len(program):])


def script_commands(container: dict[str, Any]) -> list[list[str]]:
    """The commands of a container that runs a `bash -c` script, each as its argv (split at `;`,
    `&&` and `||`; a leading `exec` dropped)."""
    assert container["command"] == ["/bin/bash", "-c"], container["command"]
    (script,) = container["args"]
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in (";", "&&", "||"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c[1:] if c[:1] == ["exec"] else c for c in commands if c]


def _ray_start(argv: list[str]) -> dict[str, Any]:
    """`ray start`'s options, parsed by Ray's own CLI (click raises on a flag it does not know)."""
    from ray.scripts.scripts import start

    assert argv[:2] == ["ray", "start"], argv
    return dict(start.make_context("ray start", argv[2:]).params)


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == name]
    return container


def _cpus(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _validate_kubernetes(doc: dict[str, Any]) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:  # its message quotes the whole schema: keep the point
        raise AssertionError(f"{doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}") from None


def check_controller(cluster: dict[str, Any], docs: list[dict[str, Any]]) -> Any:
    """The head pod's `tessera serve`: the cluster's controller, joined to this Ray, no gateway."""
    head = cluster["spec"]["headGroupSpec"]["template"]
    controller = _container(head, "controller")
    args = build_parser().parse_args(_command(controller, ["tessera", "serve"]))  # the real flags, or exit 2
    assert args.gateway_processes == 0, "gateways are the Deployment's, not the head's"
    host, _, port = args.ray_address.rpartition(":")
    assert int(port) == GCS_PORT
    # A driver must run on a Ray node: the head pod's own address (the downward API's pod IP).
    env = {e["name"]: e for e in controller["env"]}
    assert host == "$(POD_IP)" and env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert args.max_replicas is None or args.max_replicas >= args.num_replicas

    config_map = _one(docs, "ConfigMap")
    mount = {m["name"]: m["mountPath"] for m in controller["volumeMounts"]}
    (volume,) = [v for v in head["spec"]["volumes"] if v["configMap"]["name"] == config_map["metadata"]["name"]]
    config_path = pathlib.PurePosixPath(args.model_config_file)
    assert str(config_path.parent) == mount[volume["name"]]
    config = server_config_from_text(config_map["data"][config_path.name])
    assert config.models
    return args, config


def check_autoscaling(cluster: dict[str, Any], serve_args: Any, models: int) -> None:
    """KubeRay's autoscaler is on, and its worker groups can grow to hold every replica Tessera may
    ask for (each model up to --max_replicas, --replica_num_cpus each); replicas never go on the head."""
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0  # idle worker pods are removed
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    # The gateway pods are Ray nodes with no CPUs: a replica reserving none could land there.
    assert serve_args.replica_num_cpus > 0
    room = 0.0
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
        assert group["maxReplicas"] > group["minReplicas"], "the autoscaler needs room to add pods"
        (container,) = group["template"]["spec"]["containers"]
        cpus = float(group["rayStartParams"].get("num-cpus", _cpus(container["resources"]["limits"]["cpu"])))
        assert cpus >= serve_args.replica_num_cpus, "a replica must fit on one worker pod"
        room += group["maxReplicas"] * (cpus // serve_args.replica_num_cpus) * serve_args.replica_num_cpus
    most = models * (serve_args.max_replicas or serve_args.num_replicas) * serve_args.replica_num_cpus
    assert room >= most, f"the worker groups hold {room:g} replica CPUs at most, Tessera may ask for {most:g}"


def check_gateways(cluster: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    """The gateway Deployment, its HPA and budget, and the Service in front of it."""
    deployment = _one(docs, "Deployment")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == {
        k: labels[k] for k in deployment["spec"]["selector"]["matchLabels"]}
    gateway = _container(pod, "gateway")
    commands = script_commands(gateway)
    # The pod joins the cluster as a Ray node with no CPUs or GPUs (so no replica or task is ever
    # placed there: replicas reserve CPUs), through the head Service's GCS port...
    (ray_start,) = [_ray_start(c) for c in commands if c[:2] == ["ray", "start"]]
    assert ray_start["address"] == f"{cluster['metadata']['name']}-head-svc:{GCS_PORT}"
    assert ray_start["num_cpus"] == 0 and ray_start["num_gpus"] == 0 and not ray_start["block"]
    head_ports = {p["containerPort"] for p in _container(cluster["spec"]["headGroupSpec"]["template"], "ray-head")["ports"]}
    assert GCS_PORT in head_ports
    # ... and then runs the gateway, last, as a driver of that node (no Ray Client).
    assert commands[-1][:2] == ["tessera", "gateway"], commands
    args = build_gateway_parser().parse_args(commands[-1][2:])  # the real flags, or exit 2
    assert args.ray_address == "auto"
    # Connections end after an age, so long-lived clients move to gateway pods the HPA adds.
    assert dict(args.grpc_channel_arguments).get("grpc.max_connection_age_ms", 0) > 0
    assert args.rest_max_connection_age_ms > 0  # REST keep-alive connections too
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports == {"grpc": args.port, "http": args.rest_api_port}
    assert gateway["readinessProbe"]["httpGet"] == {"path": READINESS_PATH, "port": args.rest_api_port}
    assert gateway["livenessProbe"]["httpGet"] == {"path": LIVENESS_PATH, "port": args.rest_api_port}

    hpa = _one(docs, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert _cpus(gateway["resources"]["requests"]["cpu"]) > 0, "CPU utilization is relative to the request"
    budget = _one(docs, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]

    service = _one(docs, "Service")
    selector = service["spec"]["selector"]
    assert _matches(selector, labels), "the Service must reach the gateway pods"
    for group in (cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]):
        assert not _matches(selector, group["template"]["metadata"]["labels"]), "only gateways take requests"
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)


def check_manifests(docs: list[dict[str, Any]], schema: dict[str, Any]) -> None:
    cluster = _one(docs, "RayCluster")
    jsonschema.validate(cluster, schema)  # raises with the path of the first violation
    for doc in docs:
        if doc["kind"] != "RayCluster":
            _validate_kubernetes(doc)
    serve_args, config = check_controller(cluster, docs)
    check_autoscaling(cluster, serve_args, len(config.models))
    check_gateways(cluster, docs)
    namespaces = {d["metadata"].get("namespace") for d in docs}
    assert len(namespaces) == 1


def test_base_manifests(raycluster_schema: dict[str, Any]) -> None:
    check_manifests(_base(), raycluster_schema)


def _broken(change: Any) -> list[dict[str, Any]]:
    docs = copy.deepcopy(_base())
    change({d["kind"]: d for d in docs})
    return docs


def _edit_gateway_script(kinds: dict[str, Any], old: str, new: str) -> None:
    gateway = _container(kinds["Deployment"]["spec"]["template"], "gateway")
    assert old in gateway["args"][0]
    gateway["args"][0] = gateway["args"][0].replace(old, new)


def _controller_command(kinds: dict[str, Any]) -> list[str]:
    return _container(kinds["RayCluster"]["spec"]["headGroupSpec"]["template"], "controller")["command"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(("change", "error"), [
    (lambda k: k["RayCluster"]["spec"]["workerGroupSpecs"][0].pop("groupName"), jsonschema.ValidationError),
    (lambda k: k["RayCluster"]["spec"].update(enableInTreeAutoscaling=False), AssertionError),
    (lambda k: k["RayCluster"]["spec"]["workerGroupSpecs"][0].update(maxReplicas=1), AssertionError),
    (lambda k: k["Deployment"]["spec"]["template"]["spec"].update(bogus=1), AssertionError),
    (lambda k: k["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"].update(name="other"), AssertionError),
    (lambda k: k["Service"]["spec"]["selector"].update({"app.kubernetes.io/component": "head"}), AssertionError),
    (lambda k: _edit_gateway_script(k, "--port=8500", "--port=8500 --no_such_flag=1"), SystemExit),
    (lambda k: _edit_gateway_script(k, "--ray_address=auto", "--ray_address=ray://elsewhere:10001"), AssertionError),
    (lambda k: _edit_gateway_script(k, "max_connection_age_ms=30000,", "max_connection_age_ms,"), SystemExit),
    (lambda k: _edit_gateway_script(k, "--grpc_channel_arguments=grpc.max_connection_age_ms=30000,",
                                    "--grpc_channel_arguments="), AssertionError),
    (lambda k: _edit_gateway_script(k, "--rest_max_connection_age_ms=30000", ""), AssertionError),
    (lambda k: _edit_gateway_script(k, "--num-cpus=0", "--num-cpus=0 --no-such-ray-flag"), click.UsageError),
    (lambda k: _edit_gateway_script(k, "--num-cpus=0", "--num-cpus=2"), AssertionError),
    (lambda k: _edit_gateway_script(k, "tessera-head-svc:6379", "tessera-head-svc:10001"), AssertionError),
    (lambda k: _controller_command(k).append("--no_such_flag=1"), SystemExit),
    (lambda k: _controller_command(k).__setitem__(3, "--gateway_processes=1"), AssertionError),
], ids=["crd", "autoscaler-off", "no-room-to-grow", "k8s-schema", "hpa-target", "service-on-head",
        "gateway-flag", "gateway-address", "bad-channel-arguments", "no-connection-age", "no-rest-connection-age", "ray-start-flag",
        "gateway-node-cpus", "ray-start-address", "controller-flag", "gateway-on-head"])
def test_a_broken_manifest_is_caught(raycluster_schema: dict[str, Any], change: Any, error: type[BaseException]) -> None:
    with pytest.raises(error):
        check_manifests(_broken(change), raycluster_schema)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", _overlays(), ids=lambda p: p.name)
def test_overlays_build_and_stay_valid(overlay: pathlib.Path, raycluster_schema: dict[str, Any]) -> None:
    check_manifests(_built(overlay), raycluster_schema)
