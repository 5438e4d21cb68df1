"""Fine-tuning the engine's text encoder (all-MiniLM-L6-v2) on sentiment labels.

One loop serves two callers: ``sentistream train-text`` (the top layers of the encoder, trained on
the MOSI std-train transcripts plus Whisper's transcripts of them spoken by espeak-ng, written as a
small safetensors file that the shipped live model is trained on and loads) and the accuracy
bench's ``minilm_ft`` row (the whole encoder, reference transcripts only, nothing saved).

Head: masked mean pooling (as ``TextEncoder``) -> dropout 0.1 -> linear, L1 loss; AdamW (encoder
``lr``, head ``head_lr``, weight decay 0.01 except biases / LayerNorm), linear warm-up over 10 % of
the steps then cosine; gradient norm clipped to 1. After every epoch the mean validation MAE over
the validation sets picks the epoch whose weights are kept; the test sets are scored once, after.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("sentistream.text_finetune")

DEFAULT_OUT = Path(__file__).resolve().parent / "live_text_encoder.safetensors"
DEFAULT_DATA = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mosi" / "mosi_transcripts.csv"
)  # as train-live


@dataclass
class TextFinetuneConfig:
    train_layers: int = 3  # the top N transformer layers train; 0 = the whole encoder (embeddings too)
    epochs: int = 4
    lr: float = 5e-5
    head_lr: float = 1e-3
    batch_size: int = 32
    max_tokens: int = 128
    seed: int = 0
    threads: int = 0  # torch threads; 0 = torch's setting


@dataclass
class LabelledTexts:
    texts: list[str]
    labels: np.ndarray  # float32, MOSI scale [-3, 3]
    groups: list[str] | None = None  # video ids: cross-fitting folds never split a video

    def subset(self, keep: np.ndarray) -> LabelledTexts:
        idx = np.flatnonzero(keep)
        return LabelledTexts(
            [self.texts[i] for i in idx],
            self.labels[idx],
            None if self.groups is None else [self.groups[i] for i in idx],
        )


@dataclass
class TextFinetuneResult:
    encoder: Any  # the transformers model, best epoch's weights loaded
    tokenizer: Any
    head: Any
    trained_prefixes: list[str]
    best_epoch: int
    valid: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _trainable_prefixes(enc, train_layers: int) -> list[str]:
    n = int(enc.config.num_hidden_layers)
    if train_layers <= 0 or train_layers >= n + 1:
        return [""]  # everything
    return [f"encoder.layer.{i}." for i in range(n - train_layers, n)]


def finetune_text_encoder(
    train: Sequence[LabelledTexts],
    valid: dict[str, LabelledTexts],
    test: dict[str, LabelledTexts] | None = None,
    config: TextFinetuneConfig | None = None,
    model_dir: str = "",
    progress: bool = False,
    stop_after: int = 0,
) -> TextFinetuneResult:
    """Fine-tune on the concatenation of ``train``; select the epoch on ``valid`` (mean MAE over
    its sets); score ``test`` once at the end. ``valid`` empty (a refit): no selection, the weights
    after ``stop_after`` epochs (default all) of the configured ``epochs``' LR schedule are kept."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from ..perception.text import default_model_dir
    from .metrics import regression_metrics
    from .training import seed_everything, warmup_cosine

    cfg = config or TextFinetuneConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    mdir = model_dir or default_model_dir()
    tok = AutoTokenizer.from_pretrained(mdir, local_files_only=True)
    tok.truncation_side = "left"  # as the engine's TextEncoder: the newest words are kept
    enc = AutoModel.from_pretrained(mdir, local_files_only=True)
    prefixes = _trainable_prefixes(enc, cfg.train_layers)
    for name, p in enc.named_parameters():
        p.requires_grad = any(name.startswith(x) for x in prefixes)
    head = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(enc.config.hidden_size, 1))
    texts = [str(t) for part in train for t in part.texts]
    labels = torch.from_numpy(np.concatenate([np.asarray(p.labels, np.float32) for p in train]))
    if not texts:
        raise ValueError("no training texts")

    def forward(batch_texts: list[str]) -> torch.Tensor:
        b = tok(batch_texts, truncation=True, max_length=cfg.max_tokens, padding=True, return_tensors="pt")
        h = enc(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
        return head((h * m).sum(1) / m.sum(1).clamp(min=1)).squeeze(-1)

    def predict(items: list[str]) -> np.ndarray:
        enc.eval()
        head.eval()
        with torch.inference_mode():
            out = [forward([str(t) for t in items[i : i + 64]]).numpy() for i in range(0, len(items), 64)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def score(sets: dict[str, LabelledTexts]) -> dict[str, dict[str, float]]:
        return {
            k: regression_metrics("mosi", predict(v.texts), np.asarray(v.labels, np.float32)) for k, v in sets.items()
        }

    trainable = [(n, p) for n, p in enc.named_parameters() if p.requires_grad]
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in trainable if not any(x in n for x in no_decay)], "lr": cfg.lr, "weight_decay": 0.01},
        {"params": [p for n, p in trainable if any(x in n for x in no_decay)], "lr": cfg.lr, "weight_decay": 0.0},
        {"params": list(head.parameters()), "lr": cfg.head_lr, "weight_decay": 0.01},
    ]
    opt = torch.optim.AdamW(groups)
    n = len(texts)
    steps = cfg.epochs * -(-n // cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, max(1, steps // 10)))
    params = [p for _, p in trainable] + list(head.parameters())
    rng = np.random.default_rng(cfg.seed)
    best: tuple[float, dict, dict, int] | None = None
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    last = min(cfg.epochs, stop_after) if stop_after > 0 else cfg.epochs
    for ep in range(1, last + 1):
        enc.train()
        head.train()
        order = rng.permutation(n)
        total = 0.0
        for b in range(0, n, cfg.batch_size):
            idx = order[b : b + cfg.batch_size]
            loss = torch.nn.functional.l1_loss(forward([texts[i] for i in idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        vm = score(valid)
        sel = float(np.mean([m["mae"] for m in vm.values()])) if vm else float("nan")
        history.append(
            {
                "epoch": ep,
                "train_loss": round(total / n, 4),
                **({"select_mae": round(sel, 4)} if vm else {}),
                **{f"valid_{k}_mae": round(m["mae"], 4) for k, m in vm.items()},
                **{f"valid_{k}_acc2_non0": round(m["acc2_non0"], 4) for k, m in vm.items()},
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        if progress:
            log.info("text fine-tune epoch %d: %s", ep, history[-1])
        if best is None or not vm or sel < best[0]:  # no valid sets: the latest epoch
            best = (
                sel,
                {k: v.detach().clone() for k, v in enc.state_dict().items()},
                {k: v.detach().clone() for k, v in head.state_dict().items()},
                ep,
            )
    assert best is not None
    enc.load_state_dict(best[1])
    head.load_state_dict(best[2])
    return TextFinetuneResult(
        enc, tok, head, prefixes, best[3], score(valid), score(test or {}), history, round(time.perf_counter() - t0, 1)
    )


def std_fold(csv: Path, split: str) -> LabelledTexts:
    """The non-empty transcripts of one std (CMU-SDK) fold of mosi_transcripts.csv."""
    from . import data as data_mod

    cols = data_mod.read_mosi_transcripts(Path(csv))
    rows = [r for r in np.where(cols["std_split"] == split)[0] if str(cols["text"][r]).strip()]
    return LabelledTexts(
        [str(cols["text"][r]) for r in rows],
        np.asarray(cols["label"][rows], np.float32),
        [str(cols["video_id"][r]) for r in rows],
    )


def crossfit_folds(groups: Sequence[str], folds: int, seed: int = 0) -> dict[str, int]:
    """Each video -> a fold in [0, folds), balanced by video count, deterministic in ``seed``."""
    videos = sorted(set(map(str, groups)))
    order = np.random.default_rng(seed).permutation(len(videos))
    return {videos[j]: int(i % folds) for i, j in enumerate(order)}


def crossfit_dir(cache_dir: Path | None, key: str) -> Path:
    """Where the cross-fit fold encoders live. They are outputs train-live needs, not a cache that
    may be skipped, so ``"none"`` (no caching, as :func:`~sentistream.models.data.encode_texts`
    reads it) means the default cache folder here rather than a folder named ``none``."""
    from . import data as data_mod

    use_default = not cache_dir or str(cache_dir).strip().lower() == "none"
    return (data_mod.default_cache_dir() if use_default else Path(cache_dir).expanduser()) / "text_finetune" / key


def train_text(
    data: Path = DEFAULT_DATA,
    out: Path = DEFAULT_OUT,
    config: TextFinetuneConfig | None = None,
    asr_augment: bool = True,
    cache_dir: Path | None = None,
    command: str = "",
    progress: bool = True,
    limit: int = 0,
    crossfit: int = 2,
    refit: bool = True,
) -> dict[str, Any]:
    """``sentistream train-text``: fine-tune the top layers on std-train (+ its ASR copies), select
    on std-valid (reference + ASR transcripts), write the trained layers to ``out``.

    ``refit``: the layers written to ``out`` are then a retrain, same seed and recipe, on train +
    valid (+ both ASR copies) for the selected number of epochs of the same LR schedule; the
    selected encoder (train only) goes to the cache beside the fold encoders, since train-live
    encodes the valid rows it selects on with it (an encoder that never saw them).

    ``crossfit`` > 1 also fine-tunes one encoder per fold of the train videos on the other folds
    (same recipe), written to the cache: ``train-live`` encodes each train utterance with the
    encoder that never saw it, so the fusion model learns from embeddings like those it will get
    at serve time. (Encoded by the final encoder, the train rows are ones it has already fitted:
    the fusion model then over-trusts them and stops after a few epochs.)"""
    import hashlib

    from ..perception.text import save_finetune
    from ..provenance import stamp
    from .augmentation import asr_transcripts

    cfg = config or TextFinetuneConfig()
    tr, va, te = (std_fold(data, s) for s in ("train", "valid", "test"))
    if limit:  # a smoke run
        tr, va, te = (f.subset(np.arange(len(f.texts)) < limit) for f in (tr, va, te))
    train_sets, valid_sets = [tr], {"ref": va}
    asr: dict[str, Any] = {"enabled": False}
    if asr_augment:
        # What the engine will read is Whisper's transcript: train and select on both.
        tr_h, info = asr_transcripts(tr.texts, cache_dir, seed=0)
        va_h, _ = asr_transcripts(va.texts, cache_dir, seed=1)
        train_sets.append(LabelledTexts(tr_h, tr.labels))
        valid_sets["asr"] = LabelledTexts(va_h, va.labels)
        asr = {**info, "enabled": True, "train_seed": 0, "valid_seed": 1}
    res = finetune_text_encoder(train_sets, valid_sets, {"ref": te}, cfg, progress=progress)
    key = hashlib.sha1(
        json.dumps([vars(cfg), asr_augment, crossfit, tr.texts, [str(t) for t in train_sets[-1].texts]]).encode()
    ).hexdigest()[:12]
    fdir = crossfit_dir(cache_dir, key)
    folds_meta: dict[str, Any] = {"folds": 0}
    if crossfit > 1:
        fold_of = crossfit_folds(tr.groups or [], crossfit, cfg.seed)
        files = []
        for k in range(crossfit):
            keep = np.array([fold_of[g] != k for g in tr.groups or []])
            parts = [part.subset(keep) for part in train_sets]  # a row's ASR copy shares its fold
            if progress:
                log.info("cross-fit fold %d / %d: %d train utterances", k + 1, crossfit, int(keep.sum()))
            r = finetune_text_encoder(parts, valid_sets, None, cfg, progress=progress)
            path = fdir / f"fold{k}.safetensors"
            sha_k = save_finetune(r.encoder, r.trained_prefixes, path, {"fold": k, "folds": crossfit, "key": key})
            files.append(
                {
                    "file": f"{key}/{path.name}",
                    "sha256": sha_k,
                    "best_epoch": r.best_epoch,
                    "train_rows": int(keep.sum()),
                    "valid": r.valid,
                }
            )
        folds_meta = {
            "folds": crossfit,
            "key": key,
            "video_fold": fold_of,
            "files": files,
            "where": "<cache>/text_finetune/ (not shipped: only train-live reads them)",
        }
    shipped, refit_meta = res, {"enabled": False}
    if refit:
        select_path = fdir / "select.safetensors"
        select_sha = save_finetune(res.encoder, res.trained_prefixes, select_path, {"selected": True, "key": key})
        both = train_sets + list(valid_sets.values())
        both_rows = sum(len(x.texts) for x in both)
        if progress:
            log.info("refit on train + valid: %d texts, %d epochs", both_rows, res.best_epoch)
        shipped = finetune_text_encoder(both, {}, {"ref": te}, cfg, progress=progress, stop_after=res.best_epoch)
        refit_meta = {
            "enabled": True,
            "epochs": res.best_epoch,
            "rows": both_rows,
            "rule": (
                "epoch count chosen on std-valid by the train-only run; the shipped layers are "
                "that recipe retrained on train + valid (+ ASR copies) for that many epochs "
                "of the same LR schedule; valid figures are the selected run's"
            ),
            "selected_run_test": res.test,
            "seconds": shipped.seconds,
            "select_encoder": {"file": f"{key}/{select_path.name}", "sha256": select_sha},
        }
    meta = {
        "config": vars(cfg),
        "trained": res.trained_prefixes,
        "best_epoch": res.best_epoch,
        "history": res.history,
        "valid": res.valid,
        "test": shipped.test,
        "asr_copies": asr,
        "crossfit": folds_meta,
        "refit": refit_meta,
        "data": f"{Path(data).name}: std folds train {len(tr.texts)} / valid {len(va.texts)} / test {len(te.texts)}",
        "selection": "epoch with the lowest mean std-valid MAE over the sets " + ", ".join(valid_sets),
        "head": "mean pool -> dropout 0.1 -> linear (training only; not saved: the live model reads the tokens)",
        "command": command,
        "machine": {
            k: v for k, v in stamp("cpu", command, False).items() if k in ("cpu", "cpu_count", "platform", "git")
        },
        "seconds": round(res.seconds + (shipped.seconds if refit else 0.0), 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    sha = save_finetune(shipped.encoder, shipped.trained_prefixes, out, meta)
    meta.update(file=str(out), sha256=sha, bytes=Path(out).stat().st_size)
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="sentistream train-text", description="fine-tune the text encoder's top layers for the live model"
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="mosi_transcripts.csv")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    d = TextFinetuneConfig()
    p.add_argument("--layers", type=int, default=d.train_layers, help="top layers to train (0 = all)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="only the first N texts of each fold (a smoke run)")
    p.add_argument("--no-asr-augment", action="store_true", help="reference transcripts only")
    p.add_argument(
        "--crossfit", type=int, default=2, help="fold encoders for train-live's out-of-fold train embeddings (0 = none)"
    )
    p.add_argument(
        "--no-refit",
        action="store_true",
        help="ship the train-only encoder chosen on valid (default: it retrained on train + valid)",
    )
    p.add_argument("--cache-dir", type=Path, default=None)
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not Path(a.data).is_file():
        raise SystemExit(f"train-text: no transcripts at {a.data} (give --data mosi_transcripts.csv)")
    cfg = TextFinetuneConfig(train_layers=a.layers, epochs=a.epochs, lr=a.lr, seed=a.seed, threads=a.threads)
    command = "sentistream train-text " + " ".join(shlex.quote(x) for x in (sys.argv[2:] if argv is None else argv))
    data = Path(a.data)
    meta = train_text(
        data,
        a.out,
        cfg,
        not a.no_asr_augment,
        a.cache_dir,
        command.strip(),
        limit=a.limit,
        crossfit=a.crossfit,
        refit=not a.no_refit,
    )
    v = meta["valid"]
    print(
        f"wrote {a.out} ({meta['bytes'] / 1e6:.1f} MB, sha256 {meta['sha256'][:12]}), best epoch {meta['best_epoch']}"
    )
    for k, m in v.items():
        print(f"valid {k}: acc2_non0 {100 * m['acc2_non0']:.1f} mae {m['mae']:.3f}")
    print(f"test ref: acc2_non0 {100 * meta['test']['ref']['acc2_non0']:.1f} mae {meta['test']['ref']['mae']:.3f}")
    if meta["refit"]["enabled"]:
        sel = meta["refit"]["selected_run_test"]["ref"]
        print(
            f"(shipped: retrained on train + valid; the selected train-only run: test ref acc2_non0 "
            f"{100 * sel['acc2_non0']:.1f} mae {sel['mae']:.3f})"
        )
    return 0
