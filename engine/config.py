"""Typed engine configuration, loaded strictly from TOML.

Every section is a dataclass; a key that no dataclass declares is refused
with its full dotted name, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

#: The fusion backends (engine/backends.py), "auto" first: the one list every tool reads.
FusionBackendName = Literal["auto", "tensorrt", "compile", "onnxruntime", "eager"]
BACKENDS: tuple[str, ...] = typing.get_args(FusionBackendName)
Transport = Literal["ipc", "tcp"]
SourceKind = Literal["demo", "file", "webcam", "none"]
Pace = Literal["realtime", "fast"]
Trigger = Literal["clock", "frame"]
TextContext = Literal["utterance", "lookback"]  # engine/windowing.py TEXT_CONTEXTS
ModelInputs = Literal["auto", "text", "all"]
Attribution = Literal["occlusion", "off"]


class ConfigError(ValueError):
    """A configuration that cannot be used (unknown key, wrong type, bad value)."""


@dataclass
class TransportConfig:
    transport: Transport = "ipc"  # "ipc" on one host, "tcp" across hosts
    bind_host: str = "127.0.0.1"  # loopback unless configured otherwise
    hwm: int = 1000  # high-water mark for audio, features, words, events
    video_hwm: int = 4  # video is conflated: only the newest frames matter
    conflate_video: bool = True  # false: every frame is processed (offline parity, recordings)
    events_address: str = "auto"  # where agents subscribe; "auto" picks a free loopback port
    # ZeroMQ CURVE on every socket: forced by `curve = true`, required (ConfigError without
    # keys) when bind_host or events_address is not loopback. Keys: `sentistream keys --dir`.
    curve: bool = False
    curve_keys_dir: str = ""

    def uses_curve(self) -> bool:
        from .security import is_local_address, is_loopback_host

        events_local = self.events_address == "auto" or is_local_address(self.events_address)
        remote_bind = self.transport == "tcp" and not is_loopback_host(self.bind_host)
        return self.curve or remote_bind or not events_local


@dataclass
class SupervisorConfig:
    ready_timeout_s: float = 180.0
    restart_backoff_s: float = 0.2
    restart_backoff_max_s: float = 10.0
    stable_after_s: float = 10.0  # uptime after which a crash resets the back-off
    stats_interval_s: float = 1.0
    stop_timeout_s: float = 5.0
    drain_timeout_s: float = 60.0  # after the source ends, how long to wait for the last event
    # Niceness added to the ASR stage's process (0 = none): a Whisper decode keeps the cores busy
    # for a quarter second at a time; at a lower priority it leaves them to the face and fusion
    # stages, whose latency is the frame -> event figure (ASR's own is about a second anyway). Not in
    # a --pace fast replay, where every window waits for the words (pipelines/standard.py).
    asr_nice: int = 10


@dataclass
class SourceConfig:
    kind: SourceKind = "demo"
    path: str = ""  # media file for kind = "file"
    camera_index: int = 0
    microphone: str = ""  # "" = no microphone, "default" or a sounddevice name/index
    pace: Pace = "realtime"  # files only
    # pace = "fast": the file source runs at most this far (s of media) ahead of the newest event,
    # so no stage falls behind far enough to drop input, and the recogniser has the audio it
    # needs to commit the words of the window being cut.
    fast_lead_s: float = 6.0
    loop: bool = False  # replay a file from the start when it ends
    duration_s: float = 0.0  # 0 = until the media ends (or Ctrl-C for live sources)
    width: int = 640
    height: int = 480
    fps: float = 15.0
    sample_rate: int = 16000
    audio_chunk_ms: int = 100


@dataclass
class WindowConfig:
    length_s: float = 3.0
    hop_s: float = 0.25
    # "clock": one window per hop_s of stream time, on a fixed grid. "frame": a window ends at
    # each face frame as it arrives, at most one per hop_s (lowest frame -> event latency).
    trigger: Trigger = "clock"
    # The model reads committed words up to this far back: ASR commits words a
    # second or more after they are spoken, later than audio and video arrive.
    text_lookback_s: float = 8.0
    # What the text model reads (docs/protocol.md, "Text context"): "utterance" = the newest
    # utterance alone, whole (the model was trained on single utterances; chosen on MOSI std-valid
    # streams, bench/results/stream-valid-context.md), "lookback" = all words of the last text_lookback_s.
    text_context: TextContext = "utterance"
    utterance_pause_s: float = 0.35  # a pause this long between two words ends an utterance
    # Until an utterance has this many words, its text score leans on the previous utterance's
    # (models/late_fusion.py UtteranceCarry; 0 = off). Chosen on MOSI std-valid streams.
    carry_words: int = 4


@dataclass
class FusionConfig:
    model: str = "default"  # "default" = the shipped checkpoint, else a registry name
    checkpoint: str = ""  # safetensors file; "" = the shipped one for "default"
    device: str = "cpu"
    neutral_band: float = 0.5  # |score| below this is labelled neutral
    max_audio_frames: int = 60  # 10 ms frames are averaged into at most this many steps
    max_video_frames: int = 45
    threads: int = 1  # torch intra-op threads: the other stages need the remaining cores
    # Inference backend (engine/backends.py): auto | tensorrt | compile | onnxruntime | eager.
    backend: FusionBackendName = "auto"
    max_batch: int = 64  # largest batch: TensorRT profile, compile batch buckets, fusion server
    # Token counts are padded up to one of these (compiled/exported graphs have fixed lengths);
    # audio and video are padded to max_audio_frames / max_video_frames.
    text_buckets: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    compile_mode: str = ""  # "" = reduce-overhead (CUDA graphs) on CUDA, max-autotune-no-cudagraphs on CPU
    cache_dir: str = ""  # exported ONNX graphs, TensorRT engines; "" = ~/.cache/sentistream
    select_budget_s: float = 1.0  # auto on CPU: time spent measuring onnxruntime against eager
    server: str = ""  # "" = the model runs in this stage; "tcp://127.0.0.1:PORT" = `sentistream serve`
    server_timeout_s: float = 2.0  # a window the fusion server has not answered by then is skipped
    # The inputs the fusion model reads (docs/protocol.md, "Attributions"): "auto" = what its
    # checkpoint learned from (the shipped one: text only; its audio / vision inputs were trained
    # on label-independent data to be ignored, so feeding them only adds noise).
    model_inputs: ModelInputs = "auto"
    # Each event's per-modality attributions by occlusion. With a model that reads audio / vision
    # this runs each window as a batch of 4 (bench/results/latency-cpu-occlusion.md); "off" leaves them out.
    attribution: Attribution = "occlusion"


@dataclass
class RayConfig:
    """``sentistream serve --engine ray`` (engine/ray_serve.py): the fusion model and the Whisper
    recogniser as Ray Serve deployments, each its own application behind the one HTTP proxy.
    Sessions reach them with ``fusion.server = "ray://HOST:HTTP_PORT/APP"`` and
    ``asr.server = "ray://HOST:HTTP_PORT/WHISPER_APP"``."""

    # "" = start a cluster on this machine (loopback: a head node, plus worker_nodes more);
    # "HOST:PORT" = attach to the running cluster whose GCS is there (RAY_AUTH_TOKEN in the env)
    address: str = ""
    worker_nodes: int = 0  # extra nodes started on this machine (each its own raylet) with address = ""
    node_cpus: int = 0  # CPUs each started node offers (0 = this machine's count)
    gcs_port: int = 0  # the started head's GCS port (0 = a free port)
    app: str = "fusion"  # the Serve application's name and route prefix (/fusion)
    http_host: str = "127.0.0.1"  # the Serve HTTP proxy (on the head only); not authenticated by Ray
    http_port: int = 8000
    allow_remote: bool = False  # true: http_host may be another interface (docs/serving.md)
    num_cpus: float = 1.0  # per fusion replica (Ray resources; also its torch threads)
    num_gpus: float = 0.0  # per fusion replica; > 0 runs the model on cuda
    min_replicas: int = 1  # autoscaling bounds
    max_replicas: int = 2
    initial_replicas: int = 1
    target_ongoing_requests: float = 8.0  # per replica: above it Serve adds a replica
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 30.0
    # requests a replica takes at once: Serve's default (5) would cap every batch at 5
    max_ongoing_requests: int = 64
    max_batch_size: int = 64  # requests merged by @serve.batch into one forward pass
    batch_wait_timeout_s: float = 0.002  # longest a request waits for others to join its batch
    fusion: bool = True  # deploy the fusion application (app)
    # The Whisper recogniser (the [asr] model: model_dir, device, compute_type) as a second
    # application, whisper_app; its replicas decode the sessions' clips one after another.
    whisper: bool = False
    whisper_app: str = "whisper"
    whisper_num_cpus: float = 1.0  # per Whisper replica (Ray resources; also its CTranslate2 threads)
    whisper_num_gpus: float = 0.0  # per Whisper replica; > 0 runs Whisper on cuda
    whisper_min_replicas: int = 1
    whisper_max_replicas: int = 2
    whisper_initial_replicas: int = 1
    whisper_target_ongoing_requests: float = 2.0  # a decode takes ~0.1-0.3 s on a CPU core
    whisper_max_ongoing_requests: int = 16
    whisper_max_batch_size: int = 8  # decode requests one replica call takes (run one after another)
    whisper_batch_wait_timeout_s: float = 0.005


def parse_ray_address(address: str) -> tuple[str, int, str]:
    """``ray://HOST:PORT/APP`` (the Serve HTTP proxy and the application's route prefix) ->
    (host, port, "/APP"); raises ValueError naming the form."""
    from urllib.parse import urlsplit

    if not address.startswith("ray://"):
        raise ValueError(f"not a Ray Serve address (ray://HOST:PORT/APP): {address!r}")
    parts = urlsplit("http://" + address[len("ray://") :])
    try:
        port = parts.port
    except ValueError:
        port = None
    app = parts.path.strip("/")
    if not parts.hostname or not port or not app or "/" in app or parts.query or parts.fragment:
        raise ValueError(
            f"a Ray Serve address is ray://HOST:PORT/APP (e.g. ray://127.0.0.1:8000/fusion), not {address!r}"
        )
    return parts.hostname, port, "/" + app


def _validate_ray(r: RayConfig) -> None:
    from .security import is_loopback_host

    if r.worker_nodes < 0 or r.node_cpus < 0 or not 0 <= r.gcs_port <= 65535:
        raise ConfigError("ray.worker_nodes and ray.node_cpus must be >= 0, ray.gcs_port 0..65535")
    if r.address and r.worker_nodes:
        raise ConfigError("ray.worker_nodes starts nodes of a new cluster: it needs ray.address = ''")
    if not r.app or not r.app.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"ray.app must be a name of letters, digits, '-' and '_', not {r.app!r}")
    if not 1 <= r.http_port <= 65535:
        raise ConfigError(f"ray.http_port must be 1..65535, not {r.http_port}")
    if not r.allow_remote and not is_loopback_host(r.http_host):
        raise ConfigError(
            f"ray.http_host = {r.http_host!r} is not a loopback address and the Serve proxy does not "
            "authenticate requests: set ray.allow_remote = true to mean it (docs/serving.md)"
        )
    if r.num_cpus < 0 or r.num_gpus < 0 or r.num_cpus + r.num_gpus <= 0:
        raise ConfigError("ray.num_cpus and ray.num_gpus must be >= 0, and not both 0")
    if not 0 <= r.min_replicas <= r.initial_replicas <= r.max_replicas or r.max_replicas < 1:
        raise ConfigError(
            "ray: need 0 <= min_replicas <= initial_replicas <= max_replicas and max_replicas >= 1, not "
            f"{r.min_replicas} / {r.initial_replicas} / {r.max_replicas}"
        )
    if r.target_ongoing_requests <= 0 or r.upscale_delay_s < 0 or r.downscale_delay_s < 0:
        raise ConfigError("ray.target_ongoing_requests must be > 0 and the scaling delays >= 0")
    if not 1 <= r.max_batch_size <= r.max_ongoing_requests:
        raise ConfigError(
            f"ray: need 1 <= max_batch_size <= max_ongoing_requests (a replica's batch holds at most the "
            f"requests it takes at once), not {r.max_batch_size} / {r.max_ongoing_requests}"
        )
    if not 0 <= r.batch_wait_timeout_s <= 1:
        raise ConfigError(f"ray.batch_wait_timeout_s must be 0..1 s, not {r.batch_wait_timeout_s}")
    if not r.fusion and not r.whisper:
        raise ConfigError("ray: deploys nothing (ray.fusion and ray.whisper are both false)")
    if not r.whisper_app or not r.whisper_app.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"ray.whisper_app must be a name of letters, digits, '-' and '_', not {r.whisper_app!r}")
    if r.fusion and r.whisper and r.whisper_app == r.app:
        raise ConfigError(f"ray.whisper_app and ray.app must differ (both {r.app!r}): each is its own application")
    if r.whisper_num_cpus < 0 or r.whisper_num_gpus < 0 or r.whisper_num_cpus + r.whisper_num_gpus <= 0:
        raise ConfigError("ray.whisper_num_cpus and ray.whisper_num_gpus must be >= 0, and not both 0")
    if (
        not 0 <= r.whisper_min_replicas <= r.whisper_initial_replicas <= r.whisper_max_replicas
        or r.whisper_max_replicas < 1
    ):
        raise ConfigError(
            "ray: need 0 <= whisper_min_replicas <= whisper_initial_replicas <= whisper_max_replicas and "
            f"whisper_max_replicas >= 1, not {r.whisper_min_replicas} / {r.whisper_initial_replicas} / "
            f"{r.whisper_max_replicas}"
        )
    if r.whisper_target_ongoing_requests <= 0:
        raise ConfigError("ray.whisper_target_ongoing_requests must be > 0")
    if not 1 <= r.whisper_max_batch_size <= r.whisper_max_ongoing_requests:
        raise ConfigError(
            "ray: need 1 <= whisper_max_batch_size <= whisper_max_ongoing_requests, not "
            f"{r.whisper_max_batch_size} / {r.whisper_max_ongoing_requests}"
        )
    if not 0 <= r.whisper_batch_wait_timeout_s <= 1:
        raise ConfigError(f"ray.whisper_batch_wait_timeout_s must be 0..1 s, not {r.whisper_batch_wait_timeout_s}")


def _validate_asr(a: Any) -> None:
    """The ``[asr]`` fields the engine reads itself: the Whisper server's address."""
    server = getattr(a, "server", "")
    if server.startswith("ray://"):
        try:
            parse_ray_address(server)
        except ValueError:
            raise ConfigError(
                f"asr.server: a Ray Serve address is ray://HOST:PORT/APP (e.g. ray://127.0.0.1:8000/whisper, "
                f"the Whisper application of `sentistream serve --engine ray`), not {server!r}"
            ) from None
    elif server and not server.startswith(("tcp://", "ipc://")):
        raise ConfigError(
            "asr.server must be a tcp:// or ipc:// address (`sentistream serve-asr`), a Ray Serve "
            f"application ray://HOST:PORT/APP (`sentistream serve --engine ray`, ray.whisper = true), "
            f"or empty, not {server!r}"
        )
    if not getattr(a, "server_timeout_s", 1.0) > 0:
        raise ConfigError(f"asr.server_timeout_s must be > 0, not {a.server_timeout_s!r}")


