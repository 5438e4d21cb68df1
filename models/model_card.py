"""The live model's card (models/MODEL_CARD.md), written from a checkpoint's metadata: what each
branch learned from and its measured figures. ``train-live`` writes it after training;
:func:`card_from_checkpoint` rewrites it without training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import registry


def card_from_checkpoint(ckpt: Path, card: Path) -> None:
    """Rewrite the model card from a checkpoint's metadata (no training)."""
    write_model_card(Path(card), registry.read_checkpoint_metadata(ckpt)["meta"], Path(ckpt))


def _fmt(
    m: dict[str, float], keys=("acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc7", "acc5", "mae", "corr")
) -> str:
    cells = []
    for k in keys:
        v = m[k]
        cells.append(f"{v:.3f}" if k in ("mae", "corr") else f"{100 * v:.1f}")
    return " | ".join(cells)


def _asr_copies_text(meta: dict[str, Any]) -> str:
    a = meta.get("data", {}).get("asr_copies") or {}
    if not a.get("enabled"):
        return ""
    return (
        f" Plus an ASR copy of every train utterance (same label): espeak-ng speech of the transcript "
        f"(voices {', '.join(a['voices'])}; {a['rate_wpm'][0]}-{a['rate_wpm'][1]} wpm) as the engine's "
        f"Whisper ({a['asr']}, encoder pad {a['encoder_pad_s']} s) transcribed it, WER "
        f"{100 * a['wer']:.1f} %, so that the text branch has seen recogniser errors."
    )


def _text_encoder_text(meta: dict[str, Any]) -> str:
    ft = meta.get("text_finetune")
    if not ft:
        return "MiniLM (all-MiniLM-L6-v2, frozen)"
    layers = ", ".join(p.split(".")[2] for p in ft.get("trained") or [] if p.count(".") >= 2) or "all"
    cfg = ft.get("config") or {}
    asr = (ft.get("asr_copies") or {}).get("enabled")
    return (
        f"MiniLM (all-MiniLM-L6-v2) with layers {layers} fine-tuned on the same train transcripts"
        f"{' and their ASR copies' if asr else ''} (`{ft['file']}`, {ft['bytes'] / 1e6:.1f} MB float16, sha256 {ft['sha256'][:12]}; "
        f"`sentistream train-text`: mean pool + linear head, L1 loss, {cfg.get('epochs')} epochs, lr "
        f"{cfg.get('lr')}, epoch {ft.get('best_epoch')} chosen by std-valid MAE over "
        f"{'reference + ASR transcripts' if asr else 'reference transcripts'})"
        + _crossfit_text(ft)
        + _text_refit_text(ft)
    )


def _text_refit_text(ft: dict[str, Any]) -> str:
    r = ft.get("refit") or {}
    if not r.get("enabled"):
        return ""
    sel = r["selected_run_test"]["ref"]
    return (
        f". The shipped layers are that recipe retrained on train + valid ({r['rows']} texts) for the "
        f"{r['epochs']} epochs chosen on valid; the train-only encoder that was selected (its own head: "
        f"std-test {100 * sel['acc2_non0']:.1f} % Acc2 non0 / MAE {sel['mae']:.3f}) encodes the ALMT's "
        f"valid rows, which the shipped layers have seen; input:"
    )


def _crossfit_text(ft: dict[str, Any]) -> str:
    cf = ft.get("crossfit") or {}
    if cf.get("folds", 0) < 2:
        return ""
    return (
        f"; the ALMT's train rows were encoded out of fold: {cf['folds']} more encoders, each fine-tuned the "
        f"same way on the train videos of the other folds, so no train row was encoded by layers that had "
        f"fitted its label (valid / test / serving: the shipped layers)"
    )


