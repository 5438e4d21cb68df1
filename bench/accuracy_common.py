"""Shared parts of `sentistream bench accuracy`: paths, suites, metrics, the reference figures and
goals of issue 4, the locked accuracy.json merge, the markdown report, run stamps and helpers."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
DATA_DIR = REPO.parent / "shared" / "data" / "mosi"
DEFAULT_NPZ = DATA_DIR / "mosi_utterances.npz"
DEFAULT_CSV = DATA_DIR / "mosi_transcripts.csv"
DEFAULT_CHECKPOINT = REPO / "models" / "live_model.safetensors"

SUITES = ("mosi_utterance", "mosi_text", "mosi_spoken")
ZOO = ("almt", "kuda", "msfn", "mldfa", "tfn", "lmf", "mult")
TEXT_HEADS = ("ridge", "mlp", "minilm_ft")
SPOKEN_ROWS = ("live_ref_text", "live_asr_text", "live_asr_text_audio", "live_asr_plain_text", "live_asr_text_gapped")
METRICS = ("acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc7", "acc5", "mae", "corr")
DEFAULT_MODELS = {"mosi_utterance": ZOO, "mosi_text": TEXT_HEADS + ZOO, "mosi_spoken": SPOKEN_ROWS}
QUICK_MODELS = {"mosi_utterance": ("lmf", "msfn"), "mosi_text": ("ridge", "mlp"), "mosi_spoken": SPOKEN_ROWS}
DEFAULT_EPOCH_CAP = 20  # zoo runs: min(this, the model's configured epochs); --epochs overrides
MLP_EPOCHS = 60
FT_EPOCHS = 5

#: Reference figures from issue 4 (fractions; MAE / Corr as is) and the goals.
REFERENCE = {
    "mosi_utterance": {
        "floors": {
            "ridge (3 concatenated vectors)": {"acc2_non0": 0.778, "mae": 0.95},
            "bc-LSTM anchor (bidirectional context)": {"acc2_non0": 0.803},
        },
        "goal": "best model >= 80.5 % acc2_non0 using only earlier utterances of the same video",
        "goal_check": {"acc2_non0": (">=", 0.805)},
    },
    "mosi_text": {
        "floors": {"frozen MiniLM mean-pooled + ridge": {"acc2_non0": 0.799, "mae": 0.96, "corr": 0.70}},
        "goal": ">= 82 % acc2_non0 and MAE <= 0.80 (fine-tune the encoder on train, select on valid)",
        "goal_check": {"acc2_non0": (">=", 0.82), "mae": ("<=", 0.80)},
    },
    "mosi_spoken": {
        "floors": {"batch tiny.en WER on a 40-utterance sample (before normalising contractions)": {"wer": 0.31}},
        "goal": "within 3 points of mosi_text on acc2_non0",
    },
}

log = logging.getLogger("sentistream.bench.accuracy")


def say(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- results file
@contextlib.contextmanager
def _locked(path: Path):
    """Exclusive lock for read-modify-write of ``path`` (lock file in ``<dir>/tmp/``, git-ignored;
    a legacy ``<dir>/accuracy.lock`` is honoured too while it exists)."""
    lock_path = path.parent / "tmp" / (path.stem + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    legacy = path.with_suffix(".lock")
    with contextlib.ExitStack() as stack:
        for lp in ([legacy] if legacy.is_file() else []) + [lock_path]:
            fh = stack.enter_context(open(lp, "a"))
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def merge_results(
    out_dir: Path,
    suite: str,
    rows: dict[str, dict[str, float]],
    suite_meta: dict[str, Any],
    model_meta: dict[str, dict[str, Any]],
    fresh: bool = False,
) -> dict[str, Any]:
    """Read-modify-write ``accuracy.json`` under a lock; rewrite ``accuracy.md``. Returns the data."""
    path = out_dir / "accuracy.json"
    with _locked(path):
        data: dict[str, Any] = {}
        if path.is_file() and not fresh:
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError:
                data = {}
        data.setdefault(suite, {})
        meta = data.setdefault("meta", {})
        sm = meta.setdefault(suite, {})
        models_meta = sm.get("models", {})
        if suite_meta.get("status", "").startswith("skipped"):
            data[suite] = {}
            models_meta = {}
        sm.update({k: v for k, v in suite_meta.items() if k != "models"})
        for name, row in rows.items():
            data[suite][name] = row
        models_meta.update(model_meta)
        sm["models"] = models_meta
        meta["units"] = (
            "accuracies and F1 are fractions in [0, 1]; mae and corr as MMSA reports them; "
            "<metric>_std is the population std over seeds (0 where one deterministic run)"
        )
        meta["metrics"] = list(METRICS)
        ordered = {s: data[s] for s in SUITES if s in data}
        ordered.update({k: v for k, v in data.items() if k not in ordered and k != "meta"})
        ordered["meta"] = meta
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(ordered, indent=2, default=_json_default) + "\n")
        os.replace(tmp, path)
        (out_dir / "accuracy.md").write_text(render_markdown(ordered))
    return ordered


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _fmt(metric: str, v: float | None, std: float | None = None) -> str:
    if v is None or not isinstance(v, (int, float)) or not np.isfinite(v):
        return "–"
    pct = metric not in ("mae", "corr")
    s = f"{100 * v:.1f}" if pct else f"{v:.3f}"
    if std:
        s += f" ± {100 * std:.1f}" if pct else f" ± {std:.3f}"
    return s


def render_markdown(data: dict[str, Any]) -> str:
    meta = data.get("meta", {})
    lines = [
        "# Accuracy benchmark",
        "",
        (
            "Test-split figures after model selection on the validation split only (MMSA metrics; "
            "Acc / F1 in %, mean ± population std over seeds). Written by `sentistream bench accuracy`; "
            "the exact command of every row, the validation figures and the per-seed runs are in "
            "`accuracy.json` (`meta`)."
        ),
        "",
    ]
    for suite in SUITES:
        if suite not in data and suite not in meta:
            continue
        sm = meta.get(suite, {})
        lines += [f"## {suite}", ""]
        if sm.get("data"):
            lines += [f"Data: {sm['data']}", ""]
        if sm.get("status", "").startswith("skipped"):
            lines += [f"**{sm['status']}**", ""]
            continue
        rows = data.get(suite, {})
        extra = ["wer"] if any("wer" in r for r in rows.values()) else []
        head = ["model", *METRICS, *extra]
        if suite == "mosi_utterance":
            head.insert(1, "K")
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, r in rows.items():
            mm = sm.get("models", {}).get(name, {})
            cells = [f"**{name}**" if name == _best(rows) else name]
            if suite == "mosi_utterance":
                cells.append(str(mm.get("context", "")))
            cells += [_fmt(k, r.get(k), r.get(k + "_std")) for k in METRICS]
            cells += [_fmt("wer", r.get("wer")) for _ in extra]
            lines.append("| " + " | ".join(cells) + " |")
        ref = REFERENCE.get(suite, {})
        for fname, fv in ref.get("floors", {}).items():
            cells = [f"*floor: {fname}*"] + ([""] if suite == "mosi_utterance" else [])
            cells += [_fmt(k, fv.get(k)) if k in fv else "" for k in METRICS]
            cells += [_fmt("wer", fv.get("wer")) if "wer" in fv else "" for _ in extra]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if ref.get("goal"):
            lines.append(f"Goal: {ref['goal']}. {sm.get('goal_status', '')}".rstrip())
            lines.append("")
        if sm.get("notes"):
            for n in sm["notes"]:
                lines.append(f"- {n}")
            lines.append("")
        cmds = sorted({m.get("command", "") for m in sm.get("models", {}).values() if m.get("command")})
        if cmds:
            lines.append("Command(s): " + "; ".join(f"`{c}`" for c in cmds))
        if sm.get("machine"):
            mach = sm["machine"]
            lines.append(
                f"Machine: {mach.get('cpu', '?')} ({mach.get('cpu_count', '?')} logical CPUs, "
                f"shared), torch {mach.get('versions', {}).get('torch', '?')}, git "
                f"{mach.get('git', '?')}; date {sm.get('date', '?')}."
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _best(rows: dict[str, dict[str, float]]) -> str | None:
    vals = {k: r.get("acc2_non0") for k, r in rows.items() if isinstance(r.get("acc2_non0"), (int, float))}
    return max(vals, key=vals.get) if vals else None


def goal_status(suite: str, rows: dict[str, dict[str, float]]) -> str:
    check = REFERENCE.get(suite, {}).get("goal_check")
    if not check or not rows:
        return ""
    best = _best(rows)
    if best is None:
        return ""
    r = rows[best]
    ok = all((r.get(k, np.nan) >= v) if op == ">=" else (r.get(k, np.nan) <= v) for k, (op, v) in check.items())
    figs = ", ".join(f"{k} {_fmt(k, r.get(k))}" for k in check)
    return f"Best by acc2_non0: {best} ({figs}): goal {'met' if ok else 'NOT met'}."


# --------------------------------------------------------------------------- shared helpers
def aggregate(per_seed: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    keys = [k for k in per_seed[0] if k in METRICS or k in ("loss", "wer")]
    for k in keys:
        vals = np.array([m[k] for m in per_seed], dtype=np.float64)
        out[k] = float(np.mean(vals))
        out[k + "_std"] = float(np.std(vals))
    return out


def test_row(agg: dict[str, float]) -> dict[str, float]:
    return {k: agg[k] for k in agg if k.split("_std")[0] in METRICS or k.startswith("wer")}


def run_summary(r) -> dict[str, Any]:
    return {
        "seed": r.seed,
        "best_epoch": r.best_epoch,
        "epochs_run": r.epochs_run,
        "seconds": round(r.seconds, 1),
        "valid": rounded(r.valid),
        "test": rounded(r.test),
    }


def rounded(d: dict[str, float], n: int = 5) -> dict[str, float]:
    return {k: (round(float(v), n) if isinstance(v, (int, float)) and np.isfinite(v) else v) for k, v in d.items()}


def run_stamp(command: str, quick: bool) -> dict[str, Any]:
    from .common import stamp

    s = stamp("cpu", command, quick)
    return {k: s[k] for k in ("cpu", "cpu_count", "platform", "versions", "git", "loadavg_start") if k in s} | (
        {"gpu": s["gpu"]} if "gpu" in s else {}
    )


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _subsample_split(split, n: int | None, seed: int = 0):
    if not n or len(split) <= n:
        return split
    idx = np.sort(np.random.default_rng(seed).choice(len(split), size=n, replace=False))
    return split.subset(idx)


def subsample_splits(ds, n: int | None):
    if not n:
        return ds
    ds.train = _subsample_split(ds.train, n)
    ds.valid = _subsample_split(ds.valid, max(n // 3, 20))
    ds.test = _subsample_split(ds.test, max(n // 2, 20))
    return ds


def zoo_train_config(name: str, epoch_cap: int, threads: int, progress: bool):
    from ..models import training

    base = training.TrainConfig.for_model(name)
    over: dict[str, Any] = {"epochs": max(1, min(base.epochs, epoch_cap)), "num_threads": threads, "progress": progress}
    if base.stage1_epochs:
        over["stage1_epochs"] = max(1, min(base.stage1_epochs, epoch_cap // 4))
    return training.TrainConfig.for_model(name, **over)