def _perception_sections() -> dict[str, type]:
    from ..perception.asr import AsrOptions
    from ..perception.audio_features import AudioFeatureOptions
    from ..perception.face import FaceOptions
    from ..perception.text import TextEncoderOptions

    return {
        "face": FaceOptions,
        "audio_features": AudioFeatureOptions,
        "asr": AsrOptions,
        "text": TextEncoderOptions,
    }


@dataclass
class EngineConfig:
    transport: TransportConfig = field(default_factory=TransportConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    # Perception sections hold the perception modules' own option dataclasses.
    face: Any = None
    audio_features: Any = None
    asr: Any = None
    text: Any = None

    def __post_init__(self) -> None:
        for name, cls in _perception_sections().items():
            if getattr(self, name) is None:
                setattr(self, name, cls())

    def to_dict(self) -> dict[str, Any]:
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def validate(self) -> None:
        if self.window.hop_s <= 0 or self.window.length_s < self.window.hop_s:
            raise ConfigError("window: need 0 < hop_s <= length_s")
        if self.window.utterance_pause_s <= 0:
            raise ConfigError("window.utterance_pause_s must be > 0")
        if not 0 <= self.window.carry_words <= 100:
            raise ConfigError(f"window.carry_words must be 0..100, not {self.window.carry_words}")
        if not 0 <= self.supervisor.asr_nice <= 19:
            raise ConfigError(f"supervisor.asr_nice must be 0..19, not {self.supervisor.asr_nice}")
        for f in dataclasses.fields(self):  # every Literal field, also those set in code
            _check_choices(getattr(self, f.name), f.name)
        if not self.source.fast_lead_s > 0:
            raise ConfigError(f"source.fast_lead_s must be > 0, not {self.source.fast_lead_s!r}")
        if self.source.sample_rate != 16000:
            raise ConfigError("source.sample_rate: the ASR and feature stages expect 16000 Hz")
        extractor = getattr(self.audio_features, "extractor", "builtin")
        if extractor == "egemaps":
            import importlib.util

            if importlib.util.find_spec("opensmile") is None:
                raise ConfigError(
                    "audio_features.extractor = 'egemaps' needs the opensmile package: "
                    "pip install 'sentistream[opensmile]' (research / personal-use licence)"
                )
        _validate_fusion(self.fusion)
        _validate_asr(self.asr)
        _validate_ray(self.ray)
        _validate_security(self.transport)


def _validate_security(t: TransportConfig) -> None:
    """Anything but loopback needs CURVE keys; refuse to start without them, naming the key."""
    if not t.uses_curve():
        return
    import zmq

    from .security import is_loopback_host, missing_key_files

    if t.curve:
        why = "transport.curve = true"
    elif t.transport == "tcp" and not is_loopback_host(t.bind_host):
        why = f"transport.bind_host = {t.bind_host!r} is not a loopback address"
    else:
        why = f"transport.events_address = {t.events_address!r} is not a loopback address"
    if not zmq.has("curve"):
        raise ConfigError(f"transport.curve_keys_dir: {why}, which needs CURVE, but this libzmq has no CURVE support")
    if not t.curve_keys_dir:
        raise ConfigError(
            f"transport.curve_keys_dir: {why}, so every socket must use ZeroMQ CURVE; make keys with "
            "`sentistream keys --dir DIR` and set transport.curve_keys_dir = DIR"
        )
    missing = missing_key_files(t.curve_keys_dir)
    if missing:
        raise ConfigError(
            f"transport.curve_keys_dir: {t.curve_keys_dir} lacks {', '.join(missing)} "
            "(make them with `sentistream keys --dir DIR`)"
        )


def _validate_fusion(f: FusionConfig) -> None:
    if f.max_batch < 1:
        raise ConfigError("fusion.max_batch must be >= 1")
    buckets = f.text_buckets
    if (
        not isinstance(buckets, list)
        or not buckets
        or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in buckets)
    ):
        raise ConfigError(f"fusion.text_buckets must be a non-empty list of positive integers, not {buckets!r}")
    if f.server.startswith("ray://"):
        try:
            parse_ray_address(f.server)
        except ValueError as exc:
            raise ConfigError(f"fusion.server: {exc}") from None
    elif f.server and not f.server.startswith(("tcp://", "ipc://")):
        raise ConfigError(
            "fusion.server must be a tcp:// or ipc:// address (`sentistream serve`), a Ray Serve "
            f"application ray://HOST:PORT/APP (`sentistream serve --engine ray`), or empty, not {f.server!r}"
        )
    if f.server_timeout_s <= 0 or f.select_budget_s < 0:
        raise ConfigError("fusion.server_timeout_s must be > 0 and fusion.select_budget_s >= 0")