def _encoder_limit_text(meta: dict[str, Any]) -> str:
    if not meta.get("text_finetune"):
        return "The encoder is frozen (no fine-tuning); see the ridge floor above for the frozen-encoder baseline."
    ft = meta["text_finetune"]
    asr = " and their ASR copies" if (ft.get("asr_copies") or {}).get("enabled") else ""
    return (
        f"Only the encoder's top layers were fine-tuned (on {_train_rows(meta)} MOSI train utterances{asr}); "
        "the fine-tuned MiniLM of the accuracy bench (`minilm_ft`, all layers, reference transcripts) "
        "is not what the engine runs."
    )


def _train_rows(meta: dict[str, Any]) -> str:
    """The std-train row count, from the run's data description ("... train 1284 / ...")."""
    import re

    m = re.search(r"train (\d+)", str(meta.get("data", {}).get("text", "")))
    return m.group(1) if m else "the"


def _ft_rows_text(meta: dict[str, Any]) -> str:
    if not meta.get("text_finetune"):
        return ""
    refit = (meta["text_finetune"].get("refit") or {}).get("enabled")
    test = (
        "are the retrained layers' (train + valid), computed once afterwards"
        if refit
        else "were computed once afterwards"
    )
    return (
        "The \"text fine-tune's own head\" rows are the fine-tune's mean-pool + linear head "
        "(used only to train the layers; the ALMT reads their tokens); its valid figures chose the "
        f"epoch, its test figures {test}. "
    )


def _refit_text(meta: dict[str, Any]) -> str:
    r = meta.get("refit") or {}
    if not r.get("enabled"):
        return ""
    asr = ", with their ASR copies" if (meta.get("data", {}).get("asr_copies") or {}).get("enabled") else ""
    return (
        f" The shipped weights are that run retrained, same seed and configuration, on train + valid "
        f"({r['rows']} rows{asr}) for its {r['epochs']} epochs: the valid row is the "
        f"selected run's (the shipped model has trained on valid), the test row the shipped model's. "
        f"The selected run itself scored {100 * r['selected_run_test']['acc2_non0']:.1f} % Acc2 non0 / MAE "
        f"{r['selected_run_test']['mae']:.3f} on test (`--no-refit` ships it)."
    )


