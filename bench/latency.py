"""`sentistream bench latency`: how fast the fusion model runs and how fresh the live events are.

    sentistream bench latency                      # full run: ~15 min on a CPU (10 min real-time stream)
    sentistream bench latency --smoke              # a quick check (short timings, 0.5 min stream)
    sentistream bench latency --device cuda        # on a GPU machine (TensorRT/compile/eager)

Writes ``bench/results/latency-<device>.json`` (+ ``.md`` and a ``.png`` latency CDF; ``--smoke``
adds ``-smoke`` to the names so a quick check never overwrites real results), stamped with the
device, driver and package versions, the date and the command. What it measures:

1. Fusion microbench (no pipeline): every backend (engine/backends.py) on the same inputs, after
   warm-up, each call including input padding and the copy of the scores to the CPU.
   ``fusion_batch1_p50_ms[shapes][backend]`` for ALMT at the live shapes (text 32 tokens x 384,
   audio 60 x 40, vision 45 x 100) and at the MOSI shapes (text 50 x 768, audio 375 x 5, vision
   500 x 20, as the published ALMT code); other models (``--models``) at the live shapes under
   ``fusion``. ``fusion_windows_per_s[backend][batch]`` for ALMT at the live shapes, batch 1, 32
   and 256. Each backend is also checked against eager (``max_abs_diff``).
2. The live pipeline on the bundled demo clip (20 s) and on a long generated stream (the demo clip
   looped for ``--long-minutes``, default 10), both at real-time pace through every stage, under
   each ``--profiles`` config: ``default`` (windows on a 0.25 s grid of stream time) and
   ``low_latency`` (configs/low_latency.toml: a window ends at every face frame); rows of a
   non-default profile are labelled ``demo/<profile>``, ``long/<profile>``:
   * ``frame_to_event_p50_ms`` / ``_p99_ms``: for every video frame the face stage processed, its
     capture time to the emit time of the first event whose window holds it (the face stage's
     output is tapped for the frames' capture times). This includes waiting for the window to
     close: with a 250 ms hop a frame waits up to one hop, about half a hop on average.
   * ``newest_frame_to_event_p50_ms`` / ``_p99_ms``: per event, the newest frame inside its
     window, capture -> emit: the pipeline's own latency without the hop wait.
   * ``speech_end_to_text_p50_ms``: for every word, the end of the word as spoken (session start +
     the word's end time; the file source paces audio to real time) to the emit time of the first
     event that carries it in ``new_words``. End-of-stream flush events are left out.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.config import BACKENDS
from .common import RESULTS, command_line, device_tag, show_bench_progress, stamp, summary, write_json

log = logging.getLogger("sentistream.bench.latency")

BATCHES = (1, 4, 32, 256)  # 4: a window with its occlusion rows (docs/protocol.md)
LIVE_LENGTHS = (32, 60, 45)  # text tokens (an 8 s transcript), audio steps, video frames
LIVE_BUCKETS = ((16, 32, 64, 128), (60,), (45,))
MOSI_DIMS = (768, 5, 20)
MOSI_LENGTHS = (50, 375, 500)
ALL_BACKENDS = tuple(reversed([b for b in BACKENDS if b != "auto"]))  # eager first

# Targets from issue 5 (benchmarks, never tests); shown next to the figures in the markdown.
TARGETS_CPU = {
    "fusion_batch1_p50_ms/live": 5.0,
    "fusion_batch1_p50_ms/mosi": 8.0,
    "frame_to_event_p50_ms": 60.0,
    "frame_to_event_p99_ms": 150.0,
    "speech_end_to_text_p50_ms": 1200.0,
}
TARGETS_GPU = {
    "fusion_batch1_p50_ms/live": 0.2,
    "fusion_windows_per_s/256": 100_000.0,
    "speech_end_to_text_p50_ms": 250.0,
}


# --------------------------------------------------------------------------- fusion microbench
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_backend(name: str, model, plan, device, threads: int, cache_dir: str | None, lengths) -> Any:
    """One backend, built directly (no fallback): raises when it cannot run here."""
    from ..engine import backends as B

    cache = Path(cache_dir) if cache_dir else B.BackendOptions().cache_path()
    seq = plan.seq_shape(lengths)
    if name == "eager":
        return B.EagerBackend(model, device)
    if name == "onnxruntime":
        return B.OnnxRuntimeBackend(model, plan, threads, cache, prebuild="none", first=seq)
    if name == "compile":
        return B.CompileBackend(model, plan, device, warm=[(seq, 1)])
    if name == "tensorrt":
        return B.TensorRTBackend(model, plan, device, cache)
    raise ValueError(f"unknown backend {name!r}")


def _mixed_batch(model, plan, lengths, device):
    """Three windows of different lengths (the last with no text): parity on what batching sees."""
    from ..engine.backends import example_inputs_for

    x = example_inputs_for(model, plan, 3, lengths, seed=1, device=device)
    for m in (x.text_mask, x.audio_mask, x.vision_mask):
        m[1, max(1, m.shape[1] // 2) :] = False
        m[2, max(1, m.shape[1] // 3) :] = False
    x.text_mask[2, :] = False
    return x


def bench_model(
    model_name: str,
    shapes: str,
    backends: list[str],
    device,
    budget_s: float,
    threads: int,
    cache_dir: str | None,
    batches: tuple[int, ...],
) -> dict[str, Any]:
    import torch

    from ..engine.backends import EagerBackend, ShapePlan, example_inputs_for, measure_ms
    from ..models import ModalityDims, build_from_config

    dims = ModalityDims(*MOSI_DIMS) if shapes == "mosi" else None
    lengths = MOSI_LENGTHS if shapes == "mosi" else LIVE_LENGTHS
    buckets = tuple((n,) for n in MOSI_LENGTHS) if shapes == "mosi" else LIVE_BUCKETS
    plan = ShapePlan(*buckets, max_batch=max(batches))
    torch.manual_seed(0)
    if dims is None:
        from ..models import DEFAULT_DIMS

        dims = DEFAULT_DIMS
    model = build_from_config(model_name, dims).to(device).eval()
    x1 = example_inputs_for(model, plan, 1, lengths, device=device)
    mixed = _mixed_batch(model, plan, lengths, device)
    eager = EagerBackend(model, device)
    ref1, ref_mixed = eager(x1), eager(mixed)
    out: dict[str, Any] = {
        "model": model_name,
        "shapes": {k: [n, d] for k, n, d in zip(("text", "audio", "vision"), lengths, dims)},
        "parameters": sum(p.numel() for p in model.parameters()),
        "backends": {},
    }
    for name in backends:
        rec: dict[str, Any] = {}
        out["backends"][name] = rec
        t = time.perf_counter()
        try:
            backend = make_backend(name, model, plan, device, threads, cache_dir, lengths)
        except Exception as exc:
            rec.update(available=False, reason=str(exc).splitlines()[0][:300])
            log.warning("%s/%s/%s unavailable: %s", shapes, model_name, name, rec["reason"])
            continue
        rec.update(available=True, build_s=round(time.perf_counter() - t, 2))
        try:
            with torch.inference_mode(False):
                o1, om = backend(x1), backend(mixed)
            rec["max_abs_diff"] = {
                "score": float(
                    max(
                        (o1.score.cpu() - ref1.score.cpu()).abs().max(),
                        (om.score.cpu() - ref_mixed.score.cpu()).abs().max(),
                    )
                ),
                "contributions": float(
                    max(
                        (o1.contributions.cpu() - ref1.contributions.cpu()).abs().max(),
                        (om.contributions.cpu() - ref_mixed.contributions.cpu()).abs().max(),
                    )
                ),
            }
            times = measure_ms(
                lambda backend=backend: backend(x1).score.cpu(), budget_s, min_runs=5, sync=lambda: _sync(device)
            )
            rec["batch1_ms"] = summary(times)
            rec["_times"] = times
            rec["windows_per_s"] = {"1": round(1e3 / statistics.median(times), 1)}
            for b in batches:
                if b == 1:
                    continue
                xb = example_inputs_for(model, plan, b, lengths, seed=2, device=device)
                tb = measure_ms(
                    lambda backend=backend, xb=xb: backend(xb).score.cpu(),
                    budget_s,
                    min_runs=2,
                    sync=lambda: _sync(device),
                )
                rec["windows_per_s"][str(b)] = round(b * 1e3 / statistics.median(tb), 1)
                rec.setdefault("batch_ms", {})[str(b)] = summary(tb)
        except Exception as exc:  # a backend that builds but fails at some shape: say so, go on
            rec["error"] = repr(exc)[:300]
            log.warning("%s/%s/%s failed: %r", shapes, model_name, name, exc)
        log.info(
            "%s %s %s: %s",
            shapes,
            model_name,
            name,
            {k: rec.get(k) for k in ("batch1_ms", "windows_per_s", "max_abs_diff")},
        )
    return out


# --------------------------------------------------------------------------- pipeline
def run_pipeline(label: str, minutes: float, config_path: str | None, backend: str | None) -> dict[str, Any]:
    """Run the live graph on the demo clip (looped for ``minutes``, 0 = once) at real-time pace,
    tapping the face stage for frame capture times. Returns the raw events and frames."""
    import zmq

    from ..engine.config import load_config
    from ..engine.messages import MessageError, decode
    from ..engine.supervisor import Supervisor
    from ..pipelines.standard import standard_pipeline

    source: dict[str, Any] = {"kind": "demo", "pace": "realtime"}
    if minutes > 0:
        source.update(loop=True, duration_s=float(minutes) * 60.0)
    overrides: dict[str, Any] = {"source": source}
    if backend:
        overrides["fusion"] = {"backend": backend}
    cfg = load_config(config_path, overrides)
    cfg.supervisor.drain_timeout_s = max(cfg.supervisor.drain_timeout_s, 120.0)
    sup = Supervisor(standard_pipeline(cfg), cfg)
    ctx = zmq.Context.instance()
    tap = ctx.socket(zmq.SUB)
    tap.setsockopt(zmq.SUBSCRIBE, b"face")
    tap.setsockopt(zmq.RCVHWM, 100_000)
    tap.setsockopt(zmq.LINGER, 0)
    tap.connect(sup.stages["face"].spec.output_address)
    frames: list[tuple[float, int]] = []
    events: list[dict] = []

    def drain(_stages=None) -> None:
        while True:
            try:
                raw = tap.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = decode(raw)
            except MessageError:
                continue
            if msg.kind == "face_features":
                frames.append((msg.t_media_s, msg.t_capture_ns))

    t_wall = time.monotonic()
    log.info("pipeline %s: demo clip%s at real-time pace", label, f" looped for {minutes:g} min" if minutes > 0 else "")
    result = sup.run(on_event=events.append, on_status=drain)
    drain()
    tap.close(linger=0)
    return {
        "label": label,
        "minutes": minutes,
        "t0_ns": sup.t0_ns,
        "events": events,
        "frames": frames,
        "exit_code": result.exit_code,
        "error": result.error,
        "restarts": result.restarts,
        "wall_s": round(time.monotonic() - t_wall, 1),
        "length_s": cfg.window.length_s,
        "stats": result.stats,
    }


def _profile_summary(config: str | None) -> dict[str, Any]:
    """The window settings a pipeline profile runs with (they set how long a frame waits)."""
    from ..engine.config import load_config

    w = load_config(config).window
    return {"config": config or "configs/default.toml", "trigger": w.trigger, "hop_s": w.hop_s, "length_s": w.length_s}


def prime_backend_cache(config_path: str | None, backend: str | None) -> str:
    """Build the live model's backend once in this process so its exported graphs / engines are in
    the cache before a timed run (a cold cache would export them during the first minute)."""
    from ..engine.backends import BackendOptions, select_backend
    from ..engine.config import load_config
    from ..engine.fusion_server import load_fusion_model

    cfg = load_config(config_path, {"fusion": {"backend": backend}} if backend else None)
    model, *_ = load_fusion_model(cfg)
    opts = BackendOptions.from_config(cfg.fusion)
    opts.onnx_prebuild = "all"
    chosen = select_backend(opts, model)
    return f"{chosen.name} ({chosen.reason})"


def pipeline_metrics(run: dict[str, Any]) -> dict[str, Any]:
    events = sorted(run["events"], key=lambda e: (e["window"]["t1"], e["seq"]))
    frames = sorted(run["frames"])
    length = float(run["length_s"])
    t0_ns = run["t0_ns"] or 0
    out: dict[str, Any] = {
        "events": len(events),
        "frames": len(frames),
        "exit_code": run["exit_code"],
        "error": run["error"],
        "restarts": run["restarts"],
        "wall_s": run["wall_s"],
        "minutes": run["minutes"],
    }
    if not events:
        return out
    t1 = np.array([e["window"]["t1"] for e in events], dtype=float)
    emit = np.array([e["t_emit_ns"] for e in events], dtype=np.int64)
    f_t = np.array([f[0] for f in frames], dtype=float)
    f_c = np.array([f[1] for f in frames], dtype=np.int64)
    # Which frames did each window really hold? The fusion stage cuts a window when its stream clock
    # (the newest face OR audio time) passes t1, so frames up to t1 that had not reached it yet are
    # in a later window. The event's latency_ms.face is for the newest frame the stage had received:
    # its capture time (emit - capture_to_emit) identifies that frame among the tapped ones.
    horizon = np.full(len(events), -np.inf)
    if f_c.size:
        order = np.argsort(f_c)
        caps, times = f_c[order], f_t[order]
        for k, e in enumerate(events):
            c2e = (e.get("latency_ms", {}).get("face") or {}).get("capture_to_emit")
            if c2e is None:
                continue
            cap = emit[k] - int(round(c2e * 1e6))
            j = int(np.clip(np.searchsorted(caps, cap), 1, caps.size - 1)) if caps.size > 1 else 0
            if caps.size > 1 and abs(caps[j - 1] - cap) < abs(caps[j] - cap):
                j -= 1
            if abs(caps[j] - cap) <= 2_000_000:  # within 2 ms: that frame (frames are ~67 ms apart)
                horizon[k] = min(t1[k], times[j])
    reach = np.maximum.accumulate(horizon)
    strict: list[float] = []
    for t_f, cap in frames:
        i = int(np.searchsorted(reach, t_f - 1e-9))  # the first event whose window held this frame
        if i >= len(events) or t1[i] - length >= t_f or horizon[i] < t_f - 1e-9:
            continue
        strict.append((emit[i] - cap) / 1e6)
    newest: list[float] = []
    for k in range(len(events)):
        j = int(np.searchsorted(f_t, horizon[k] + 1e-9)) - 1
        if j >= 0 and f_t[j] > t1[k] - length:
            newest.append((emit[k] - f_c[j]) / 1e6)
    speech: list[float] = []
    for e in events:
        if e.get("final"):
            continue
        for w in e.get("new_words", []):
            speech.append((e["t_emit_ns"] - (t0_ns + w["end_s"] * 1e9)) / 1e6)
    model_ms = [e["latency_ms"].get("model", 0.0) for e in events]
    backends = sorted({str(e.get("model", {}).get("backend", "?")) for e in events})
    out.update(
        frame_to_event_ms=summary(strict),
        newest_frame_to_event_ms=summary(newest),
        speech_end_to_text_ms=summary(speech),
        fusion_model_ms=summary(model_ms),
        backend=backends,
        model=events[-1].get("model", {}),
        _cdf={"frame_to_event": strict, "newest_frame_to_event": newest, "speech_end_to_text": speech},
    )
    return out


# --------------------------------------------------------------------------- report
def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return (f"{v:,.0f}" if v >= 1000 else f"{v:.3g}" if v < 10 else f"{v:.1f}") + unit
    return f"{v}{unit}"


def write_markdown(path: Path, res: dict[str, Any]) -> None:
    st = res["stamp"]
    lines = [f"# Latency bench — {res['device_tag']}", ""]
    if st.get("smoke"):
        lines += ["**Smoke run**: short timings on a possibly busy machine; not a result to quote.", ""]
    lines += [
        f"- date: {st['date']}; command: `{st['command']}`; git {st['git']}",
        f"- device: {st['device']}; CPU: {st['cpu']} ({st['cpu_count']} cores)"
        + (
            f"; GPU: {st.get('gpu')} (driver {st.get('driver', '?')}, CUDA {st.get('cuda_runtime', '?')})"
            if st.get("gpu")
            else ""
        ),
        f"- load average at start / end: {st['loadavg_start']} / {st.get('loadavg_end')}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in st["versions"].items()),
        f"- fusion threads: {res['threads']}",
        "",
    ]
    lines += [
        "## Fusion model, batch 1 (ms per window, p50 / p99)",
        "",
        "| shapes | model | backend | p50 | p99 | windows/s b=1 | b=32 | b=256 | max abs diff vs eager | build s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for shapes, entries in res["fusion"].items():
        for entry in entries:
            for name, rec in entry["backends"].items():
                if not rec.get("available"):
                    lines.append(
                        f"| {shapes} | {entry['model']} | {name} | unavailable: {rec.get('reason', '')} | | | | | | |"
                    )
                    continue
                b1 = rec.get("batch1_ms", {})
                w = rec.get("windows_per_s", {})
                diff = rec.get("max_abs_diff", {}).get("score")
                lines.append(
                    f"| {shapes} | {entry['model']} | {name} | {_fmt(b1.get('p50'))} | {_fmt(b1.get('p99'))} | "
                    f"{_fmt(w.get('1'))} | {_fmt(w.get('32'))} | {_fmt(w.get('256'))} | "
                    f"{'–' if diff is None else f'{diff:.1e}'} | {rec.get('build_s')} |"
                    + (f" error: {rec['error']}" if rec.get("error") else "")
                )
    occ = res.get("fusion_occlusion_cost") or {}
    if occ:
        lines += [
            "",
            "## Attribution cost (ALMT, live shapes): one window as a batch of 4 (as is + each modality masked)",
            "",
            "| backend | batch 1 p50 ms | batch 4 p50 ms | ratio |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {n} | {_fmt(c['batch1_p50_ms'])} | {_fmt(c['batch4_p50_ms'])} | {c['ratio']} |" for n, c in occ.items()
        ]
    lines += ["", "## Live pipeline (real-time pace)", ""]
    ps = res.get("pipeline_stamp")
    if ps:  # kept from an earlier full run by --skip-pipeline
        lines += [
            f"Measured by an earlier run: date {ps.get('date')}; command `{ps.get('command')}`; "
            f"git {ps.get('git')}; load average {ps.get('loadavg_start')} / {ps.get('loadavg_end')}.",
            "",
        ]
    for name, prof in res.get("pipeline_profiles", {}).items():
        lines.append(
            f"- profile `{name}` ({prof['config']}): window trigger `{prof['trigger']}`, "
            f"hop {prof['hop_s']} s, length {prof['length_s']} s"
        )
    if res.get("pipeline_profiles"):
        lines.append("")
    lines += [
        "| run | events | frame→event p50 / p99 ms | newest frame→event p50 / p99 ms | "
        "speech end→text p50 / p90 ms (words) | fusion model p50 ms | backend |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, m in res.get("pipeline", {}).items():
        if "frame_to_event_ms" not in m:
            lines.append(f"| {label} | {m.get('events', 0)} | failed: {m.get('error')} | | | | |")
            continue
        f, n, s = m["frame_to_event_ms"], m["newest_frame_to_event_ms"], m["speech_end_to_text_ms"]
        lines.append(
            f"| {label} ({m['minutes'] or 'clip'}{' min' if m['minutes'] else ''}) | {m['events']} | "
            f"{_fmt(f.get('p50'))} / {_fmt(f.get('p99'))} | {_fmt(n.get('p50'))} / {_fmt(n.get('p99'))} | "
            f"{_fmt(s.get('p50'))} / {_fmt(s.get('p90'))} ({s.get('n', 0)}) | "
            f"{_fmt(m['fusion_model_ms'].get('p50'))} | {', '.join(m['backend'])} |"
        )
    targets = TARGETS_GPU if res["device"].startswith("cuda") else TARGETS_CPU
    lines += ["", "## Against the issue's targets", "", "| figure | target | measured |", "| --- | --- | --- |"]
    for key, target in targets.items():
        lines.append(f"| {key} | {'≥' if 'per_s' in key else '≤'} {_fmt(target)} | {_lookup(res, key)} |")
    lines += [
        "",
        "Definitions: bench/README.md and the docstring of bench/latency.py. frame→event includes "
        "the wait for the window to close (up to one hop; none in the `frame` trigger, where the "
        "newest frame ends the window); newest frame→event does not.",
        "",
    ]
    path.write_text("\n".join(lines))


def _lookup(res: dict[str, Any], key: str) -> str:
    name, _, sub = key.partition("/")
    v = res.get(name)
    if isinstance(v, dict) and sub:
        if name == "fusion_windows_per_s":
            return ", ".join(f"{b}: {_fmt(r.get(sub))}" for b, r in v.items()) or "–"
        v = v.get(sub)
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) or "–"
    return _fmt(v)


def write_plot(
    path: Path, res: dict[str, Any], cdfs: dict[str, dict[str, list[float]]], fusion_cdf: dict[str, list[float]]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    for name, times in fusion_cdf.items():
        if times:
            xs = np.sort(times)
            ax.plot(xs, np.arange(1, xs.size + 1) / xs.size, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("ms per window (ALMT, live shapes, batch 1)")
    ax.set_ylabel("fraction of calls")
    ax.set_title("Fusion forward pass")
    ax.grid(alpha=0.3)
    ax.legend()
    ax = axes[1]
    for label, series in cdfs.items():
        for name, values in series.items():
            if values:
                xs = np.sort(values)
                ax.plot(xs, np.arange(1, xs.size + 1) / xs.size, label=f"{label}: {name}")
    ax.set_xscale("log")
    ax.set_xlabel("ms")
    ax.set_title("Live pipeline (real-time pace)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(
        f"sentistream latency — {res['device_tag']}{' (smoke)' if res['stamp']['smoke'] else ''}, "
        f"{res['stamp']['date']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- command
PIPELINE_KEYS = (
    "pipeline",
    "pipeline_backend_primed",
    "pipeline_profiles",
    "frame_to_event_p50_ms",
    "frame_to_event_p99_ms",
    "newest_frame_to_event_p50_ms",
    "newest_frame_to_event_p99_ms",
    "speech_end_to_text_p50_ms",
)


def _keep_previous_pipeline(path: Path, res: dict[str, Any]) -> None:
    """``--skip-pipeline`` re-measures the fusion microbench only: keep the live-pipeline figures
    already in ``path`` (with the stamp of the run that measured them) rather than dropping them."""
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if "pipeline" not in old:
        return
    for key in PIPELINE_KEYS:
        if key in old:
            res[key] = old[key]
    res["pipeline_stamp"] = old.get("pipeline_stamp", old.get("stamp"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available here")
    dev = torch.device(device)
    torch.set_num_threads(max(1, args.threads))
    smoke = bool(args.smoke)
    budget = args.budget_s if args.budget_s else (0.3 if smoke else 3.0)
    if args.backends:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    else:
        backends = list(ALL_BACKENDS)
        if smoke and dev.type == "cpu":
            backends.remove("compile")  # inductor's CPU compile takes minutes: full runs only
    unknown = set(backends) - set(ALL_BACKENDS)
    if unknown:
        raise SystemExit(f"error: unknown backend(s) {sorted(unknown)}; choose from {', '.join(ALL_BACKENDS)}")
    tag = args.tag or device_tag(device)
    res: dict[str, Any] = {
        "bench": "latency",
        "device": device,
        "device_tag": tag,
        "stamp": stamp(device, command_line("sentistream bench latency"), smoke),
        "threads": torch.get_num_threads(),
        "fusion": {},
    }
    if smoke:
        res["stamp"]["note"] = (
            "smoke run: short timing budgets, shortened long stream, compile skipped on "
            "CPU; the machine may have been busy"
        )
    # 1. fusion microbench
    models = [m.strip() for m in args.models.split(",") if m.strip()] if not args.skip_fusion else []
    res["fusion"]["live"] = [
        bench_model(m, "live", backends, dev, budget, args.threads, args.cache_dir, BATCHES if m == "almt" else (1,))
        for m in models
    ]
    res["fusion"]["mosi"] = (
        []
        if args.skip_fusion
        else [bench_model("almt", "mosi", backends, dev, budget, args.threads, args.cache_dir, (1,))]
    )
    almt_live = next((e for e in res["fusion"]["live"] if e["model"] == "almt"), None)
    res["fusion_batch1_p50_ms"] = {
        shapes: {
            name: rec.get("batch1_ms", {}).get("p50") for name, rec in entry["backends"].items() if rec.get("available")
        }
        for shapes, entry in (("live", almt_live), ("mosi", (res["fusion"]["mosi"] or [None])[0]))
        if entry
    }
    res["fusion_windows_per_s"] = {
        name: rec.get("windows_per_s", {})
        for name, rec in (almt_live or {"backends": {}})["backends"].items()
        if rec.get("available")
    }
    # The cost of an event's attributions for a model that reads audio / vision: one window as a
    # batch of 4 (as is + each modality masked) instead of 1.
    res["fusion_occlusion_cost"] = {
        name: {
            "batch1_p50_ms": rec["batch1_ms"]["p50"],
            "batch4_p50_ms": rec["batch_ms"]["4"]["p50"],
            "ratio": round(rec["batch_ms"]["4"]["p50"] / rec["batch1_ms"]["p50"], 2),
        }
        for name, rec in (almt_live or {"backends": {}})["backends"].items()
        if rec.get("available") and "4" in rec.get("batch_ms", {}) and rec.get("batch1_ms", {}).get("p50")
    }
    fusion_cdf = {name: rec.get("_times", []) for name, rec in (almt_live or {"backends": {}})["backends"].items()}
    for entries in res["fusion"].values():
        for entry in entries:
            for rec in entry["backends"].values():
                rec.pop("_times", None)
    # 2. pipeline runs
    cdfs: dict[str, dict[str, list[float]]] = {}
    if not args.skip_pipeline:
        long_minutes = args.long_minutes if args.long_minutes is not None else (0.5 if smoke else 10.0)
        runs = [("demo", 0.0)] + ([("long", long_minutes)] if long_minutes > 0 else [])
        res["pipeline"] = {}
        res["pipeline_backend_primed"] = prime_backend_cache(args.config, args.pipeline_backend)
        profiles = [p.strip() for p in args.profiles.split(",") if p.strip()] or ["default"]
        res["pipeline_profiles"] = {}
        for profile in profiles:
            config = args.config if profile == "default" else profile
            res["pipeline_profiles"][profile] = _profile_summary(config)
            for run_label, minutes in runs:
                label = run_label if profile == "default" else f"{run_label}/{profile}"
                raw = run_pipeline(label, minutes, config, args.pipeline_backend)
                m = pipeline_metrics(raw)
                m["profile"] = profile
                cdfs[label] = m.pop("_cdf", {})
                res["pipeline"][label] = m
            if args.keep_events:
                ev_path = Path(args.out_dir) / f"latency-{tag}-{label}-events.jsonl"
                ev_path.write_text("".join(json.dumps(e) + "\n" for e in raw["events"]))
        for key, field_ in (
            ("frame_to_event_p50_ms", ("frame_to_event_ms", "p50")),
            ("frame_to_event_p99_ms", ("frame_to_event_ms", "p99")),
            ("newest_frame_to_event_p50_ms", ("newest_frame_to_event_ms", "p50")),
            ("newest_frame_to_event_p99_ms", ("newest_frame_to_event_ms", "p99")),
            ("speech_end_to_text_p50_ms", ("speech_end_to_text_ms", "p50")),
        ):
            res[key] = {label: m.get(field_[0], {}).get(field_[1]) for label, m in res["pipeline"].items()}
    out_dir = Path(args.out_dir)
    stem = f"latency-{tag}{'-smoke' if smoke else ''}"
    if args.skip_pipeline:
        _keep_previous_pipeline(out_dir / f"{stem}.json", res)
    write_json(out_dir / f"{stem}.json", res)
    write_markdown(out_dir / f"{stem}.md", res)
    try:
        if "pipeline_stamp" in res and (out_dir / f"{stem}.png").is_file():
            log.info("kept %s.png (its pipeline CDFs come from the run that measured them)", stem)
        else:
            write_plot(out_dir / f"{stem}.png", res, cdfs, fusion_cdf)
    except Exception as exc:  # matplotlib trouble must not lose the figures
        log.warning("plot not written: %s", exc)
    print(f"wrote {out_dir / (stem + '.json')}, .md, .png")
    return res


def cmd_latency(args: argparse.Namespace) -> int:
    show_bench_progress()
    res = run(args)
    print(json.dumps({k: v for k, v in res.items() if k.endswith(("_ms", "_per_s"))}, indent=2))
    return 0


def register(bench_subparsers) -> None:
    p = bench_subparsers.add_parser(
        "latency", help="fusion backends and live-pipeline latency (bench/results/latency-<device>.json, .md, .png)"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: cuda when available)")
    p.add_argument(
        "--backends",
        default="",
        help="comma list of eager,compile,onnxruntime,tensorrt (default: all; --smoke on a CPU skips compile)",
    )
    p.add_argument("--models", default="almt,tfn", help="zoo models at the live shapes (default almt,tfn)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads for the fusion microbench (default 1, as the live fusion stage)",
    )
    p.add_argument(
        "--long-minutes",
        type=float,
        default=None,
        help="length of the generated real-time stream (default 10; 0.5 with --smoke; 0 = skip)",
    )
    p.add_argument("--skip-pipeline", action="store_true", help="only the fusion microbench")
    p.add_argument("--skip-fusion", action="store_true", help="only the live pipeline runs")
    p.add_argument(
        "--pipeline-backend", default=None, help="fusion.backend for the pipeline runs (default: the config's, auto)"
    )
    p.add_argument("--config", default=None, help="a TOML config for the pipeline runs")
    p.add_argument(
        "--profiles",
        default="default,low_latency",
        help="comma list of pipeline profiles to run the demo and long stream under: "
        "'default' (= --config) and bundled or file configs (default: default,low_latency)",
    )
    p.add_argument("--budget-s", type=float, default=0.0, help="seconds per timing (default 3; 0.3 with --smoke)")
    p.add_argument("--cache-dir", default=None, help="ONNX/TensorRT cache (default fusion.cache_dir)")
    p.add_argument("--out-dir", default=str(RESULTS), help="where results go (default bench/results)")
    p.add_argument("--tag", default="", help="file-name tag (default: cpu, or the GPU's name)")
    p.add_argument("--keep-events", action="store_true", help="also write the pipeline runs' events (JSONL)")
    p.add_argument(
        "--smoke", action="store_true", help="a quick check: short timings, 0.5 min stream, results named *-smoke.*"
    )
    p.set_defaults(func=cmd_latency)
