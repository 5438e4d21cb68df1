"""Fusion inference backends: one interface, several ways to run a zoo model.

    backend = select_backend(config.fusion, model, example_inputs)   # logs which and why
    out = backend(inputs)            # FusionInputs -> FusionOutput (score [B], contributions [B, 3])
    backend.name, backend.reason     # e.g. "onnxruntime", "auto: 0.9 ms vs eager 2.3 ms at batch 1"

Backends (``fusion.backend``):

* ``eager``: the model itself under ``torch.inference_mode``. The reference every other backend is
  tested against; exact shapes, no padding.
* ``compile``: ``torch.compile`` (mode ``reduce-overhead`` = CUDA graphs on a GPU,
  ``max-autotune-no-cudagraphs`` on a CPU). Shapes are static: sequence lengths are padded up to
  fixed buckets and the batch to a power of two, so it compiles once per bucket, never per window.
* ``onnxruntime``: ``torch.onnx.export`` (opset 17, dynamic batch axis, fixed bucketed sequence
  lengths, one graph per bucket) run by onnxruntime's CPUExecutionProvider with ``threads``
  intra-op threads. Exports are cached on disk (``fusion.cache_dir``), keyed by the model's weights
  hash, the bucket shapes, the opset and the torch version.
* ``tensorrt``: torch-tensorrt (``pip install 'sentistream[tensorrt]'``), fp16, a dynamic batch
  profile 1..``max_batch`` per sequence bucket, engines cached on disk keyed by model hash, input
  shapes, GPU name and the torch / torch-tensorrt versions. ``torch_tensorrt`` is imported lazily,
  only when this backend is asked for; without it the selection logs one line and falls back.
* ``auto``: on CUDA, TensorRT when ``torch_tensorrt`` imports, else ``compile``; on a CPU, the faster
  of onnxruntime and eager by a short measurement at start-up (``select_budget_s``). ``compile`` is
  not a CPU candidate for ``auto``: inductor's C++ compile takes minutes on a small CPU, far more
  than a start-up budget (ask for it by name).

Every backend but eager sees padded inputs. Models honour masks (models/base.py), so padding changes
nothing but rounding; the parity tests (tests/test_backends.py) hold every backend to eager within
1e-4 absolute on the score for fp32 backends (1e-5 typical) and 3e-2 for TensorRT fp16. The
``aux`` dict of :class:`FusionOutput` is only filled by ``eager``.

Boolean masks are passed to exported graphs (ONNX, TensorRT) as float32 0/1 tensors and turned back
into booleans inside the graph (``mask > 0.5``): bool graph inputs are poorly supported there.
"""

from __future__ import annotations

import abc
import hashlib
import importlib
import inspect
import itertools
import json
import logging
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..models.base import FusionInputs, FusionModel, FusionOutput
from .config import BACKENDS  # noqa: F401  (the one list, defined in engine/config.py)

log = logging.getLogger("sentistream.backends")

ONNX_OPSET = 17
TENSORRT_EXTRA = "pip install 'sentistream[tensorrt]'"
#: Parity tolerances (absolute, on the score) that tests and the bench hold backends to.
TOLERANCE = {"eager": 0.0, "compile": 1e-4, "onnxruntime": 1e-4, "tensorrt": 3e-2, "remote": 1e-4}


class BackendUnavailable(RuntimeError):
    """This backend cannot run here (missing package, no CUDA, export failed)."""


