"""Ray nodes on loopback: start a head or a worker node as a child process, stop it by pid.

    python -m sentistream.engine.ray_node --head --port 6390 --temp-dir /tmp/ssr-x ...
    python -m sentistream.engine.ray_node --address 127.0.0.1:6390 ...

Why a launcher rather than ``ray start``: on Linux Ray rewrites a node address of 127.0.0.1 to
the network card's address and then listens there (and on every interface for some ports).
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps every Ray process on 127.0.0.1, but ``ray start``
then refuses to start a worker node ("Multi-node Ray clusters are not supported"). This module
runs ``ray start --block`` in-process with only that one check lifted, and with every address it
resolves left at loopback; the children it starts (GCS, raylet, agents, workers) inherit the
environment and keep to 127.0.0.1.

:func:`start_node` is the Python side: it starts the launcher as a subprocess (its own process
group, so stopping it stops the node's children), waits until the node is up and returns a
:class:`RayNode`; :meth:`RayNode.stop` ends it by pid (never ``ray stop``, which kills every Ray
process on the machine by name).

Authentication: both nodes and every driver share one ``RAY_AUTH_TOKEN`` with
``RAY_AUTH_MODE=token`` (:func:`loopback_env`); a local user without the token cannot attach a
driver to the cluster. The Serve HTTP proxy itself is not authenticated by Ray: it listens on
127.0.0.1 only (engine/ray_serve.py).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"
#: run first by every Ray worker of a loopback node, and by every replica of the fusion deployment
SETUP_HOOK = "sentistream.engine.ray_node.loopback_worker_setup"
SETUP_HOOK_ENV = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"  # ray._private.ray_constants, 2.60


def free_port(host: str = LOOPBACK) -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def loopback_worker_setup() -> None:
    """A Ray worker's setup hook: Serve's inter-deployment gRPC server (a replica's, opened on
    ``[::]:0`` in Ray 2.60) on 127.0.0.1 instead."""
    import importlib

    replica = importlib.import_module("ray.serve._private.replica")  # Ray's internals, pinned 2.60
    original = replica.add_port_to_grpc_server
    if getattr(original, "_sentistream_loopback", False):
        return

    def add_port(server, address: str):
        if address.startswith(("[::]:", "0.0.0.0:")):
            address = f"{LOOPBACK}:{address.rsplit(':', 1)[1]}"
        return original(server, address)

    add_port._sentistream_loopback = True  # type: ignore[attr-defined]
    setattr(replica, "add_port_to_grpc_server", add_port)  # noqa: B010 - a module of Ray's, not ours


class RayNotInstalled(RuntimeError):
    """``ray[serve]`` is not importable: the message says what to install."""


def require_ray() -> None:
    """Raise :class:`RayNotInstalled` (naming the extra) when Ray Serve is not installed. Imports
    nothing of Ray: the loopback environment must be set before Ray's first import."""
    import importlib.util

    spec = importlib.util.find_spec("ray")
    serve_dir = Path(spec.origin).parent / "serve" if spec is not None and spec.origin else None
    if (
        serve_dir is None
        or not serve_dir.is_dir()
        or any(importlib.util.find_spec(m) is None for m in ("starlette", "uvicorn", "fastapi"))
    ):
        raise RayNotInstalled(
            "Ray Serve is not installed: pip install 'sentistream[ray]' (ray[serve]==2.60.0), "
            "or use the ZeroMQ fusion server (`sentistream serve`, the default engine)"
        )


def use_loopback_env(token: str | None) -> None:
    """This process (a driver) joins a loopback cluster: the environment of :func:`loopback_env`,
    also when Ray was imported already."""
    token = token or os.environ.get("RAY_AUTH_TOKEN", "")
    env = loopback_env(token, {})
    if not token:
        env.pop("RAY_AUTH_TOKEN")
        env.pop("RAY_AUTH_MODE")
    for key in ("PYTHONUNBUFFERED", "HF_HUB_OFFLINE", SETUP_HOOK_ENV):
        env.pop(key)
    os.environ.update(env)
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False  # type: ignore[attr-defined]


def loopback_env(token: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every process of a loopback cluster (nodes, drivers) runs with."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every Ray process resolves its node to 127.0.0.1
            "RAY_AUTH_MODE": "token",  # head, worker and drivers must agree on this
            "RAY_AUTH_TOKEN": token,
            # the head's proxy routes to replicas on every node, not only its own
            "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            SETUP_HOOK_ENV: SETUP_HOOK,
            # Ray runs its workers at niceness 15; replicas serve live windows and must not yield
            # to every other process of the node (the ZeroMQ servers run at 0 too)
            "RAY_worker_niceness": "0",
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
        }
    )
    return env


