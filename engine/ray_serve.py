"""The fusion model as a Ray Serve deployment, and a small launcher: past one machine.

    sentistream serve --engine ray --config my.toml          # a loopback cluster + the deployment
    fusion.server = "ray://127.0.0.1:8000/fusion"             # a session's [fusion], to use it

Python API: :func:`deploy` (``config`` -> the ``ray://`` address of the application, on a running
cluster), :func:`start_local_cluster` (a head and ``[ray] worker_nodes`` worker nodes on
127.0.0.1, engine/ray_node.py), :func:`serve_ray` (both, until stopped: the CLI's engine).

The deployment (``FusionModel``): each replica loads the model ``[fusion]`` names, exactly as
``sentistream serve`` does (engine/fusion_server.load_fusion_model, the same weights hash and
dims, which a session checks at start), picks its backend (engine/backends.py) and answers HTTP
requests from the Serve proxy (framing and wire: engine/ray_client.py). ``@serve.batch`` merges
the requests that arrive together (``[ray] max_batch_size``, ``batch_wait_timeout_s``) into one
forward pass; a request may itself carry several windows. ``max_ongoing_requests`` (default 64)
is raised from Serve's 5, which would cap every batch at 5 requests. ``num_cpus`` / ``num_gpus``
per replica and the autoscaling bounds come from ``[ray]``. A malformed request is answered 400
with the reason and counted; the replica goes on. A replica that dies (SIGKILL, out of memory)
is restarted by Serve's controller; sessions score the windows it missed locally
(engine/live_backend.py) and go on.

Loopback: the cluster's processes listen on 127.0.0.1 (engine/ray_node.py); the Serve HTTP proxy
runs on the head only (``proxy_location = HeadOnly``: two nodes on one machine would otherwise
both want ``http_port``) on ``[ray] http_host`` (127.0.0.1 unless ``allow_remote``); replicas
open their inter-deployment gRPC server on ``[::]:0`` in Ray 2.60, so every replica's worker runs
:func:`~sentistream.engine.ray_node.loopback_worker_setup` first (a ``worker_process_setup_hook``), which binds it to
127.0.0.1 instead.

Ray is imported lazily (``pip install 'sentistream[ray]'``): this module imports without it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import EngineConfig, RayConfig, config_from_dict
from .fusion_wire import arrays_to_inputs
from .messages import Message, MessageError
from .ray_client import TOPIC, frame_body, unframe_body, wait_ready
from .ray_node import (
    LOOPBACK,
    SETUP_HOOK,
    SETUP_HOOK_ENV,
    RayNode,
    free_port,
    new_token,
    require_ray,
    start_node,
    use_loopback_env,
)

log = logging.getLogger("sentistream.ray_serve")

DEPLOYMENT = "FusionModel"
NAMESPACE = "sentistream"


# --------------------------------------------------------------------------- replica side
@dataclass
class ReplicaStats:
    requests: int = 0
    windows: int = 0
    batches: int = 0
    malformed: int = 0
    errors: int = 0
    batch_requests: dict[int, int] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "windows": self.windows,
            "batches": self.batches,
            "malformed": self.malformed,
            "errors": self.errors,
            "mean_batch_requests": round(self.requests / self.batches, 2) if self.batches else 0.0,
            "mean_batch_windows": round(self.windows / self.batches, 2) if self.batches else 0.0,
        }


class FusionReplica:
    """One replica of the ``FusionModel`` deployment (an ASGI-style ``__call__`` on the proxy's
    HTTP requests). Built by Serve from :func:`build_app`'s bound arguments."""

    def __init__(self, config: dict[str, Any]) -> None:
        import torch
        from ray import serve

        from .backends import BackendOptions, model_fingerprint, select_backend
        from .fusion_server import load_fusion_model

        cfg = config_from_dict(config)
        rc = cfg.ray
        threads = max(1, round(rc.num_cpus))
        torch.set_num_threads(threads)
        if rc.num_gpus > 0 and not cfg.fusion.device.startswith("cuda"):
            cfg.fusion.device = "cuda"
        model, name, checkpoint, placeholder = load_fusion_model(cfg)
        opts = BackendOptions.from_config(cfg.fusion)
        opts.threads = threads
        opts.onnx_prebuild = "background"  # a restarted replica serves as soon as one graph is ready
        self.backend = select_backend(opts, model)
        self.plan = opts.plan()
        self.max_windows = opts.max_batch
        text_dim, audio_dim, vision_dim = (int(d) for d in model.dims)
        self.dims = (text_dim, audio_dim, vision_dim)
        ctx = serve.get_replica_context()
        self.info = {
            "model": name,
            "checkpoint": checkpoint,
            "placeholder": placeholder,
            "fingerprint": model_fingerprint(model),
            "dims": list(model.dims),
            "backend": self.backend.name,
            "reason": self.backend.reason,
            "engine": "ray",
            "replica": str(getattr(ctx, "replica_id", "")),
            "pid": os.getpid(),
            "node_id": _node_id(),
            "max_batch_size": rc.max_batch_size,
            "max_windows": self.max_windows,
        }
        self.stats = ReplicaStats()
        self._batched = serve.batch(max_batch_size=rc.max_batch_size, batch_wait_timeout_s=rc.batch_wait_timeout_s)(
            self._infer_batch
        )

    async def _infer_batch(self, items: list[Any]) -> list[Any]:
        """@serve.batch: the requests that arrived together, in chunks of at most max_windows windows."""
        import numpy as np

        from .backends import collate

        out: list[Any] = []
        chunk: list[Any] = []
        windows = 0

        def run(chunk: list[Any]) -> None:
            inputs = collate(chunk, self.plan)
            res = self.backend(inputs)
            score = res.score.detach().float().cpu().numpy().astype(np.float32).reshape(-1)
            contrib = res.contributions.detach().float().cpu().numpy().astype(np.float32).reshape(-1, 3)
            i = 0
            for it in chunk:
                n = it.batch_size
                out.append((score[i : i + n].copy(), contrib[i : i + n].copy(), len(items), int(score.shape[0])))
                i += n
            self.stats.batches += 1
            self.stats.windows += int(score.shape[0])
            self.stats.batch_requests[len(chunk)] = self.stats.batch_requests.get(len(chunk), 0) + 1

        for it in items:
            if chunk and windows + it.batch_size > self.max_windows:
                run(chunk)
                chunk, windows = [], 0
            chunk.append(it)
            windows += it.batch_size
        if chunk:
            run(chunk)
        return out

    def _reply(self, status: int, seq: int, arrays: list[Any] | None = None, meta: dict | None = None) -> Any:
        from starlette.responses import Response

        body = frame_body(Message("fusion_reply", TOPIC, seq, 0, 0.0, list(arrays or []), meta=meta or {}))
        headers = {}
        if meta and "error" in meta:
            headers["X-Sentistream-Error"] = str(meta["error"])[:200].encode("ascii", "replace").decode()
        return Response(body, status_code=status, media_type="application/octet-stream", headers=headers)

    async def __call__(self, request: Any) -> Any:
        body = await request.body()
        try:
            msg = unframe_body(body)
            if msg.kind != "fusion_request":
                raise MessageError(f"expected a fusion_request, got {msg.kind!r}")
        except MessageError as exc:
            self.stats.malformed += 1
            log.warning("malformed fusion request answered 400: %s", exc)
            return self._reply(400, 0, meta={"error": f"malformed request: {exc}"})
        op = msg.meta.get("op", "infer")
        if op == "info":
            return self._reply(200, msg.seq, meta={**self.info, "stats": self.stats.snapshot()})
        if op != "infer":
            self.stats.malformed += 1
            return self._reply(400, msg.seq, meta={"error": f"unknown op {op!r}"})
        try:
            inputs = arrays_to_inputs(msg.arrays, self.dims, self.max_windows)
        except ValueError as exc:
            self.stats.malformed += 1
            return self._reply(400, msg.seq, meta={"error": f"bad request: {exc}"})
        self.stats.requests += 1
        try:
            score, contrib, batch_requests, batch_windows = await self._batched(inputs)
        except Exception as exc:  # one failing batch must not end the replica
            self.stats.errors += 1
            log.exception("fusion batch failed")
            return self._reply(500, msg.seq, meta={"error": f"inference failed: {exc!r}"})
        meta = {"batch_requests": batch_requests, "batch_windows": batch_windows, "replica_pid": self.info["pid"]}
        return self._reply(200, msg.seq, [score, contrib], meta)


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # pragma: no cover - outside a Ray worker
        return ""