def write_model_card(path: Path, meta: dict[str, Any], ckpt: Path) -> None:
    m, r, f, lat = meta["metrics"], meta["av_robustness"], meta["ridge_floor"], meta["latency"]
    enc_name = "MiniLM (fine-tuned layers)" if meta.get("text_finetune") else "MiniLM"
    hp = meta["hparams"]
    checks = "; ".join(
        f'"{k}" -> {v["score"]:+.2f} ({v["label"]})'
        for k, v in meta.get("live_check", {}).items()
        if isinstance(v, dict)
    )
    refit = meta.get("refit") or {}
    rows = [
        f"| ALMT ({'the run selected on valid' if refit.get('enabled') else 'this checkpoint'}), valid | {_fmt(m['valid'])} |",
        f"| ALMT (this checkpoint), **test** | {_fmt(m['test'])} |",
        f"| {enc_name} mean-pooled + ridge (alpha {f['alpha']} chosen on valid), valid | {_fmt(f['valid'])} |",
        f"| {enc_name} mean-pooled + ridge, test | {_fmt(f['test'])} |",
    ]
    ft = meta.get("text_finetune") or {}
    for split in ("valid", "test"):
        for k, v in (ft.get(split) or {}).items():
            rows.append(
                f"| text fine-tune's own head ({'ASR' if k == 'asr' else 'reference'} transcripts), "
                f"{split} | {_fmt(v)} |"
            )
    rob = []
    for split in ("valid", "test"):
        for mode, label in (
            ("absent", "audio/vision absent"),
            ("audio_only", "speech audio present"),
            ("vision_only", "face frames present"),
            ("pool", "speech audio + face frames present"),
            ("pool300", "speech audio as 300 un-binned frames + face frames"),
            ("noise", "Gaussian-noise audio + vision present"),
        ):
            x = r[split][mode]
            shift = (
                "—"
                if mode == "absent"
                else f"{x['mean_abs_shift']:.3f} / {x['max_abs_shift']:.3f} / {100 * x['sign_flips']:.1f} %"
            )
            rob.append(f"| {split} | {label} | {100 * x['acc2_non0']:.1f} | {x['mae']:.3f} | {shift} |")
    text = f"""# Shipped live model: `{ckpt.name}`

Registry model **`{meta["model"]}`** (ALMT, Zhang et al., EMNLP 2023), loaded by the live engine
(`models/live.py`, `registry.load_checkpoint`) as the default fusion model.

- Input widths (`dims`): text {meta["dims"]["text"]} (MiniLM token embeddings), audio
  {meta["dims"]["audio"]} (`perception.audio_features`), vision {meta["dims"]["vision"]} (`perception.face`).
- Size: {meta["num_parameters"]:,} parameters, {meta["checkpoint_bytes"] / 1e6:.2f} MB safetensors.
- Hyper-parameters: `{json.dumps(hp)}`. Smaller than the paper's MOSI model (d 128, fusion depth 2)
  to fit a 250 ms hop on a 2-core CPU; the AHL structure (3 layers over 3 language scales, 8 learned
  tokens per modality, d_k 16) is kept.

## What each branch learned from

| Branch | Input at serve time | Training signal |
|---|---|---|
| Text | {_text_encoder_text(meta)} token embeddings of the window's words, from the engine's own `TextEncoder` (max 128 tokens) | **CMU-MOSI transcripts with their continuous sentiment labels** (std CMU-SDK folds: train {_train_rows(meta)} utterances; early stopping / selection on valid{"; then retrained on train + valid for the chosen epochs" if refit.get("enabled") else ""}; test reported once). {meta["data"]["empty_text"]}: a window without words scores about 0 (neutral).{_asr_copies_text(meta)} |
| Audio | engine audio feature frames (log-mel, MFCC, energy, ZCR, F0, voicing, centroid, flux), standardised with the stats stored in the checkpoint | **No sentiment signal.** Label-independent sequences: {meta["data"]["audio"]}; plus Gaussian noise. Present in {100 * meta["data"]["av_batch_prob"] * (1 - meta["train"]["audio_dropout"]):.0f} % of training samples, absent (all-False mask) otherwise. |
| Vision | engine face-geometry frames (AU-like distances, gaze, head pose, their deltas) | **No sentiment signal.** Label-independent sequences: {meta["data"]["vision"]}, randomly perturbed; plus Gaussian noise. Present in {100 * meta["data"]["av_batch_prob"] * (1 - meta["train"]["vision_dropout"]):.0f} % of training samples, absent otherwise. |

We have no MOSI audio or video, so *this model's* audio and vision inputs were trained only to be
ignored: its score is a text model's score, and a missing, present or noisy audio / vision input
should not change it much (measured below). The engine therefore feeds it the words only
(`fusion.model_inputs = "auto"`: audio / vision masked at serve time), so its score is exactly a text
score and an event's audio / vision attributions come from the other two branches alone. The
engine's face and voice count through two other
branches trained on real labeled data, the face's expression (FER2013) and the voice's valence
(RAVDESS), joined with this text score by the fusion rule of docs/protocol.md: see
`models/affect/MODEL_CARD.md`.

## Measured figures (CMU-MOSI transcripts, std folds; MMSA metrics)

Accuracies and F1 in %, MAE and Corr on the [-3, 3] scale. Audio / vision absent (as in training
evaluation). Seed {meta["seed"]}, best epoch {meta["best_epoch"]} of {meta["epochs_run"]} run
(selection by validation {meta["train"]["select_metric"]}).{_refit_text(meta)}

| Model / split | Acc2 has0 | Acc2 non0 | F1 has0 | F1 non0 | Acc7 | Acc5 | MAE | Corr |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

The ridge rows are this run's own baseline on the same encoder (same tokens, mean-pooled and
L2-normalised by the `TextEncoder`, alpha chosen by validation MAE); issue 4 quotes a measured floor
of 79.9 % Acc2 non0 / MAE 0.96 / Corr 0.70 on std test for the frozen encoder. {_ft_rows_text(meta)}Validation numbers are
on 229 utterances and move by about ±0.02 MAE / ±1.5 points Acc2 between seeds.
The same model on Whisper's transcripts of the spoken std-test utterances (the engine's real ASR
path) is the `mosi_spoken` suite of `bench/results/accuracy.md`; the learning rate was chosen on
std-valid as in `bench/results/live_lr_sweep.md`.

### Robustness to audio / vision (same checkpoint)

Score shift = mean / max |score(with A/V) − score(without)|, and the share of samples whose sign flips.{" The valid rows are in-sample for these weights (the refit trained on valid)." if refit.get("enabled") else ""}

| Split | Audio / vision | Acc2 non0 | MAE | Score shift (mean / max / sign flips) |
|---|---|---|---|---|
{chr(10).join(rob)}

### Speed

Forward pass, batch 1, {lat["threads"]} torch thread (the fusion stage's default), CPU time of
that thread (the machine was shared with other jobs, so wall-clock figures were not meaningful):
text only {lat["text_only_median_ms"]:.2f} ms median ({lat["text_only_p90_ms"]:.2f} ms p90); a
full window as served (12 text tokens, {meta["live_inputs"]["max_audio_frames"]} audio frames,
{meta["live_inputs"]["max_video_frames"]} face frames) {lat["full_window_median_ms"]:.2f} ms median
({lat["full_window_p90_ms"]:.2f} ms p90); with 300 un-binned audio frames
{lat["full_window_300_median_ms"]:.2f} ms median. Eager PyTorch; the engine may run the ONNX
backend instead. The text encoder (MiniLM) runs before it and is not included. Trained with the
engine's `[fusion] max_audio_frames = {meta["live_inputs"]["max_audio_frames"]}` /
`max_video_frames = {meta["live_inputs"]["max_video_frames"]}` (recorded under `live_inputs` in the
checkpoint meta).

### Through the engine's `LiveModel`

Loaded from the checkpoint by `models/live.py` (eager backend), one window each with random
audio / face frames: {checks}.

## How it was made

```
{(meta.get("text_finetune") or {}).get("command") or ""}{chr(10) if (meta.get("text_finetune") or {}).get("command") else ""}{meta["command"]}
```

(the same as `python -m sentistream.models.live_training {meta["command"].replace("sentistream train-live", "").strip()}`;
`--help` lists the options; `--card-from {ckpt.name}` rewrites this card from the checkpoint's metadata.)

Training: {meta["train"]["optimizer"]} lr {meta["train"]["lr"]}, weight decay {meta["train"]["weight_decay"]},
batch {meta["train"]["batch_size"]}, {meta["train"]["scheduler"]} (warm-up {meta["train"]["warmup_ratio"]}),
grad-norm clip {meta["train"]["grad_clip"]}, {meta["train"]["loss"]} loss, up to {meta["train"]["epochs"]} epochs,
early stopping after {meta["train"]["patience"]} epochs without validation improvement. Wall time
{meta["train_seconds"]:.0f} s training, {meta["total_seconds"]:.0f} s in all (2 shared CPU cores).
The same figures, the data provenance and the audio normalisation are in the checkpoint's metadata
(`registry.read_checkpoint_metadata(path)["meta"]`).

## Limits

- Text is the only sentiment-bearing input. MOSI is 93 English movie-review videos; the live engine
  scores 3-second windows of ASR output, which are shorter and noisier than MOSI utterances.
- {_encoder_limit_text(meta)}
- The audio / vision robustness figures are for synthetic speech and one synthetic face; a real
  microphone or camera produces other feature distributions.
"""
    path.write_text(text)