def _section_types() -> dict[str, type]:
    base = {f.name: f.type for f in dataclasses.fields(EngineConfig)}
    types_ = {k: v for k, v in base.items() if isinstance(v, type)}
    types_.update(
        {
            "transport": TransportConfig,
            "supervisor": SupervisorConfig,
            "source": SourceConfig,
            "window": WindowConfig,
            "fusion": FusionConfig,
            "ray": RayConfig,
        }
    )
    types_.update(_perception_sections())
    return types_


def _choice_error(dotted: str, value: Any, choices: tuple[Any, ...]) -> ConfigError:
    return ConfigError(f"{dotted} must be one of {', '.join(repr(c) for c in choices)}, not {value!r}")


def _check_choices(section: Any, prefix: str) -> None:
    """Each Literal-typed field of a section dataclass holds one of its choices."""
    if not dataclasses.is_dataclass(section):
        return
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        choices = typing.get_args(hints.get(f.name)) if typing.get_origin(hints.get(f.name)) is Literal else ()
        value = getattr(section, f.name)
        if choices and value not in choices:
            raise _choice_error(f"{prefix}.{f.name}", value, choices)


def _coerce(value: Any, annotation: Any, dotted: str) -> Any:
    """Check a TOML value against a dataclass field's annotation."""
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices):
            raise _choice_error(dotted, value, choices)
        return value
    if isinstance(annotation, str):
        annotation = {"str": str, "int": int, "float": float, "bool": bool}.get(annotation, Any)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(annotation):
            if arm is type(None) and value is None:
                return None
            try:
                return _coerce(value, arm, dotted)
            except ConfigError:
                continue
        raise ConfigError(f"{dotted}: {value!r} does not match {annotation}")
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{dotted}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{dotted}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{dotted}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{dotted}: expected a string, got {value!r}")
        return value
    return value


