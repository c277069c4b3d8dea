"""A real two-node Ray cluster on this machine, both nodes on 127.0.0.1, for lost-node faults.

Each node is `ray start --block` in a session of its own, so everything it spawns (GCS, raylet,
workers, actors) is in that session and is stopped by PID: never `ray stop`, which would stop every
Ray on the machine. `lose_worker()` SIGKILLs the worker node's raylet, as a node that vanishes.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from benchmarks.servers import free_port, server_env, session_pids


def _ray_cli() -> str:
    return str(pathlib.Path(sys.executable).with_name("ray"))


def _cmdline(pid: int) -> list[str]:
    try:
        return [a.decode(errors="replace") for a in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


@dataclass
class TwoNodeCluster:
    """Head with `head_cpus`, one worker with `worker_cpus`; `address` is the GCS for ray.init."""

    head_cpus: int = 1
    worker_cpus: int = 1
    log_dir: pathlib.Path = field(default_factory=lambda: pathlib.Path("/tmp/tessera-chaos"))
    address: str = ""
    ray_client_port: int | None = None  # Ray Client's server on the head (ray://127.0.0.1:port), if given
    _nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = server_env()
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"  # a multi-node cluster, each node told 127.0.0.1
        # Ray Client's proxier forks a server per client while its gRPC threads run; with gRPC's fork
        # handlers the child's event_engine thread segfaulted (dmesg) in about half the starts, and
        # that client never connected. The child execs at once: it needs no gRPC state of its own.
        env["GRPC_ENABLE_FORK_SUPPORT"] = "false"
        # Declare a vanished node dead in ~3 s instead of ~30 s: only the test's duration depends on it.
        env.update(RAY_health_check_initial_delay_ms="1000", RAY_health_check_period_ms="1000",
                   RAY_health_check_failure_threshold="3", RAY_health_check_timeout_ms="1000")
        return env

    def _start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                [_ray_cli(), "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *args],
                stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True,
            )
        self._nodes.append(proc)
        return proc

    def start(self) -> None:
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        # A temp dir of its own: `ray start --head` records its address there, and under the default
        # /tmp/ray every other `ray.init()` on the machine would join this cluster.
        self._temp = tempfile.mkdtemp(prefix="tsr-")  # short: Ray's socket paths have a length limit
        self._start("head", ["--head", f"--port={port}", f"--num-cpus={self.head_cpus}",
                             "--include-dashboard=false", f"--temp-dir={self._temp}",
                             *([f"--ray-client-server-port={self.ray_client_port}"] if self.ray_client_port else [])])
        self._wait_nodes(1)
        self.add_worker()

    def connect(self, **init_args: object) -> None:
        """`ray.init` this process to the cluster as a driver of the head's node.

        `ray start --node-ip-address=127.0.0.1` with `env()`'s RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1
        registers each node under the host's address (Ray resolves 127.0.0.1 to it for a cluster
        node), and `ray.init(_node_ip_address="127.0.0.1")` finds its node only if it resolves the
        same way. In a process where an embedded cluster ran first, `keep_ray_on_loopback` has
        turned that resolution off ("No node info found matching attributes: '127.0.0.1'"), so it
        is on for this call and restored after."""
        import ray
        from ray._private import ray_constants

        previous = ray_constants.ENABLE_RAY_CLUSTER
        ray_constants.ENABLE_RAY_CLUSTER = True
        try:
            ray.init(address=self.address, _node_ip_address="127.0.0.1", **init_args)  # type: ignore[arg-type]
        finally:
            ray_constants.ENABLE_RAY_CLUSTER = previous

    def add_worker(self, args: list[str] | None = None) -> None:
        """One more node joined to the head: `ray start` with `args` (default: `worker_cpus` CPUs)."""
        alive = self._alive_nodes()
        self._start(f"worker{len(self._nodes)}",
                    [f"--address={self.address}", *(args if args is not None else [f"--num-cpus={self.worker_cpus}"])])
        self._wait_nodes(alive + 1)

    def _alive_nodes(self) -> int:
        import ray

        if not ray.is_initialized():
            return len([p for p in self._nodes if p.poll() is None])
        return sum(1 for n in ray.nodes() if n["Alive"])

    def _wait_nodes(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._raylets() >= count:
                time.sleep(1.0)  # registered with the GCS shortly after
                return
            time.sleep(0.2)
        raise TimeoutError(f"{count} Ray node(s) not up after {timeout:.0f}s; see {self.log_dir}")

    def _raylets(self) -> int:
        return sum(1 for node in self._nodes if self.raylet_pid(node) is not None)

    @staticmethod
    def raylet_pid(node: subprocess.Popen[bytes]) -> int | None:
        for pid in session_pids(node.pid):
            args = _cmdline(pid)
            if args and os.path.basename(args[0]) == "raylet":
                return pid
        return None

    def lose_worker(self) -> int:
        """SIGKILLs the first worker node's raylet (its workers and actors die with it); returns its pid."""
        pid = self.raylet_pid(self._nodes[1])
        assert pid is not None, "the worker node has no raylet"
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, every process of every node's session, by PID."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for node in reversed(self._nodes):
                for pid in session_pids(node.pid):
                    if pid != os.getpid():
                        try:
                            os.kill(pid, sig)
                        except ProcessLookupError:
                            pass
            time.sleep(2.0 if sig == signal.SIGTERM else 0.5)
        for node in self._nodes:
            try:
                node.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._nodes.clear()
        if getattr(self, "_temp", None):
            shutil.rmtree(self._temp, ignore_errors=True)