# --------------------------------------------------------------------------- driver side
def deployment_options(rc: RayConfig) -> dict[str, Any]:
    """The ``@serve.deployment`` options ``[ray]`` asks for."""
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(max(1, round(rc.num_cpus)))}
    return {
        "name": DEPLOYMENT,
        "max_ongoing_requests": rc.max_ongoing_requests,
        "ray_actor_options": {
            "num_cpus": rc.num_cpus,
            "num_gpus": rc.num_gpus,
            # Ray 2.60 applies a worker_process_setup_hook from ray.init's runtime_env only; this is
            # the variable that carries it to a worker (the nodes of start_local_cluster set it too)
            "runtime_env": {"env_vars": {**env, SETUP_HOOK_ENV: SETUP_HOOK}},
        },
        "autoscaling_config": {
            "min_replicas": rc.min_replicas,
            "initial_replicas": rc.initial_replicas,
            "max_replicas": rc.max_replicas,
            "target_ongoing_requests": rc.target_ongoing_requests,
            "upscale_delay_s": rc.upscale_delay_s,
            "downscale_delay_s": rc.downscale_delay_s,
        },
        "health_check_period_s": 2.0,
        "health_check_timeout_s": 10.0,
        "graceful_shutdown_timeout_s": 2.0,
    }


def build_app(config: EngineConfig) -> Any:
    """The Serve application: the ``FusionModel`` deployment bound to this configuration."""
    require_ray()
    from ray import serve

    return serve.deployment(FusionReplica, **deployment_options(config.ray)).bind(config.to_dict())