def new_token() -> str:
    return secrets.token_hex(32)


@dataclass
class RayNode:
    """One node started by :func:`start_node`; ``stop()`` ends it and its children by pid."""

    proc: subprocess.Popen
    head: bool
    gcs_address: str
    temp_dir: str
    log_path: Path
    env: dict[str, str] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pids(self) -> list[int]:
        """The node's processes: the launcher's session (Ray workers put themselves in process
        groups of their own, but stay in the session the launcher leads)."""
        return session_pids(self.proc.pid)

    def stop(self, timeout_s: float = 3.0) -> None:
        """SIGTERM the launcher (it stops what it started), then SIGKILL whatever of its session is left."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        for pid in [self.proc.pid, *session_pids(self.proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def session_pids(sid: int) -> list[int]:
    """Every live process whose session id is ``sid`` (from /proc; Linux)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != b"Z":
            out.append(int(entry))
    return out


def start_node(
    *,
    head: bool,
    gcs_port: int,
    temp_dir: str,
    token: str,
    num_cpus: float = 1,
    num_gpus: float = 0,
    log_dir: Path | None = None,
    ready_timeout_s: float = 120.0,
    extra_env: dict[str, str] | None = None,
    object_store_mb: int = 128,
    wait: bool = True,
) -> RayNode:
    """Start a head (``head=True``) or a worker node of the cluster whose GCS is on ``gcs_port``;
    ``wait=False`` returns at once (:func:`wait_node_ready` waits for it)."""
    require_ray()
    gcs_address = f"{LOOPBACK}:{gcs_port}"
    args = [
        "--node-ip-address",
        LOOPBACK,
        "--num-cpus",
        str(int(num_cpus)),
        "--num-gpus",
        str(int(num_gpus)),
        "--object-store-memory",
        str(int(object_store_mb) << 20),  # windows are small: Ray's default takes 30 % of RAM
        "--disable-usage-stats",
        "--block",
    ]
    if head:
        args += [
            "--head",
            "--port",
            str(gcs_port),
            "--include-dashboard",
            "false",
            "--temp-dir",
            temp_dir,
            "--ray-client-server-port",
            str(free_port()),
        ]
    else:
        args += ["--address", gcs_address]
    env = loopback_env(token)
    env.update(extra_env or {})
    log_dir = Path(log_dir or temp_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"ray-node-{'head' if head else 'worker'}-{os.getpid()}-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sentistream.engine.ray_node", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own session: stop() finds the node's children by it
        )
    node = RayNode(proc, head, gcs_address, temp_dir, log_path, env)
    if wait:
        wait_node_ready(node, ready_timeout_s)
    return node


def wait_node_ready(node: RayNode, ready_timeout_s: float = 120.0) -> None:
    """Until the node's ``ray start`` reports the runtime started (RuntimeError, the node
    stopped, if it exits or takes longer than ``ready_timeout_s``)."""
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if node.proc.poll() is not None:
            raise RuntimeError(f"ray node exited ({node.proc.returncode}):\n{_tail(node.log_path)}")
        if "Ray runtime started" in node.log_path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    node.stop()
    raise RuntimeError(f"ray node not up within {ready_timeout_s:g} s:\n{_tail(node.log_path)}")


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _patched_ray_start(argv: list[str]) -> int:
    """``ray start ARGV`` with 127.0.0.1 kept as the node address and worker nodes allowed."""
    import ray._private.services as services
    from ray._private import ray_constants
    from ray.scripts import scripts

    def keep_host(host: str) -> str:
        if not host:
            raise ValueError(f"Malformed host: {host}")
        return host

    services.resolve_ip_for_localhost = keep_host
    # The one check RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 brings that we must lift: a worker node
    # may join. get_node_ip_address (which reads the same flag) is pinned to loopback instead.
    ray_constants.ENABLE_RAY_CLUSTER = True
    services.get_node_ip_address = lambda address=None: LOOPBACK  # type: ignore[assignment]
    services.node_ip_address_from_perspective = lambda address=None: LOOPBACK  # type: ignore[assignment]
    try:
        scripts.cli.main(args=["start", *argv], prog_name="ray", standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(_patched_ray_start(sys.argv[1:]))