# --------------------------------------------------------------------------- options
@dataclass
class BackendOptions:
    """What the backends need from ``[fusion]`` (see :meth:`from_config`)."""

    backend: str = "auto"
    device: str = "cpu"
    max_batch: int = 64
    threads: int = 1
    text_buckets: tuple[int, ...] = (16, 32, 64, 128)
    audio_buckets: tuple[int, ...] = (60,)
    vision_buckets: tuple[int, ...] = (45,)
    compile_mode: str = ""  # "" = reduce-overhead on CUDA, max-autotune-no-cudagraphs on CPU
    cache_dir: str = ""  # "" = $XDG_CACHE_HOME/sentistream or ~/.cache/sentistream
    select_budget_s: float = 1.0
    opt_batch: int = 0  # TensorRT optimisation batch; 0 = min(8, max_batch)
    # ONNX buckets other than the example's: "all" = export now, "background" = in a thread
    # (the live stage: a fast start), "none" = on first use.
    onnx_prebuild: str = "all"

    @classmethod
    def from_config(cls, cfg: Any) -> BackendOptions:
        """From a FusionConfig (or anything with the same attribute names)."""
        max_audio = int(getattr(cfg, "max_audio_frames", 60))
        max_video = int(getattr(cfg, "max_video_frames", 45))
        return cls(
            backend=str(getattr(cfg, "backend", "auto")),
            device=str(getattr(cfg, "device", "cpu")),
            max_batch=int(getattr(cfg, "max_batch", 64)),
            threads=int(getattr(cfg, "threads", 1)),
            text_buckets=tuple(getattr(cfg, "text_buckets", None) or (16, 32, 64, 128)),
            audio_buckets=tuple(getattr(cfg, "audio_buckets", None) or (max_audio,)),
            vision_buckets=tuple(getattr(cfg, "vision_buckets", None) or (max_video,)),
            compile_mode=str(getattr(cfg, "compile_mode", "")),
            cache_dir=str(getattr(cfg, "cache_dir", "")),
            select_budget_s=float(getattr(cfg, "select_budget_s", 1.0)),
        )

    def plan(self) -> ShapePlan:
        return ShapePlan(self.text_buckets, self.audio_buckets, self.vision_buckets, self.max_batch)

    def cache_path(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "sentistream"


# --------------------------------------------------------------------------- shapes
def _sorted_buckets(values: Iterable[int], what: str) -> tuple[int, ...]:
    out = tuple(sorted({int(v) for v in values}))
    if not out or out[0] < 1:
        raise ValueError(f"{what}: buckets must be positive integers, got {list(values)}")
    return out


@dataclass(frozen=True)
class ShapePlan:
    """Sequence-length buckets per modality and batch buckets (powers of two up to ``max_batch``).

    A length maps to the smallest bucket that holds it; longer than the largest bucket, it is
    rounded up to a multiple of the largest (a rare, logged case that costs one more compile).
    """

    text: tuple[int, ...]
    audio: tuple[int, ...]
    vision: tuple[int, ...]
    max_batch: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", _sorted_buckets(self.text, "text_buckets"))
        object.__setattr__(self, "audio", _sorted_buckets(self.audio, "audio_buckets"))
        object.__setattr__(self, "vision", _sorted_buckets(self.vision, "vision_buckets"))
        if self.max_batch < 1:
            raise ValueError("max_batch must be >= 1")

    @staticmethod
    def _fit(buckets: tuple[int, ...], length: int) -> int:
        length = max(1, int(length))
        for b in buckets:
            if length <= b:
                return b
        top = buckets[-1]
        return -(-length // top) * top

    def seq_shape(self, lengths: Sequence[int]) -> tuple[int, int, int]:
        """Bucketed (text, audio, vision) lengths for padded lengths ``lengths``."""
        return (self._fit(self.text, lengths[0]), self._fit(self.audio, lengths[1]), self._fit(self.vision, lengths[2]))

    def batch_bucket(self, b: int) -> int:
        p = 1
        while p < b:
            p *= 2
        return p if b <= self.max_batch else b

    def combos(self) -> list[tuple[int, int, int]]:
        return list(itertools.product(self.text, self.audio, self.vision))


def _pad_steps(x: Tensor, m: Tensor, length: int) -> tuple[Tensor, Tensor]:
    n = x.shape[1]
    if n == length:
        return x, m
    if n > length:
        raise ValueError(f"cannot pad a sequence of {n} steps to {length}")
    zx = x.new_zeros(x.shape[0], length - n, x.shape[2])
    zm = torch.zeros(m.shape[0], length - n, dtype=torch.bool, device=m.device)
    return torch.cat([x, zx], dim=1), torch.cat([m.to(torch.bool), zm], dim=1)


def pad_inputs(inputs: FusionInputs, seq: Sequence[int], batch: int | None = None) -> FusionInputs:
    """Right-pad every sequence to ``seq`` (text, audio, vision) steps (mask False), and the batch
    to ``batch`` rows (all-invalid rows: every model stays finite on them)."""
    parts = [_pad_steps(x, m, n) for x, m, n in zip(inputs.sequences(), inputs.masks(), seq)]
    (t, tm), (a, am), (v, vm) = parts
    b = t.shape[0]
    if batch is not None and batch > b:
        extra = batch - b

        def grow(x: Tensor) -> Tensor:
            return torch.cat([x, x.new_zeros((extra,) + tuple(x.shape[1:]))], dim=0)

        t, a, v, tm, am, vm = (grow(x) for x in (t, a, v, tm, am, vm))
    return FusionInputs(t, a, v, tm, am, vm)


def collate(items: Sequence[FusionInputs], plan: ShapePlan | None = None) -> FusionInputs:
    """Concatenate several inputs (any lengths) into one batch padded to common (bucketed) lengths."""
    lengths = [max(it.sequences()[i].shape[1] for it in items) for i in range(3)]
    seq = plan.seq_shape(lengths) if plan is not None else tuple(lengths)
    padded = [pad_inputs(it, seq) for it in items]
    cat = [
        torch.cat([getattr(p, name) for p in padded], dim=0)
        for name in ("text", "audio", "vision", "text_mask", "audio_mask", "vision_mask")
    ]
    return FusionInputs(*cat)


# --------------------------------------------------------------------------- wrappers
class ExportWrapper(nn.Module):
    """Positional-tensor front of a zoo model for tracing/export: float masks in, (score, contrib) out."""

    def __init__(self, model: FusionModel, bool_masks: bool = False):
        super().__init__()
        self.model = model
        self.bool_masks = bool_masks

    def forward(
        self, text: Tensor, audio: Tensor, vision: Tensor, text_mask: Tensor, audio_mask: Tensor, vision_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        if self.bool_masks:
            masks = (text_mask, audio_mask, vision_mask)
        else:
            masks = (text_mask > 0.5, audio_mask > 0.5, vision_mask > 0.5)
        out = self.model(FusionInputs(text, audio, vision, *masks))
        return out.score, out.contributions


INPUT_NAMES = ["text", "audio", "vision", "text_mask", "audio_mask", "vision_mask"]
OUTPUT_NAMES = ["score", "contributions"]


def model_fingerprint(model: nn.Module) -> str:
    """sha256 (16 hex) of the model's class, hyper-parameters and every weight's bytes."""
    cached = getattr(model, "_sentistream_fingerprint", None)
    if cached:
        return cached
    h = hashlib.sha256()
    h.update(type(model).__qualname__.encode())
    h.update(json.dumps(getattr(model, "hparams", {}) or {}, sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()[:16]
    try:
        model._sentistream_fingerprint = digest  # type: ignore[attr-defined]
    except AttributeError:
        pass
    return digest


def _model_dims(model: FusionModel) -> tuple[int, int, int]:
    d = model.dims
    return int(d.text), int(d.audio), int(d.vision)


def example_inputs_for(
    model: FusionModel,
    plan: ShapePlan,
    batch: int = 1,
    lengths: Sequence[int] | None = None,
    seed: int = 0,
    device: Any = "cpu",
) -> FusionInputs:
    """Random inputs at the given lengths (default: the middle text bucket, full audio/vision)."""
    if lengths is None:
        lengths = (plan.text[len(plan.text) // 2], plan.audio[-1], plan.vision[-1])
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randn(batch, int(n), d, generator=g) for n, d in zip(lengths, _model_dims(model))]
    return FusionInputs.from_lengths(*seqs).to(device)


# --------------------------------------------------------------------------- interface
class FusionBackend(abc.ABC):
    """``backend(inputs) -> FusionOutput``; ``name`` and ``reason`` say what runs and why."""

    name: str = "backend"

    def __init__(self) -> None:
        self.reason = ""

    @abc.abstractmethod
    def __call__(self, inputs: FusionInputs) -> FusionOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "reason": self.reason}

    def close(self) -> None:  # noqa: B027 - a no-op unless a backend holds sockets or sessions
        """Release sockets or sessions (optional)."""


class EagerBackend(FusionBackend):
    name = "eager"

    def __init__(self, model: FusionModel, device: Any = "cpu"):
        super().__init__()
        self.model = model
        self.device = torch.device(device)

    def __call__(self, inputs: FusionInputs) -> FusionOutput:
        with torch.inference_mode():
            return self.model(inputs.to(self.device))


class _PaddedBackend(FusionBackend):
    """Shared front: pad to bucketed shapes, run ``_run`` on positional tensors, slice the batch."""

    pad_batch = False

    def __init__(self, model: FusionModel, plan: ShapePlan, device: Any):
        super().__init__()
        self.model = model
        self.plan = plan
        self.device = torch.device(device)
        self._warned_long = False

    def _shape_for(self, inputs: FusionInputs) -> tuple[tuple[int, int, int], int]:
        lengths = [x.shape[1] for x in inputs.sequences()]
        seq = self.plan.seq_shape(lengths)
        if not self._warned_long and any(
            n > top for n, top in zip(lengths, (self.plan.text[-1], self.plan.audio[-1], self.plan.vision[-1]))
        ):
            self._warned_long = True
            log.warning(
                "%s backend: input lengths %s exceed the largest buckets; padded to %s (one more compile/export)",
                self.name,
                lengths,
                seq,
            )
        b = inputs.batch_size
        return seq, (self.plan.batch_bucket(b) if self.pad_batch else b)

    def __call__(self, inputs: FusionInputs) -> FusionOutput:
        seq, batch = self._shape_for(inputs)
        b = inputs.batch_size
        padded = pad_inputs(inputs.to(self.device), seq, batch)
        score, contrib = self._run(padded, seq, batch)
        return FusionOutput(score[:b], contrib[:b], {})

    @abc.abstractmethod
    def _run(
        self, x: FusionInputs, seq: tuple[int, int, int], batch: int
    ) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------- torch.compile
def _raise_recompile_limit(n: int) -> None:
    cfg = torch._dynamo.config
    for attr in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, attr) and getattr(cfg, attr) < n:
            setattr(cfg, attr, n)


class CompileBackend(_PaddedBackend):
    name = "compile"
    pad_batch = True

    def __init__(
        self,
        model: FusionModel,
        plan: ShapePlan,
        device: Any = "cpu",
        mode: str = "",
        warm: Sequence[tuple[tuple[int, int, int], int]] | None = None,
        dynamo_backend: str = "inductor",
    ):
        """``dynamo_backend`` other than inductor (tests: "eager") exercises the same padding and
        graph capture without code generation; ``mode`` then does not apply."""
        super().__init__(model, plan, device)
        if not hasattr(torch, "compile"):
            raise BackendUnavailable("this torch has no torch.compile")
        self.cuda = self.device.type == "cuda"
        self.mode = mode or ("reduce-overhead" if self.cuda else "max-autotune-no-cudagraphs")
        n_batch = max(1, plan.max_batch.bit_length() + 1)
        _raise_recompile_limit(len(plan.combos()) * n_batch + 8)
        self.wrapper = ExportWrapper(model, bool_masks=True).eval()
        if dynamo_backend == "inductor":
            mode_arg = None if self.mode == "default" else self.mode
            self.compiled = torch.compile(self.wrapper, mode=mode_arg, dynamic=False, fullgraph=False)
        else:
            self.mode = f"backend={dynamo_backend}"
            self.compiled = torch.compile(self.wrapper, backend=dynamo_backend, dynamic=False)
        self.compiled_shapes: set[tuple[tuple[int, int, int], int]] = set()
        t = time.perf_counter()
        for seq, batch in warm or []:
            self._run(
                pad_inputs(example_inputs_for(model, plan, batch, seq, device=self.device), seq, batch), seq, batch
            )
        if warm:
            log.info(
                "compile backend (%s): %d shape(s) compiled in %.1f s", self.mode, len(warm), time.perf_counter() - t
            )

    def _run(self, x: FusionInputs, seq, batch) -> tuple[Tensor, Tensor]:
        self.compiled_shapes.add((tuple(seq), batch))
        with torch.no_grad():
            if self.cuda and hasattr(torch, "compiler") and hasattr(torch.compiler, "cudagraph_mark_step_begin"):
                torch.compiler.cudagraph_mark_step_begin()
            score, contrib = self.compiled(x.text, x.audio, x.vision, x.text_mask, x.audio_mask, x.vision_mask)
            # CUDA graphs reuse their output buffers on the next replay: keep our own copy.
            return score.clone(), contrib.clone()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "mode": self.mode}


# --------------------------------------------------------------------------- ONNX + onnxruntime
def onnx_export(model: FusionModel, path: Path, seq: Sequence[int], opset: int = ONNX_OPSET, batch: int = 2) -> Path:
    """Export ``model`` with a dynamic batch axis and fixed sequence lengths ``seq`` to ``path``."""
    wrapper = ExportWrapper(model, bool_masks=False).eval().cpu()
    ex = example_inputs_for(model, ShapePlan(*((n,) for n in seq)), batch, seq)
    args = (ex.text, ex.audio, ex.vision, ex.text_mask.float(), ex.audio_mask.float(), ex.vision_mask.float())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".onnx.tmp", dir=str(path.parent))
    os.close(fd)
    dynamic = {name: {0: "batch"} for name in INPUT_NAMES + OUTPUT_NAMES}
    import warnings

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            try:
                # The TorchScript exporter: no extra dependency, quick, and honours dynamic_axes.
                torch.onnx.export(
                    wrapper,
                    args,
                    tmp,
                    dynamo=False,
                    opset_version=opset,
                    input_names=INPUT_NAMES,
                    output_names=OUTPUT_NAMES,
                    dynamic_axes=dynamic,
                    do_constant_folding=True,
                )
            except TypeError:  # a torch without the `dynamo` switch
                torch.onnx.export(
                    wrapper,
                    args,
                    tmp,
                    opset_version=opset,
                    input_names=INPUT_NAMES,
                    output_names=OUTPUT_NAMES,
                    dynamic_axes=dynamic,
                )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


class OnnxRuntimeBackend(_PaddedBackend):
    name = "onnxruntime"

    def __init__(
        self,
        model: FusionModel,
        plan: ShapePlan,
        threads: int = 1,
        cache_dir: Path | None = None,
        prebuild: str = "all",
        first: tuple[int, int, int] | None = None,
    ):
        """``prebuild``: "all" exports every bucket now; "background" exports ``first`` now and
        the rest in a background thread (buckets not ready yet run eagerly meanwhile, with the
        same results); "none" exports each bucket on first use. Exports are cached on disk, so
        only the first start with a given model pays for them."""
        super().__init__(model, plan, "cpu")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime is not installed ({exc})") from None
        if prebuild not in ("all", "background", "none"):
            raise ValueError(f"prebuild must be all, background or none, not {prebuild!r}")
        self.ort = ort
        self.threads = max(1, int(threads))
        self.cache_dir = Path(cache_dir) if cache_dir else BackendOptions().cache_path()
        self.fingerprint = model_fingerprint(model)
        # Export from a CPU copy so a CUDA model is left where it is.
        self._cpu_model = model if _on_cpu(model) else _cpu_copy(model)
        self._eager = EagerBackend(self._cpu_model, "cpu")
        self.sessions: dict[tuple[int, int, int], Any] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        _remove_stale_tmp(self.cache_dir / "onnx")
        self.exported = 0
        self.eager_calls = 0  # windows run eagerly while their bucket was still exporting
        t = time.perf_counter()
        if first is not None:
            self._session(tuple(first))
        if prebuild == "all":
            for seq in plan.combos():
                self._session(seq)
        self.build_s = time.perf_counter() - t
        if prebuild == "background":
            self.start_background_prebuild()

    def start_background_prebuild(self) -> None:
        """Export the remaining buckets in a daemon thread (from a private copy of the model)."""
        todo = [seq for seq in self.plan.combos() if seq not in self.sessions]
        if not todo or self._thread is not None:
            return
        source = _cpu_copy(self._cpu_model)

        def work() -> None:
            t = time.perf_counter()
            for seq in todo:
                try:
                    self._session(seq, source)
                except Exception as exc:  # the bucket keeps running eagerly
                    log.warning("onnxruntime backend: background export of %s failed: %s", seq, exc)
            log.info(
                "onnxruntime backend: %d more bucket(s) ready after %.1f s in the background",
                len(todo),
                time.perf_counter() - t,
            )

        self._thread = threading.Thread(target=work, name="onnx-export", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the background exports are done (tests, benches)."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def onnx_path(self, seq: Sequence[int]) -> Path:
        name = getattr(self.model, "name", "model")
        tv = torch.__version__.split("+")[0]
        return (
            self.cache_dir
            / "onnx"
            / f"{name}-{self.fingerprint}-t{seq[0]}a{seq[1]}v{seq[2]}-op{ONNX_OPSET}-torch{tv}.onnx"
        )

    def _session(self, seq: tuple[int, int, int], source: FusionModel | None = None):
        sess = self.sessions.get(seq)
        if sess is not None:
            return sess
        source = source if source is not None else self._cpu_model
        path = self.onnx_path(seq)
        if not path.is_file():
            t = time.perf_counter()
            try:
                onnx_export(source, path, seq)
            except Exception as exc:
                raise BackendUnavailable(f"ONNX export failed at lengths {seq}: {exc}") from exc
            self.exported += 1
            log.info("onnxruntime backend: exported %s in %.1f s", path.name, time.perf_counter() - t)
        ort = self.ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning worker threads would burn the cores the other stages need.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # a corrupt cache file: export again once
            log.warning("onnxruntime backend: cannot load %s (%s); exporting again", path.name, exc)
            path.unlink(missing_ok=True)
            onnx_export(source, path, seq)
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        with self._lock:
            self.sessions[seq] = sess
        return sess

    def __call__(self, inputs: FusionInputs) -> FusionOutput:
        if self._thread is not None and self._thread.is_alive():
            seq, _ = self._shape_for(inputs)
            if seq not in self.sessions and seq in set(self.plan.combos()):
                self.eager_calls += 1  # still exporting: same model, same results
                out = self._eager(inputs.to("cpu"))
                return FusionOutput(out.score, out.contributions, {})
        return super().__call__(inputs)

    def _run(self, x: FusionInputs, seq, batch) -> tuple[Tensor, Tensor]:
        sess = self.sessions.get(tuple(seq)) or self._session(tuple(seq))
        feeds = {
            "text": x.text.detach().cpu().float().numpy(),
            "audio": x.audio.detach().cpu().float().numpy(),
            "vision": x.vision.detach().cpu().float().numpy(),
            "text_mask": x.text_mask.cpu().float().numpy(),
            "audio_mask": x.audio_mask.cpu().float().numpy(),
            "vision_mask": x.vision_mask.cpu().float().numpy(),
        }
        score, contrib = sess.run(OUTPUT_NAMES, feeds)
        return torch.from_numpy(score), torch.from_numpy(contrib)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "threads": self.threads, "graphs": len(self.sessions)}


def _remove_stale_tmp(folder: Path, age_s: float = 3600.0) -> None:
    """Half-written exports of a process that died mid-export (older than an hour)."""
    try:
        for p in folder.glob("*.onnx.tmp"):
            if time.time() - p.stat().st_mtime > age_s:
                p.unlink(missing_ok=True)
    except OSError:
        pass


def _on_cpu(model: nn.Module) -> bool:
    return all(p.device.type == "cpu" for p in itertools.chain(model.parameters(), model.buffers()))


def _cpu_copy(model: FusionModel) -> FusionModel:
    import copy

    return copy.deepcopy(model).cpu().eval()


# --------------------------------------------------------------------------- TensorRT
def load_torch_tensorrt(importer: Callable[[str], Any] = importlib.import_module):
    """Import torch_tensorrt lazily. Raises :class:`BackendUnavailable` with a clear message."""
    try:
        return importer("torch_tensorrt")
    except ImportError as exc:
        raise BackendUnavailable(
            f"torch_tensorrt is not installed (the optional extra: {TENSORRT_EXTRA}; {exc})"
        ) from None
    except Exception as exc:  # a broken install: wrong TensorRT / CUDA libraries
        raise BackendUnavailable(f"torch_tensorrt failed to import: {exc!r}") from None


def tensorrt_cache_key(
    fingerprint: str, seq: Sequence[int], dims: Sequence[int], max_batch: int, gpu_name: str, versions: str
) -> str:
    """File stem of a cached engine: the model hash, every input shape, the GPU and the versions."""
    shapes = f"b1-{max_batch}_t{seq[0]}x{dims[0]}_a{seq[1]}x{dims[1]}_v{seq[2]}x{dims[2]}"
    gpu = "".join(c if c.isalnum() else "-" for c in gpu_name.lower()).strip("-")
    tag = hashlib.sha256(f"{fingerprint}|{shapes}|{gpu}|{versions}".encode()).hexdigest()[:12]
    return f"{fingerprint}-{shapes}-{gpu}-{tag}"


def tensorrt_input_specs(
    trt: Any, seq: Sequence[int], dims: Sequence[int], max_batch: int, opt_batch: int
) -> list[Any]:
    """torch_tensorrt.Input specs: a dynamic batch profile 1..max_batch (opt ``opt_batch``)."""
    opt = max(1, min(opt_batch, max_batch))
    specs = []
    for n, d in zip(seq, dims):
        specs.append(
            trt.Input(min_shape=(1, n, d), opt_shape=(opt, n, d), max_shape=(max_batch, n, d), dtype=torch.float32)
        )
    for n in seq:
        specs.append(trt.Input(min_shape=(1, n), opt_shape=(opt, n), max_shape=(max_batch, n), dtype=torch.float32))
    return specs


def tensorrt_precision_kwargs(trt: Any) -> dict[str, Any]:
    """fp16 settings for this torch_tensorrt: rule-based autocast where it exists (TensorRT >= 10.12
    dropped weak typing), else the classic ``enabled_precisions``."""
    try:
        params = inspect.signature(trt.dynamo.compile).parameters
    except (AttributeError, TypeError, ValueError):
        params = {}
    if "enable_autocast" in params:
        kw: dict[str, Any] = {"use_explicit_typing": True, "enable_autocast": True}
        for name in ("low_precision_type", "autocast_low_precision_type"):
            if name in params:
                kw[name] = torch.float16
                break
        return kw
    return {"enabled_precisions": {torch.float16, torch.float32}}


def _cuda_ok(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available()


class TensorRTBackend(_PaddedBackend):
    name = "tensorrt"

    def __init__(
        self,
        model: FusionModel,
        plan: ShapePlan,
        device: Any = "cuda",
        cache_dir: Path | None = None,
        opt_batch: int = 0,
        importer: Callable[[str], Any] = importlib.import_module,
    ):
        super().__init__(model, plan, device)
        self.trt = load_torch_tensorrt(importer)  # first: say so when the extra is missing
        if not _cuda_ok(self.device):
            raise BackendUnavailable(
                f"TensorRT needs a CUDA device (fusion.device = {str(self.device)!r}, "
                f"CUDA available: {torch.cuda.is_available()})"
            )
        self.cache_dir = Path(cache_dir) if cache_dir else BackendOptions().cache_path()
        self.opt_batch = opt_batch or min(8, plan.max_batch)
        self.fingerprint = model_fingerprint(model)
        self.dims = _model_dims(model)
        self.gpu_name = torch.cuda.get_device_name(self.device)
        self.versions = f"torch{torch.__version__}-trt{getattr(self.trt, '__version__', '?')}"
        self.engines: dict[tuple[int, int, int], Any] = {}
        self.cache_hits = 0
        for seq in plan.combos():
            self.engines[seq] = self._engine(seq)

    def engine_path(self, seq: Sequence[int]) -> Path:
        key = tensorrt_cache_key(self.fingerprint, seq, self.dims, self.plan.max_batch, self.gpu_name, self.versions)
        return self.cache_dir / "tensorrt" / f"{key}.ep"

    def _engine(self, seq: tuple[int, int, int]):
        path = self.engine_path(seq)
        if path.is_file():
            try:
                module = torch.export.load(str(path)).module()
                self.cache_hits += 1
                log.info("tensorrt backend: engine loaded from %s", path)
                return module
            except Exception as exc:
                log.warning("tensorrt backend: cached engine %s unusable (%s); rebuilding", path.name, exc)
        trt = self.trt
        specs = tensorrt_input_specs(trt, seq, self.dims, self.plan.max_batch, self.opt_batch)
        wrapper = ExportWrapper(self.model, bool_masks=False).eval()
        t = time.perf_counter()
        module = trt.compile(wrapper, ir="dynamo", inputs=specs, min_block_size=1, **tensorrt_precision_kwargs(trt))
        log.info(
            "tensorrt backend: built an fp16 engine for lengths %s, batch 1..%d in %.1f s",
            seq,
            self.plan.max_batch,
            time.perf_counter() - t,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        for kwargs in ({"arg_inputs": specs}, {"inputs": specs}):
            try:
                trt.save(module, str(path), **kwargs)
                break
            except TypeError:
                continue
            except Exception as exc:  # saving is an optimisation: run on without the cache
                log.warning("tensorrt backend: engine not cached (%s)", exc)
                break
        return module

    def _run(self, x: FusionInputs, seq, batch) -> tuple[Tensor, Tensor]:
        engine = self.engines.get(tuple(seq))
        if engine is None:
            engine = self.engines[tuple(seq)] = self._engine(tuple(seq))
        if batch > self.plan.max_batch:
            raise ValueError(f"batch {batch} exceeds the TensorRT profile (max_batch {self.plan.max_batch})")
        with torch.no_grad():
            score, contrib = engine(
                x.text.float(),
                x.audio.float(),
                x.vision.float(),
                x.text_mask.float(),
                x.audio_mask.float(),
                x.vision_mask.float(),
            )
        return score.float(), contrib.float()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "gpu": self.gpu_name, "precision": "fp16", "max_batch": self.plan.max_batch}


# --------------------------------------------------------------------------- selection
def measure_ms(
    fn: Callable[[], Any],
    budget_s: float,
    min_runs: int = 5,
    max_runs: int = 10_000,
    sync: Callable[[], None] = lambda: None,
) -> list[float]:
    """Per-call wall times (ms) of ``fn`` for about ``budget_s`` seconds (after one warm-up call)."""
    fn()
    sync()
    times: list[float] = []
    end = time.perf_counter() + budget_s
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() < end):
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def _build(
    name: str, model: FusionModel, opts: BackendOptions, device: torch.device, example: FusionInputs
) -> FusionBackend:
    plan = opts.plan()
    if name == "eager":
        return EagerBackend(model, device)
    if name == "onnxruntime":
        first = plan.seq_shape([x.shape[1] for x in example.sequences()])
        return OnnxRuntimeBackend(model, plan, opts.threads, opts.cache_path(), opts.onnx_prebuild, first)
    if name == "compile":
        b = example.batch_size
        seq = plan.seq_shape([x.shape[1] for x in example.sequences()])
        return CompileBackend(model, plan, device, opts.compile_mode, warm=[(seq, plan.batch_bucket(b))])
    if name == "tensorrt":
        return TensorRTBackend(model, plan, device, opts.cache_path(), opts.opt_batch)
    raise ValueError(f"unknown fusion backend {name!r} (one of {', '.join(BACKENDS)})")


def _chain(requested: str, device: torch.device) -> list[str]:
    cuda = device.type == "cuda"
    if requested == "auto":
        return ["tensorrt", "compile", "eager"] if cuda else ["cpu-auto"]
    if requested == "tensorrt":
        return ["tensorrt", "compile", "eager"] if cuda else ["tensorrt", "cpu-auto"]
    if requested in ("compile", "onnxruntime"):
        return [requested, "eager"]
    if requested == "eager":
        return ["eager"]
    raise ValueError(f"unknown fusion backend {requested!r} (one of {', '.join(BACKENDS)})")


def _cpu_auto(
    model: FusionModel, opts: BackendOptions, device: torch.device, example: FusionInputs, notes: list[str]
) -> FusionBackend:
    """The faster of onnxruntime and eager at batch 1, by a short interleaved measurement."""
    eager = EagerBackend(model, device)
    try:
        t = time.perf_counter()
        plan = opts.plan()
        first = plan.seq_shape([x.shape[1] for x in example.sequences()])
        ort_backend = OnnxRuntimeBackend(model, plan, opts.threads, opts.cache_path(), prebuild="none", first=first)
        build_s = time.perf_counter() - t
    except BackendUnavailable as exc:
        notes.append(f"onnxruntime unavailable: {exc}")
        log.warning("fusion backend: onnxruntime unavailable (%s)", exc)
        eager.reason = "; ".join(notes + ["eager"])
        return eager
    one = FusionInputs(
        *(getattr(example, n)[:1] for n in ("text", "audio", "vision", "text_mask", "audio_mask", "vision_mask"))
    )
    candidates = {"eager": lambda: eager(one), "onnxruntime": lambda: ort_backend(one)}
    times: dict[str, list[float]] = {k: [] for k in candidates}
    for fn in candidates.values():
        fn()  # warm-up
    # Alternate single calls so a burst of load elsewhere hits both candidates alike; at least
    # three calls each, then until the budget is spent.
    end = time.perf_counter() + opts.select_budget_s
    while min(map(len, times.values())) < 3 or time.perf_counter() < end:
        for name, fn in candidates.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1e3)
        if sum(map(len, times.values())) >= 2000:
            break
    med = {k: statistics.median(v) for k, v in times.items()}
    winner = "onnxruntime" if med["onnxruntime"] <= med["eager"] else "eager"
    other = "eager" if winner == "onnxruntime" else "onnxruntime"
    shape = "/".join(str(x.shape[1]) for x in one.sequences())
    notes.append(
        f"auto on CPU: {winner} {med[winner]:.2f} ms vs {other} {med[other]:.2f} ms "
        f"(median at batch 1, lengths {shape}, {sum(map(len, times.values()))} runs; "
        f"first onnx graph ready in {build_s:.1f} s; compile is not a CPU auto candidate)"
    )
    chosen = ort_backend if winner == "onnxruntime" else eager
    if chosen is ort_backend:
        if opts.onnx_prebuild == "background":
            ort_backend.start_background_prebuild()
        elif opts.onnx_prebuild == "all":
            for seq in plan.combos():
                ort_backend._session(seq)
    chosen.measured_ms = dict(med)  # type: ignore[attr-defined]
    return chosen


def select_backend(
    config: Any, model: FusionModel, example_inputs: FusionInputs | None = None, device: Any = None
) -> FusionBackend:
    """Build the backend ``config.backend`` asks for, falling back step by step when it cannot run.

    ``config``: a :class:`BackendOptions` or a ``[fusion]`` config. Logs one INFO line naming the
    backend and why (WARNING lines for each fallback); ``backend.reason`` holds the same text.
    """
    opts = config if isinstance(config, BackendOptions) else BackendOptions.from_config(config)
    dev = torch.device(device if device is not None else opts.device)
    model.eval()
    if example_inputs is None:
        example_inputs = example_inputs_for(model, opts.plan(), device=dev)
    notes: list[str] = []
    chosen: FusionBackend | None = None
    for name in _chain(opts.backend, dev):
        if name == "cpu-auto":
            try:
                chosen = _cpu_auto(model, opts, dev, example_inputs, notes)
            except Exception as exc:  # onnxruntime failing at run time: eager, and say why
                notes.append(f"onnxruntime failed: {exc!r}; eager")
                log.warning("fusion backend onnxruntime failed (%r); falling back to eager", exc)
                chosen = EagerBackend(model, dev)
            break
        try:
            chosen = _build(name, model, opts, dev, example_inputs)
        except BackendUnavailable as exc:
            notes.append(f"{name} unavailable: {exc}")
            log.warning("fusion backend %s unavailable: %s; falling back", name, exc)
            continue
        except Exception as exc:  # a compile/export failure must never stop the engine
            notes.append(f"{name} failed: {exc!r}")
            log.warning("fusion backend %s failed (%r); falling back", name, exc)
            continue
        if opts.backend == "auto" and name != "eager" and not notes:
            notes.append(f"auto on CUDA: {name}")
        elif name == opts.backend:
            notes.append("requested")
        else:
            notes.append(f"fallback to {name}")
        break
    if chosen is None:  # unreachable: eager always builds
        chosen = EagerBackend(model, dev)
        notes.append("eager")
    chosen.reason = "; ".join(notes)
    log.info("fusion backend: %s (%s)", chosen.name, chosen.reason)
    return chosen
