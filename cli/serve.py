"""`sentistream serve` (the fusion server) and `sentistream serve-asr` (the Whisper server)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..engine import asr_server, fusion_server
from ..engine.config import BACKENDS
from ..engine.rpc import serve_until_stopped


def _server_parser(subparsers, name: str, help_text: str, default_address: str, section: str, func):
    """A sub-command for a model server: --address, --config and --allow-remote, as both share them."""
    p = subparsers.add_parser(name, help=help_text)
    p.add_argument(
        "--address",
        default=default_address,
        help=f"where to bind (default {default_address}; tcp://127.0.0.1:0 = any free port)",
    )
    p.add_argument("--config", default=None, help=f"a TOML file overriding configs/default.toml ([{section}])")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow binding a non-loopback interface (requests are not authenticated)",
    )
    p.set_defaults(func=func)
    return p


def cmd_serve(args: argparse.Namespace) -> int:
    import sys

    from ..engine.config import ConfigError, load_config

    overrides: dict[str, Any] = {}
    if args.engine == "ray":
        ray: dict[str, Any] = {}
        if args.worker_nodes is not None:
            ray["worker_nodes"] = args.worker_nodes
        if args.http_port is not None:
            ray["http_port"] = args.http_port
        if args.ray_address is not None:
            ray["address"] = args.ray_address
        if args.whisper:
            ray["whisper"] = True
        if ray:
            overrides["ray"] = ray
    fusion: dict[str, Any] = {}
    if args.model:
        fusion["model"] = args.model
    if args.backend:
        fusion["backend"] = args.backend
    if args.device:
        fusion["device"] = args.device
    if fusion:
        overrides["fusion"] = fusion
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.export_onnx:
        return _export_onnx(cfg, args.export_onnx, args.text_tokens)
    if args.engine == "ray":
        return _serve_ray(cfg)
    try:
        server = fusion_server.build_server(
            cfg,
            args.address,
            args.max_batch,
            args.max_queue_delay_us,
            args.max_queue_per_session,
            args.allow_remote,
            args.threads,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return serve_until_stopped(
        server,
        f"fusion server on {server.address}: {server.info['model']} via {server.info['backend']} "
        f"({server.info['reason']}), max batch {server.max_batch}, "
        f"max queue delay {server.delay_ns // 1000} us",
        "fusion server",
    )


TRITON_CONFIG = """# Triton model configuration for the sentistream fusion model: written by
# `sentistream serve --export-onnx`; NOT TESTED in this project (no Triton, no GPU here), see docs/serving.md.
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch}
input [
{inputs}
]
output [
  {{ name: "score" data_type: TYPE_FP32 dims: [ 1 ] reshape: {{ shape: [ ] }} }},
  {{ name: "contributions" data_type: TYPE_FP32 dims: [ 3 ] }}
]
dynamic_batching {{
  preferred_batch_size: [ 8, 16, 32 ]
  max_queue_delay_microseconds: 2000
}}
instance_group [ {{ count: 1 kind: {kind} }} ]
"""


def export_onnx_repository(cfg, out_dir: str, text_tokens: int, name: str = "sentistream_fusion") -> Path:
    """The fusion model ``cfg`` names as ONNX (named tensors text / audio / vision and their float
    masks in, score / contributions out; a dynamic batch axis; the sequence lengths fixed at
    ``text_tokens`` and ``[fusion] max_audio_frames`` / ``max_video_frames``) in a Triton model
    repository: OUT/NAME/1/model.onnx and OUT/NAME/config.pbtxt. Returns the model.onnx path."""
    import onnx

    from ..engine.backends import onnx_export
    from ..engine.fusion_server import load_fusion_model

    model, *_ = load_fusion_model(cfg)
    seq = (int(text_tokens), int(cfg.fusion.max_audio_frames), int(cfg.fusion.max_video_frames))
    path = onnx_export(model, Path(out_dir) / name / "1" / "model.onnx", seq)
    graph = onnx.load(str(path)).graph
    inputs = []
    for value in graph.input:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim][1:]  # batch first, dynamic
        inputs.append(f'  {{ name: "{value.name}" data_type: TYPE_FP32 dims: [ {", ".join(map(str, dims))} ] }}')
    kind = "KIND_GPU" if cfg.fusion.device.startswith("cuda") else "KIND_CPU"
    text = TRITON_CONFIG.format(name=name, max_batch=cfg.fusion.max_batch, inputs=",\n".join(inputs), kind=kind)
    (Path(out_dir) / name / "config.pbtxt").write_text(text)
    return path


def _export_onnx(cfg, out_dir: str, text_tokens: int) -> int:
    path = export_onnx_repository(cfg, out_dir, text_tokens)
    print(f"wrote {path} and {path.parent.parent / 'config.pbtxt'} (a Triton model repository; docs/serving.md)")
    return 0


def _serve_ray(cfg) -> int:
    """`sentistream serve --engine ray`: the fusion model (and with ``[ray] whisper = true`` the
    Whisper recogniser) on Ray Serve (engine/ray_serve.py)."""
    import sys

    from ..engine.ray_node import RayNotInstalled, require_ray

    try:
        require_ray()
    except RayNotInstalled as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from ..engine import ray_serve

    def ready(addresses: dict[str, str], cluster) -> None:
        where = (
            f"a loopback cluster of {len(cluster.nodes)} node(s) (GCS {cluster.gcs_address}, pids "
            f"{', '.join(map(str, cluster.pids))}; token in {cluster.temp_dir}/auth_token)"
            if cluster is not None
            else f"the cluster at {cfg.ray.address}"
        )
        # the Whisper line first: a reader that waits for the fusion line has both then
        for kind, section in (("whisper", "asr"), ("fusion", "fusion")):
            address = addresses.get(kind)
            if address:
                print(
                    f'{kind} on Ray Serve at {address}: {where}; sessions set {section}.server = "{address}"',
                    flush=True,
                )

    try:
        return ray_serve.serve_ray(cfg, on_ready=ready)
    except (RuntimeError, ValueError, ConnectionError) as exc:
        print(f"error: Ray Serve: {exc}", file=sys.stderr)
        return 1


def register_serve(subparsers) -> None:
    p = _server_parser(
        subparsers,
        "serve",
        "serve the fusion model to many sessions, batched dynamically",
        fusion_server.DEFAULT_ADDRESS,
        "fusion",
        cmd_serve,
    )
    p.add_argument("--model", default=None, help="fusion model: 'default' or a zoo name")
    p.add_argument("--backend", default=None, choices=BACKENDS)
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N")
    p.add_argument("--max-batch", type=int, default=None, help="largest batch (default fusion.max_batch)")
    p.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=2000,
        help="longest time a request waits for others to join its batch (default 2000)",
    )
    p.add_argument(
        "--max-queue-per-session",
        type=int,
        default=64,
        help="requests queued per session before its new ones are refused (default 64)",
    )
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = torch's default)")
    p.add_argument(
        "--engine",
        choices=["zmq", "ray"],
        default="zmq",
        help="zmq: the fusion server (one machine, default); ray: Ray Serve deployments of the fusion "
        "model and, with --whisper / [ray] whisper = true, Whisper ([ray] section; pip install "
        "'sentistream[ray]'; docs/serving.md)",
    )
    p.add_argument(
        "--whisper",
        action="store_true",
        default=None,
        help="--engine ray: also deploy the Whisper recogniser ([ray] whisper = true; asr.server = ray://.../whisper)",
    )
    p.add_argument("--worker-nodes", type=int, default=None, help="--engine ray: [ray] worker_nodes")
    p.add_argument("--http-port", type=int, default=None, help="--engine ray: [ray] http_port (Serve's proxy)")
    p.add_argument(
        "--ray-address", default=None, help="--engine ray: [ray] address, a running cluster's GCS (HOST:PORT)"
    )
    p.add_argument(
        "--export-onnx",
        default="",
        metavar="DIR",
        help="do not serve: write the model as ONNX (named tensors, dynamic batch) in a Triton model "
        "repository DIR/sentistream_fusion/{1/model.onnx,config.pbtxt} (docs/serving.md)",
    )
    p.add_argument("--text-tokens", type=int, default=64, help="--export-onnx: the text length (default 64)")


def cmd_serve_asr(args: argparse.Namespace) -> int:
    import sys

    from ..engine.config import ConfigError, load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    opts = cfg.asr
    opts.server = ""  # this process is the server
    try:
        server = asr_server.WhisperServer(opts, args.address, args.workers, args.max_queue, args.allow_remote)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return serve_until_stopped(
        server,
        f"Whisper server on {server.address}: {server.info['model_dir']} on {server.info['device']} "
        f"({server.info['compute_type']}), {server.workers} workers",
        "Whisper server",
    )


def register_serve_asr(subparsers) -> None:
    p = _server_parser(
        subparsers,
        "serve-asr",
        "serve one Whisper model to many sessions' ASR stages",
        asr_server.DEFAULT_ADDRESS,
        "asr",
        cmd_serve_asr,
    )
    p.add_argument("--workers", type=int, default=2, help="decodes run at once on the one model (default 2)")
    p.add_argument("--max-queue", type=int, default=256, help="queued requests before 'overloaded' (default 256)")