def _apply(obj: Any, data: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(obj)) if not isinstance(obj, type) else {}
    known = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        dotted = f"{prefix}.{key}"
        if key not in known:
            raise ConfigError(f"unknown config key '{dotted}' (known in [{prefix}]: {', '.join(sorted(known))})")
        setattr(obj, key, _coerce(value, hints.get(key, known[key].type), dotted))


def config_from_dict(data: dict[str, Any], base: EngineConfig | None = None) -> EngineConfig:
    cfg = base if base is not None else EngineConfig()
    sections = _section_types()
    for section, values in data.items():
        if section not in sections:
            raise ConfigError(f"unknown config section '{section}' (known: {', '.join(sorted(sections))})")
        if not isinstance(values, dict):
            raise ConfigError(f"'{section}' must be a table")
        _apply(getattr(cfg, section), values, section)
    cfg.validate()
    return cfg


def default_config_path() -> Path:
    return Path(str(resources.files("sentistream.configs").joinpath("default.toml")))


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> EngineConfig:
    """Defaults <- configs/default.toml <- the user's file <- command-line overrides."""
    cfg = EngineConfig()
    for p in (default_config_path(), path):
        if p is None:
            continue
        p = Path(p)
        named = default_config_path().parent / f"{p}.toml"
        if not p.is_file() and p.parent == Path(".") and p.suffix == "" and named.is_file():
            p = named  # a bundled profile by name: `--config low_latency`
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from None
        cfg = config_from_dict(data, cfg)
    if overrides:
        cfg = config_from_dict(overrides, cfg)
    return cfg


def config_to_dict(cfg: EngineConfig) -> dict[str, Any]:
    return cfg.to_dict()
