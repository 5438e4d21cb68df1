"""Train the shipped live model (``sentistream train-live``): ALMT at the live engine's feature widths.

What each branch learns from (also in ``models/MODEL_CARD.md``):

* **Text** (384-d MiniLM token embeddings from the engine's own ``perception.text.TextEncoder``,
  its top layers fine-tuned first by ``sentistream train-text`` when ``live_text_encoder.safetensors``
  exists, frozen otherwise): the CMU-MOSI transcripts and their continuous sentiment labels, standard
  CMU-SDK folds, plus Whisper's transcripts of them spoken by espeak-ng; trained on ``train``, model
  selection / early stopping on ``valid``, then (default) retrained on ``train`` + ``valid`` for the
  chosen epochs; ``test`` reported once.
* **Audio** (``perception.audio_features`` frames, 59-d) and **vision** (``perception.face`` frames,
  53-d): we have no MOSI audio or video, so these branches never see a sentiment-bearing signal.
  During training each sample is given, with probability ``1 - dropout``, a *label-independent*
  audio / vision sequence shaped like a live window: audio frames of espeak-ng speech synthesised
  from train-fold transcripts (several voices, speeds, pitches, gains and noise levels, with
  silence), face frames of the bundled demo clip (``assets/demo.mp4``), both randomly perturbed, and
  pure-noise sequences. Otherwise (most of the time) the modality is absent (all-``False`` mask).
  The model therefore learns to predict from text and to *ignore* audio / vision, whether present or
  missing; the card reports how much the scores move when they are present.
* Audio features are standardised with the mean / std of the synthetic speech pool; the statistics
  go into the checkpoint's ``meta["normalisation"]["audio"]`` and :class:`~sentistream.models.live.
  LiveModel` applies them at serve time. Vision features are already scale-free (ratios of the
  inter-ocular distance, radians, 0/1) and are not normalised.

The checkpoint (``models/live_model.safetensors``, written with ``registry.save_checkpoint``) carries
``meta`` = model, dims, hparams, train config, data provenance, the exact command, validation and
std-test metrics, the A/V-robustness figures and the normalisation.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import data as data_mod
from . import registry, training
from .augmentation import (
    AUDIO_MAX_FRAMES,
    AV_BATCH_PROB,
    EMPTY_TEXT_PROB,
    REPO,
    VISION_MAX_FRAMES,
    AVAugment,
    asr_transcripts,
    live_dims,
    load_av_pool,
    with_asr_copies,
)
from .live_evaluation import av_robustness, check_live_model, ridge_floor, time_forward
from .model_card import card_from_checkpoint, write_model_card

log = logging.getLogger("sentistream.live_training")

LIVE_MODEL = "almt"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mosi" / "mosi_transcripts.csv"
DEFAULT_OUT = Path(__file__).resolve().parent / "live_model.safetensors"
DEFAULT_CARD = Path(__file__).resolve().parent / "MODEL_CARD.md"
#: ``sentistream train-text`` output: the text encoder's fine-tuned top layers (used when present).
DEFAULT_TEXT_FINETUNE = Path(__file__).resolve().parent / "live_text_encoder.safetensors"

#: Small ALMT for a 250 ms hop on a 2-core CPU (the paper's MOSI model uses d = 128 and
#: fusion depth 2; the AHL structure — 3 layers, 3 language scales, T = 8 tokens, d_k = 16 — is kept).
LIVE_HPARAMS: dict[str, Any] = dict(
    d=64,
    tokens=8,
    heads=4,
    dim_head=16,
    ahl_dim_head=16,
    ahl_layers=3,
    embed_depth=1,
    fusion_depth=1,
    mlp_dim=128,
    dropout=0.2,
    ahl_dropout=0.0,
    max_len=320,
)
#: lr 2e-4: the lowest mean std-valid MAE (reference + ASR transcripts) of 1e-4 / 2e-4 / 5e-4 on the
#: fine-tuned text layers (bench/results/live_lr_sweep.md); 5e-4 was chosen for the frozen encoder.
LIVE_TRAIN: dict[str, Any] = dict(
    epochs=40,
    batch_size=32,
    lr=2e-4,
    weight_decay=1e-2,
    optimizer="adamw",
    scheduler="warmup_cosine",
    warmup_ratio=0.1,
    grad_clip=1.0,
    loss="l1",
    select_metric="mae",
    patience=10,
    audio_dropout=0.3,
    vision_dropout=0.3,
)


def load_fold_encoders(crossfit: dict[str, Any], cache_dir: Path | None) -> list[tuple[Any, dict[str, Any]]]:
    """The ``train-text`` fold encoders (encoder, identity) named by ``crossfit``, checked by sha256."""
    from .text_finetune import crossfit_dir

    out = []
    for f in crossfit["files"]:
        path = crossfit_dir(cache_dir, "") / f["file"]
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: an encoder the text fine-tune left (fold or selected) is not in this "
                "cache; run `sentistream train-text` again (or train-live --text-finetune none)"
            )
        enc, ident = data_mod.make_text_encoder(finetune=str(path))
        if ident["finetune_sha256"] != f["sha256"]:
            raise ValueError(f"{path}: not the encoder the text fine-tune recorded; run train-text again")
        out.append((enc, ident))
    return out


def out_of_fold_encode(
    texts: Sequence[str],
    video_ids: Sequence[str],
    crossfit: dict[str, Any],
    cache_dir: Path | None,
    progress: bool,
    encoders: list[tuple[Any, dict[str, Any]]] | None = None,
) -> tuple[data_mod.SequenceStore, np.ndarray]:
    """Each text encoded by the ``train-text`` fold encoder that did not train on its video
    (``encoders``: from :func:`load_fold_encoders`, loaded here when not given)."""
    stores = []
    for enc, ident in encoders or load_fold_encoders(crossfit, cache_dir):
        store, pooled, _ = data_mod.encode_texts(
            list(texts), enc, ident, cache_dir, None, progress, tag="live_oof_tokens"
        )
        stores.append((store, pooled))
    # a video without any non-empty transcript was never assigned; its (empty) texts encode alike
    fold = [int(crossfit["video_fold"].get(str(v), 0)) for v in video_ids]
    seqs = [stores[k][0].get(i) for i, k in enumerate(fold)]
    return (
        data_mod.SequenceStore.from_list(seqs, stores[0][0].dim),
        np.stack([stores[k][1][i] for i, k in enumerate(fold)]).astype(np.float32),
    )


REFIT_RULE = (
    "the epoch count is chosen by early stopping on std-valid; the shipped weights are then "
    "retrained, same seed and configuration, on train + valid (+ their ASR copies) for that many "
    "epochs of the same LR schedule; valid figures are the selected run's (the shipped model "
    "trained on valid), test figures the shipped model's"
)


def _text_select_encoder(
    ft_meta: dict[str, Any], cache_dir: Path | None
) -> tuple[dict[str, Any], list[tuple[Any, dict[str, Any]]] | None]:
    """With a train-text refit: the train-only encoder it selected, as a one-fold cross-fit set
    (every video -> fold 0) and its loaded encoder; otherwise ({}, None)."""
    refit = (ft_meta or {}).get("refit") or {}
    if not refit.get("enabled"):
        return {}, None
    select_set = {"folds": 1, "video_fold": {}, "files": [refit["select_encoder"]]}
    return select_set, load_fold_encoders(select_set, cache_dir)


# --------------------------------------------------------------------------- main entry
def train_live(
    data_path: Path = DEFAULT_DATA,
    out: Path = DEFAULT_OUT,
    card: Path | None = DEFAULT_CARD,
    seed: int = 0,
    hparams: dict | None = None,
    train_overrides: dict | None = None,
    cache_dir: Path | None = None,
    n_audio: int = 160,
    progress: bool = True,
    command: str = "",
    threads: int | None = None,
    asr_augment: bool = True,
    text_finetune: Path | None = None,
    refit: bool = True,
) -> dict[str, Any]:
    """Train the live ALMT on the engine's own features; ``text_finetune`` (a ``train-text`` file)
    is applied to the text encoder first, recorded in the checkpoint and copied beside it.

    ``refit``: once the epoch is chosen on std-valid, the shipped weights are a retrain on train +
    valid (+ their ASR copies) for that many epochs (``training.refit_model``), so the 229 valid
    utterances teach the model too. The valid rows are encoded by the text encoder train-text
    selected on them, which never trained on them, as the out-of-fold train rows are by theirs
    (with a train-text refit that is the train-only encoder it left in the cache; the test rows and
    the engine use the shipped, refitted layers)."""
    t_start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    encoder, ident = data_mod.make_text_encoder(finetune=str(text_finetune) if text_finetune else None)
    ft_meta: dict[str, Any] = {}
    if text_finetune:
        from ..perception.text import finetune_info

        info = finetune_info(text_finetune)
        keep = (
            "config",
            "trained",
            "best_epoch",
            "valid",
            "test",
            "command",
            "created",
            "asr_copies",
            "crossfit",
            "refit",
        )
        ft_meta = {
            "file": Path(text_finetune).name,
            "sha256": info["sha256"],
            "bytes": Path(text_finetune).stat().st_size,
            **{k: info["meta"].get(k) for k in keep},
        }
    dims = live_dims(encoder.dim)
    splits = data_mod.load_mosi_text(
        data_path, dims.audio, dims.vision, encoder=encoder, identity=ident, cache_dir=cache_dir, progress=progress
    )
    texts_train = list(splits.train.raw_text)
    pool = load_av_pool(texts_train, cache_dir, n_audio=n_audio, seed=seed)
    crossfit = (ft_meta.get("crossfit") or {}) if ft_meta else {}
    fold_encoders = load_fold_encoders(crossfit, cache_dir) if crossfit.get("folds", 0) > 1 else None
    if fold_encoders:
        # Train rows encoded by the final encoder would be ones it has fitted: use the fold
        # encoder that never saw each row's video (valid / test keep the final encoder).
        store, pooled = out_of_fold_encode(
            texts_train, splits.train.video_ids, crossfit, cache_dir, progress, fold_encoders
        )
        splits.train.text, splits.train.pooled = store, pooled
    select_set, select_encoder = _text_select_encoder(ft_meta, cache_dir)
    if select_encoder:
        # The shipped layers were retrained on valid: encode the valid rows (selection, and the
        # ALMT's refit rows) with the train-only encoder train-text selected, as if out of fold.
        splits.valid.text, splits.valid.pooled = out_of_fold_encode(
            list(splits.valid.raw_text), splits.valid.video_ids, select_set, cache_dir, progress, select_encoder
        )
    asr_info: dict[str, Any] = {"enabled": False}
    reference_splits = data_mod.DatasetSplits(
        splits.train, splits.valid, splits.test, splits.name, splits.kind, splits.info
    )
    if asr_augment:
        # The live text branch reads Whisper's transcripts, not clean ones: train on both.
        hyps, asr_info = asr_transcripts(texts_train, cache_dir, seed)
        from ..perception.wer import wer

        asr_info.update(enabled=True, rows=len(hyps), wer=round(wer(texts_train, hyps), 4))
        splits.train = with_asr_copies(
            splits.train,
            hyps,
            encoder,
            ident,
            cache_dir,
            progress,
            out_of_fold_encode(hyps, splits.train.video_ids, crossfit, cache_dir, progress, fold_encoders)
            if fold_encoders
            else None,
        )
    hp = {**LIVE_HPARAMS, **(hparams or {})}
    cfg = training.TrainConfig.from_dict({**LIVE_TRAIN, **(train_overrides or {}), "seed": seed, "progress": progress})
    augment = AVAugment(pool, dims, batch_prob=AV_BATCH_PROB, empty_text_prob=EMPTY_TEXT_PROB)  # stateless
    result = training.train_model(LIVE_MODEL, splits, cfg, seed=seed, hparams=hp, augment=augment)
    shipped, refit_info = result, {"enabled": False}
    if refit:
        valid_rows = splits.valid
        if asr_augment:  # valid's ASR copies: the ones train-text selected on (seed + 1)
            va_hyps, _ = asr_transcripts(list(splits.valid.raw_text), cache_dir, seed + 1)
            valid_rows = with_asr_copies(
                splits.valid,
                va_hyps,
                encoder,
                ident,
                cache_dir,
                progress,
                out_of_fold_encode(va_hyps, splits.valid.video_ids, select_set, cache_dir, progress, select_encoder)
                if select_encoder
                else None,
            )
        both = data_mod.DatasetSplits(splits.train, valid_rows, splits.test, splits.name, splits.kind, splits.info)
        shipped = training.refit_model(LIVE_MODEL, both, result, hparams=hp, augment=augment)
        refit_info = {
            "enabled": True,
            "epochs": shipped.epochs_run,
            "rows": len(splits.train) + len(valid_rows),
            "rule": REFIT_RULE,
            "selected_run_test": result.test,
        }
    model = shipped.model.eval()
    robust = av_robustness(model, splits, pool)
    speed = time_forward(model, dims)
    floor = ridge_floor(reference_splits)  # a pooled-embedding + ridge baseline on the reference texts
    meta = {
        "model": LIVE_MODEL,
        "dims": dims.as_dict(),
        "hparams": model.hparams,
        "normalisation": pool.normalisation(),
        "train": {k: v for k, v in cfg.as_dict().items() if k not in ("progress",)},
        "seed": seed,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "selection": f"early stopping / model selection on std valid by {cfg.select_metric}",
        # The engine feeds a model only what it learned from (models/live.py model_reads): the
        # audio / vision sequences below carry no label, so this model reads text only.
        "learned_modalities": ["text"],
        "data": {
            "text": f"CMU-MOSI transcripts ({Path(data_path).name}), std folds "
            f"train {len(reference_splits.train)} / valid {len(splits.valid)} / test {len(splits.test)}",
            "text_encoder": ident,
            "audio": pool.info["audio"],
            "vision": pool.info["vision"],
            "av_presence": f"audio present in {AV_BATCH_PROB * (1 - cfg.audio_dropout):.0%}, vision in "
            f"{AV_BATCH_PROB * (1 - cfg.vision_dropout):.0%} of training samples "
            "(label-independent)",
            "av_batch_prob": AV_BATCH_PROB,
            "empty_text": f"{EMPTY_TEXT_PROB:.0%} of training samples without text, target 0",
            "asr_copies": asr_info,
        },
        "live_inputs": {"max_audio_frames": AUDIO_MAX_FRAMES, "max_video_frames": VISION_MAX_FRAMES},
        "metrics": {"valid": result.valid, "test": shipped.test},
        "refit": refit_info,
        "av_robustness": robust,
        "latency": speed,
        "ridge_floor": floor,
        "command": command,
        "train_seconds": round(result.seconds + (shipped.seconds if refit else 0.0), 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(out)
    if ft_meta:
        meta["text_finetune"] = ft_meta
        beside = out.parent / ft_meta["file"]
        if beside.resolve() != Path(text_finetune).resolve():  # LiveModel looks beside the checkpoint
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(text_finetune, beside)
    meta["num_parameters"] = model.num_parameters()
    registry.save_checkpoint(model, out, meta)
    meta["live_check"] = check_live_model(out, encoder)  # through the engine's LiveModel
    meta["checkpoint_bytes"] = out.stat().st_size
    meta["total_seconds"] = round(time.perf_counter() - t_start, 1)
    registry.save_checkpoint(model, out, meta)  # again, with the check: the card needs only this file
    if card:
        write_model_card(Path(card), meta, out)
    return meta


def _text_finetune_arg(value: str) -> Path | None:
    if value == "none":
        return None
    if value == "default":
        return DEFAULT_TEXT_FINETUNE if DEFAULT_TEXT_FINETUNE.is_file() else None
    if not Path(value).is_file():
        raise SystemExit(f"train-live: --text-finetune {value}: no such file (make one with `sentistream train-text`)")
    return Path(value)


def main(argv: Sequence[str] | None = None) -> int:
    """``sentistream train-live``: train and write the shipped live checkpoint + model card."""
    p = argparse.ArgumentParser(prog="sentistream train-live", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="mosi_transcripts.csv (or the MOSI npz)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint path (.safetensors)")
    p.add_argument("--card", default=str(DEFAULT_CARD), help="model card path ('' = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--select-metric", default=None, help="validation criterion (mae, acc2_non0, ...)")
    p.add_argument("--hparams", default="", help="JSON dict of ALMT hyper-parameter overrides")
    p.add_argument("--train", default="", help="JSON dict of TrainConfig overrides")
    p.add_argument("--cache-dir", type=Path, default=None, help="default ~/.cache/sentistream")
    p.add_argument("--n-audio", type=int, default=160, help="espeak-ng clips in the audio pool")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--no-asr-augment",
        action="store_true",
        help="train on the reference transcripts only (no espeak-ng + Whisper copies)",
    )
    p.add_argument(
        "--text-finetune",
        default="default",
        metavar="PATH",
        help="the text encoder's fine-tuned layers (`sentistream train-text`); 'default' = "
        f"{DEFAULT_TEXT_FINETUNE.name} when it exists, 'none' = the plain encoder",
    )
    p.add_argument(
        "--no-refit", action="store_true", help="ship the run selected on valid instead of its retrain on train + valid"
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the checkpoint meta as JSON")
    p.add_argument(
        "--card-from",
        type=Path,
        default=None,
        metavar="CKPT",
        help="only rewrite --card from CKPT's metadata (no training)",
    )
    a = p.parse_args(argv)
    if a.card_from:
        card_from_checkpoint(a.card_from, Path(a.card or DEFAULT_CARD))
        print(f"wrote {a.card or DEFAULT_CARD}")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = json.loads(a.train) if a.train else {}
    for k, v in (("epochs", a.epochs), ("lr", a.lr), ("batch_size", a.batch_size), ("select_metric", a.select_metric)):
        if v is not None:
            overrides[k] = v
    command = "sentistream train-live " + " ".join(
        shlex.quote(x) for x in (sys.argv[1:] if argv is None else list(argv))
    )
    meta = train_live(
        a.data,
        a.out,
        Path(a.card) if a.card else None,
        a.seed,
        json.loads(a.hparams) if a.hparams else None,
        overrides,
        a.cache_dir,
        a.n_audio,
        not a.no_progress,
        command.strip(),
        a.threads,
        not a.no_asr_augment,
        _text_finetune_arg(a.text_finetune),
        refit=not a.no_refit,
    )
    if a.json:
        print(json.dumps(meta, indent=2, default=str))
    else:
        v, t = meta["metrics"]["valid"], meta["metrics"]["test"]
        print(f"wrote {a.out} ({meta['checkpoint_bytes'] / 1e6:.2f} MB)" + (f" and {a.card}" if a.card else ""))
        print(f"valid: acc2_non0 {100 * v['acc2_non0']:.1f} mae {v['mae']:.3f} corr {v['corr']:.3f}")
        print(f"test:  acc2_non0 {100 * t['acc2_non0']:.1f} mae {t['mae']:.3f} corr {t['corr']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
