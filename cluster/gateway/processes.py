"""The extra gateway processes of `tessera serve --gateway_processes=N`: `tessera gateway`
subprocesses on the first gateway's ports (SO_REUSEPORT), restarted if they die while serving."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

from cluster.config import ServeOptions
from cluster.gateway.gateway import new_gateway_id

log = logging.getLogger("tessera")


def gateway_argv(opts: ServeOptions, ray_address: str, grpc_port: int, rest_port: int | None) -> list[str]:
    """The `tessera gateway` command line of one more gateway process of `tessera serve`: the same
    gateway flags, the ports the first gateway bound, shared with SO_REUSEPORT."""
    argv = [
        sys.executable, "-m", "cluster.cli", "gateway", f"--ray_address={ray_address}", f"--host={opts.host}",
        f"--port={grpc_port}", f"--rest_api_port={rest_port or 0}", "--reuse_port",
        f"--rest_api_timeout_in_ms={opts.rest_api_timeout_in_ms}",
        f"--rest_max_connection_age_ms={opts.rest_max_connection_age_ms}",
        f"--enable_serialization_as_tensor_content={str(opts.serialize_as_tensor_content).lower()}",
        f"--max_request_fill_bytes={opts.max_request_fill_bytes}",
        f"--data_plane_max_frame_bytes={opts.data_plane_max_frame_bytes}", f"--log_format={opts.log_format}",
        f"--gateway_retained_heap_bytes={opts.gateway_retained_heap_bytes}",
        f"--gateway_prefaulted_heap_bytes={opts.gateway_prefaulted_heap_bytes}",
        f"--exit_with_parent={os.getpid()}",
    ]
    if opts.ssl_config_file:
        argv.append(f"--ssl_config_file={opts.ssl_config_file}")
    if opts.grpc_channel_arguments:
        argv.append("--grpc_channel_arguments=" + ",".join(f"{k}={v}" for k, v in opts.grpc_channel_arguments))
    if opts.monitoring_config_file:
        argv.append(f"--monitoring_config_file={opts.monitoring_config_file}")
    return argv


class GatewayProcess:
    """One `tessera gateway` subprocess of `tessera serve`, restarted if it dies while serving."""

    def __init__(self, argv: list[str], index: int) -> None:
        self.index = index
        self.gateway_id = new_gateway_id()
        self.argv = [*argv, f"--gateway_id={self.gateway_id}"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        # Same stdout/stderr as `tessera serve`: its log lines show up where the server's do.
        self.proc = subprocess.Popen(self.argv)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        """Waits for it to exit (SIGKILL after `timeout` s); its exit status."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("gateway process %d did not exit %.0fs after SIGTERM: killed", self.proc.pid, timeout)
            self.proc.kill()
            return self.proc.wait(10)