def app_address(rc: RayConfig, host: str | None = None) -> str:
    return f"ray://{host or rc.http_host}:{rc.http_port}/{rc.app}"


def _init_driver(gcs_address: str, token: str | None) -> None:
    """Attach this process to the cluster as a driver (loopback env, the cluster's token)."""
    use_loopback_env(token)
    import ray

    if not ray.is_initialized():
        ray.init(address=gcs_address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)


def deploy(
    config: EngineConfig, gcs_address: str | None = None, token: str | None = None, ready_timeout_s: float = 180.0
) -> str:
    """Deploy (or update) the fusion application on the cluster at ``gcs_address`` (default
    ``[ray] address``); returns its ``ray://HOST:PORT/APP`` address once a replica answers."""
    require_ray()
    rc = config.ray
    gcs = gcs_address or rc.address
    if not gcs:
        raise ValueError("deploy: no cluster address (give gcs_address or set [ray] address)")
    _init_driver(gcs, token)
    from ray import serve

    serve.start(http_options={"host": rc.http_host, "port": rc.http_port, "location": "HeadOnly"})
    serve.run(build_app(config), name=rc.app, route_prefix=f"/{rc.app}", blocking=False)
    address = app_address(rc, LOOPBACK if rc.http_host in ("0.0.0.0", "::") else None)
    wait_ready(address, ready_timeout_s)
    return address


def undeploy(app: str) -> None:
    """Delete the application (this driver must be attached: :func:`deploy` did it)."""
    from ray import serve

    try:
        serve.delete(app)
    except Exception as exc:  # the cluster may be going away already
        log.warning("serve.delete(%s): %s", app, exc)


@dataclass
class LocalCluster:
    """A head and worker nodes on 127.0.0.1, started by :func:`start_local_cluster`."""

    nodes: list[RayNode]
    token: str
    temp_dir: str
    owns_temp_dir: bool = True

    @property
    def gcs_address(self) -> str:
        return self.nodes[0].gcs_address

    @property
    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes]

    def stop(self) -> None:
        """Workers first, then the head, each by its own pid (process group); never ``ray stop``."""
        for node in reversed(self.nodes):
            node.stop()
        if self.owns_temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_local_cluster(
    worker_nodes: int = 0,
    node_cpus: int = 0,
    gcs_port: int = 0,
    temp_dir: str | None = None,
    token: str | None = None,
    num_gpus: int = 0,
) -> LocalCluster:
    """A head node and ``worker_nodes`` worker nodes, all on 127.0.0.1, each ``node_cpus`` CPUs."""
    require_ray()
    owns = temp_dir is None
    # Ray's unix sockets live under the temp dir: keep its path short (108-byte limit)
    temp_dir = temp_dir or tempfile.mkdtemp(prefix="ssr-", dir="/tmp")
    # A process that joined a cluster as a driver keeps the token it first read (Ray caches it):
    # a second cluster started from it gets the same one.
    token = token or os.environ.get("RAY_AUTH_TOKEN") or new_token()
    cpus = node_cpus or os.cpu_count() or 1
    port = gcs_port or free_port()
    nodes: list[RayNode] = []
    try:
        nodes.append(
            start_node(head=True, gcs_port=port, temp_dir=temp_dir, token=token, num_cpus=cpus, num_gpus=num_gpus)
        )
        for _ in range(worker_nodes):
            nodes.append(start_node(head=False, gcs_port=port, temp_dir=temp_dir, token=token, num_cpus=cpus))
    except Exception:
        for n in reversed(nodes):
            n.stop()
        raise
    token_file = Path(temp_dir) / "auth_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    return LocalCluster(nodes, token, temp_dir, owns)


def serve_ray(config: EngineConfig, on_ready: Any = None) -> int:
    """``sentistream serve --engine ray``: start a loopback cluster (``[ray] address = ""``) or attach
    to ``[ray] address``, deploy, serve until SIGINT / SIGTERM, then undeploy (and stop what it
    started). ``on_ready(address, cluster)`` is called once a replica answers."""
    import signal
    import threading

    require_ray()
    rc = config.ray
    cluster: LocalCluster | None = None
    stopping = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        stopping.set()

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not rc.address:
            cluster = start_local_cluster(rc.worker_nodes, rc.node_cpus, rc.gcs_port, num_gpus=int(rc.num_gpus > 0))
            address = deploy(config, cluster.gcs_address, cluster.token)
        else:
            address = deploy(config)
        if on_ready is not None:
            on_ready(address, cluster)
        while not stopping.wait(0.5):
            if cluster is not None and not all(n.alive() for n in cluster.nodes):
                log.error("a Ray node of this cluster exited; stopping")
                return 1
        return 0
    finally:
        try:
            if cluster is None:
                undeploy(rc.app)
            import ray

            if ray.is_initialized():
                ray.shutdown()
        finally:
            if cluster is not None:
                cluster.stop()
            for s, h in old.items():
                signal.signal(s, h)
            time.sleep(0)
