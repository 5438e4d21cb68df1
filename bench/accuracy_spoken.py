"""`bench accuracy` suite mosi_spoken: std-test transcripts spoken by espeak-ng, through the real ASR
and text stages into the shipped live model, with WER (see bench/accuracy.py)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .accuracy_common import METRICS, SPOKEN_ROWS, merge_results, run_stamp, say, utc_now

# --------------------------------------------------------------------------- mosi_spoken
#: espeak-ng word gap (``-g``, units of 10 ms) of the ``live_asr_text_gapped`` row. espeak runs words
#: together in a way no speaker does, and that, not the sentiment model, is most of the ASR row's loss.
#: Chosen on std-valid only (all 229 utterances, batch tiny.en, plain WER): -g 0 19.6 %, 2 15.3 %,
#: 4 14.2 %, 6 13.3 %, 8 12.7 %, 12 12.1 %; rule fixed before the test run: the lowest WER whose speech
#: stays at a conversational >= 120 words a minute (measured: -g 0 176, 4 144, 8 128, 12 115 wpm).
#: The default-speech rows (-g 0) stay, so both are reported.
GAPPED_WORD_GAP = 8


def _spoken_cache_key(ids: Sequence[str], asr: str, word_gap: int = 0) -> str:
    from ..perception.asr import AsrOptions

    opts = {k: str(v) for k, v in vars(AsrOptions()).items() if k != "cpu_threads"}
    speech = "espeak-ng en-us 150" + (f" -g {word_gap}" if word_gap else "")
    h = hashlib.sha1(json.dumps([list(ids), asr, speech, "v2", opts]).encode())
    return h.hexdigest()[:12]


def spoken_transcribe(
    csv: Path, n: int | None, asr_mode: str, threads: int, cache: bool = True, word_gap: int = 0
) -> dict[str, Any]:
    """espeak-ng (word gap ``word_gap`` x 10 ms) -> ASR for the std-test utterances (first ``n``; all
    when None); audio features of each spoken utterance. Cached in the sentistream cache dir (audio
    features + hypotheses)."""
    from ..models import data as data_mod
    from .perception import (
        Utterance,
        bench_asr_streaming_fast,
        speak_espeak,
    )

    cols = data_mod.read_mosi_transcripts(csv)
    rows = np.where(cols["std_split"] == "test")[0]
    rows = np.array([r for r in rows if str(cols["text"][r]).strip()])
    if n:
        rows = rows[:n]
    ids = [str(cols["id"][r]) for r in rows]
    key = _spoken_cache_key(ids, asr_mode, word_gap)
    cpath = data_mod.default_cache_dir() / f"spoken_mosi_{key}.npz"
    if cache and cpath.is_file():
        z = np.load(cpath, allow_pickle=False)
        hyps = [str(h) for h in z["hyps"]]
        feats = np.split(z["feats"], z["off"][1:-1])
        say(f"mosi_spoken: {len(ids)} utterances from cache {cpath.name}")
        return {
            "ids": ids,
            "refs": [str(cols["text"][r]) for r in rows],
            "labels": cols["label"][rows],
            "hyps": hyps,
            "audio_feats": feats,
            "audio_s": z["audio_s"].tolist(),
            "asr_seconds": float(z["asr_seconds"]),
            "cached": str(cpath),
        }
    from ..perception.asr import (
        AsrOptions,
        load_whisper,
        transcribe_file_batch,
    )
    from ..perception.audio_features import AudioFeatureExtractor

    say(f"mosi_spoken: speaking {len(rows)} std-test utterances with espeak-ng (word gap {word_gap}) ...")
    utts = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in rows:
            utts.append(
                Utterance(
                    str(cols["id"][r]), str(cols["text"][r]), speak_espeak(str(cols["text"][r]), Path(tmp), word_gap)
                )
            )
    opts = AsrOptions(cpu_threads=max(1, threads))
    model = load_whisper(opts)
    say(f"mosi_spoken: ASR ({asr_mode}) over {sum(u.audio.size for u in utts) / 16000:.0f} s of speech ...")
    t0 = time.perf_counter()
    if asr_mode == "streaming":
        hyps = bench_asr_streaming_fast(utts, model)
    else:
        hyps = []
        for i, u in enumerate(utts):
            hyps.append(" ".join(w.text for w in transcribe_file_batch(u.audio, opts, model=model)))
            if (i + 1) % 50 == 0:
                say(f"  ASR {i + 1}/{len(utts)}")
    asr_seconds = time.perf_counter() - t0
    ext = AudioFeatureExtractor()
    feats = []
    for u in utts:
        ext.reset()
        f = ext.process(u.audio, 0.0).features
        g = ext.flush().features
        feats.append(np.concatenate([f, g]).astype(np.float32) if len(g) else f.astype(np.float32))
    audio_s = [u.audio.size / 16000 for u in utts]
    if cache:
        cpath.parent.mkdir(parents=True, exist_ok=True)
        off = np.concatenate([[0], np.cumsum([len(f) for f in feats])])
        np.savez(
            cpath.with_suffix(".tmp.npz"),
            hyps=np.array(hyps),
            feats=np.concatenate(feats),
            off=off,
            audio_s=np.array(audio_s),
            asr_seconds=np.array(asr_seconds),
        )
        os.replace(cpath.with_suffix(".tmp.npz"), cpath)
    return {
        "ids": ids,
        "refs": [u.text for u in utts],
        "labels": cols["label"][rows],
        "hyps": hyps,
        "audio_feats": feats,
        "audio_s": audio_s,
        "asr_seconds": asr_seconds,
        "cached": "",
    }


def load_live(checkpoint: Path, threads: int):
    """The engine's :class:`LiveModel` on ``checkpoint`` (eager, local), loaded once."""
    import torch

    from ..engine.config import FusionConfig
    from ..models.live import LiveModel
    from ..perception.audio_features import feature_dim
    from ..perception.face import FACE_FEATURE_DIM
    from ..perception.text import TextEncoder, TextEncoderOptions

    torch.set_num_threads(threads)
    cfg = FusionConfig(checkpoint=str(checkpoint), backend="eager", threads=threads)
    return LiveModel(
        cfg, TextEncoder(TextEncoderOptions(cache_size=0)), vision_dim=FACE_FEATURE_DIM, audio_dim=feature_dim()
    )


def live_scores(live, texts: Sequence[str], audio: Sequence[np.ndarray] | None) -> np.ndarray:
    """Scores of the live model exactly as the engine computes them for one window per utterance
    (``LiveModel.inputs_for``: text tokens, audio frames binned + normalised; vision absent)."""
    import torch

    from ..engine.windowing import Window
    from ..payloads import Word

    out = np.zeros(len(texts), np.float32)
    with torch.inference_mode():
        for i, t in enumerate(texts):
            a = audio[i] if audio is not None else np.zeros((0, live.dims.audio), np.float32)
            w = Window(
                0.0,
                1.0,
                np.zeros((0, live.dims.vision), np.float32),
                np.zeros(0, bool),
                np.asarray(a, np.float32),
                context=[Word(x, 0.0, 0.0) for x in str(t).split()],
            )
            inputs, _ = live.inputs_for(w)
            score = float(torch.clamp(live.model(inputs).score.reshape(-1)[0], -3.0, 3.0))
            out[i] = score if np.isfinite(score) else 0.0
    return out


def _plain_words(text: str) -> list[str]:
    """Lower case, apostrophes dropped (the MOSI reference transcripts carry none: THERES, YOURE),
    other punctuation -> space, digits 0-10 as words."""
    import re

    from ..perception.wer import NUMBER_WORDS

    t = text.lower().replace("’", "'").replace("'", "")
    return [NUMBER_WORDS.get(w, w) for w in re.sub(r"[^a-z0-9 ]+", " ", t).split()]


def plain_wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    from ..perception.wer import edit_distance

    errors = sum(edit_distance(_plain_words(r), _plain_words(h)) for r, h in zip(refs, hyps))
    return errors / max(1, sum(len(_plain_words(r)) for r in refs))


def _finetune_note(ck: dict[str, Any]) -> str:
    ft = ck["meta"].get("text_finetune")
    return f" with the checkpoint's fine-tuned layers ({ft['file']}, sha256 {ft['sha256'][:12]})" if ft else ""


def _goal_status(rows: dict[str, dict[str, float]]) -> str | None:
    """The goal (ASR within 3 points of the reference text on acc2_non0), per speech style."""
    if "live_ref_text" not in rows:
        return None
    parts = []
    for name, style in (
        ("live_asr_text", "espeak-ng default speech"),
        ("live_asr_text_gapped", f"speech with {10 * GAPPED_WORD_GAP} ms word gaps"),
    ):
        if name in rows:
            gap = rows["live_ref_text"]["acc2_non0"] - rows[name]["acc2_non0"]
            parts.append(
                f"{style}: acc2_non0 gap reference-text minus ASR-text = {100 * gap:.1f} points, "
                f"goal {'met' if gap <= 0.03 else 'NOT met'}"
            )
    return "; ".join(parts) + "." if parts else None


def suite_spoken(args, models: Sequence[str], command: str) -> None:
    from ..models.metrics import regression_metrics
    from ..perception.text import file_sha256
    from ..perception.wer import wer

    ckpt = Path(args.checkpoint)
    base_meta = {
        "machine": run_stamp(command, args.quick),
        "date": utc_now(),
        "checkpoint": str(ckpt),
        "command": command,
    }
    if not ckpt.is_file():
        say(f"mosi_spoken: skipped: no shipped model ({ckpt} does not exist)")
        merge_results(
            Path(args.out),
            "mosi_spoken",
            {},
            {
                **base_meta,
                "status": "skipped: no shipped model",
                "data": f"{ckpt.name} not found; run `sentistream train-live` first",
            },
            {},
            fresh=args.fresh,
        )
        args.fresh = False
        return
    from ..models.registry import read_checkpoint_metadata

    ck = read_checkpoint_metadata(ckpt)
    sha = file_sha256(ckpt)
    live = load_live(ckpt, args.threads)
    n = args.spoken_utterances or (4 if args.quick else None)
    unknown = [m for m in models if m not in SPOKEN_ROWS]
    if unknown:
        raise SystemExit(f"mosi_spoken: unknown row {unknown[0]!r} ({', '.join(SPOKEN_ROWS)})")
    sp = spoken_transcribe(Path(args.transcripts), n, args.asr, args.threads, cache=not args.quick)
    labels = np.asarray(sp["labels"], np.float32)
    refs, hyps = sp["refs"], sp["hyps"]
    w_norm = wer(refs, hyps)
    w_plain = plain_wer(refs, hyps)
    gapped: dict[str, Any] = {}
    if "live_asr_text_gapped" in models:
        gapped = spoken_transcribe(
            Path(args.transcripts), n, args.asr, args.threads, cache=not args.quick, word_gap=GAPPED_WORD_GAP
        )
        assert gapped["ids"] == sp["ids"]
    w_gapped = plain_wer(refs, gapped["hyps"]) if gapped else None
    rows: dict[str, dict[str, float]] = {}
    model_meta: dict[str, dict[str, Any]] = {}
    plain = [" ".join(_plain_words(h)).upper() for h in hyps]
    inputs = {
        "live_ref_text": (refs, None),
        "live_asr_text": (hyps, None),
        "live_asr_text_audio": (hyps, sp["audio_feats"]),
        "live_asr_plain_text": (plain, None),
        "live_asr_text_gapped": (gapped.get("hyps"), None),
    }
    for name in models:
        texts, audio = inputs[name]
        t0 = time.perf_counter()
        pred = live_scores(live, texts, audio)
        m = regression_metrics("mosi", pred, labels)
        row = {k: float(m[k]) for k in METRICS}
        row.update({k + "_std": 0.0 for k in METRICS})
        if name != "live_ref_text":
            row["wer"] = float(w_gapped if name == "live_asr_text_gapped" else w_plain)
        rows[name] = row
        say(f"mosi_spoken {name}: acc2_non0 {row['acc2_non0']:.4f} mae {row['mae']:.4f}")
        model_meta[name] = {
            "command": command,
            "date": utc_now(),
            "seeds": None,
            "input": {
                "live_ref_text": "reference transcript, audio/vision absent",
                "live_asr_text": "ASR transcript, audio/vision absent",
                "live_asr_text_audio": "ASR transcript + audio features of the spoken utterance, vision absent",
                "live_asr_plain_text": "diagnostic: ASR transcript written like the "
                "MOSI transcripts (upper case, no punctuation "
                "or apostrophes, 0-10 as words), audio/vision "
                "absent; the engine does not do this",
                "live_asr_text_gapped": f"ASR transcript of the same text spoken with "
                f"espeak-ng -g {GAPPED_WORD_GAP} ("
                f"{10 * GAPPED_WORD_GAP} ms between words), "
                f"audio/vision absent",
            }[name],
            "seconds": round(time.perf_counter() - t0, 1),
        }
    suite_meta = {
        **base_meta,
        "status": "ok",
        "data": (
            f"{len(refs)} std-test utterances of {Path(args.transcripts).name} spoken by espeak-ng "
            f"(en-us, 150 wpm, 16 kHz), ASR {args.asr} (faster-whisper tiny.en via perception.asr), "
            f"engine TextEncoder{_finetune_note(ck)}, shipped model {ckpt.name} ({ck['model']}, dims "
            f"{ck['dims'].as_dict()}); one window per utterance (whole transcript + whole audio)"
        ),
        "utterances": len(refs),
        "asr": args.asr,
        "wer": float(w_plain),
        "wer_normalise": float(w_norm),
        "gapped_word_gap_10ms": GAPPED_WORD_GAP,
        "wer_gapped": None if w_gapped is None else float(w_gapped),
        "wer_note": "wer: lower case, apostrophes and punctuation dropped on both sides (the MOSI "
        "reference transcripts have no apostrophes), 0-10 as words; wer_normalise: the "
        "perception bench's normalise() (contractions expanded: penalises THERES vs there's)",
        "asr_seconds": round(float(sp["asr_seconds"]), 1),
        "audio_seconds": round(float(np.sum(sp["audio_s"])), 1),
        "cache": sp["cached"],
        "checkpoint_meta_model": ck["model"],
        "checkpoint_sha256": sha,
        "checkpoint_created": ck["meta"].get("created"),
        "checkpoint_command": ck["meta"].get("command"),
        "checkpoint_test": ck["meta"].get("metrics", {}).get("test"),
        "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:5]],
        "notes": [
            "Single deterministic pass (no seeds): *_std are 0.",
            "Scores are clipped to [-3, 3] as the live engine does.",
            (
                "Compare live_ref_text (same model, same utterances, reference transcript) and "
                "meta.mosi_text for the goal (within 3 points of mosi_text on acc2_non0)."
            ),
            (
                f"live_asr_text_gapped: the same utterances spoken with {10 * GAPPED_WORD_GAP} ms between "
                f"words (espeak-ng -g {GAPPED_WORD_GAP}, chosen on std-valid WER, see GAPPED_WORD_GAP in "
                f"bench/accuracy_spoken.py): slower speech with its words apart, which Whisper hears "
                f"better than espeak's run-together words; the goal is "
                f"stated for both speech styles."
            ),
        ],
    }
    if file_sha256(ckpt) != sha:
        raise RuntimeError(f"{ckpt} changed while the suite ran; run it again")
    gs = _goal_status(rows)
    if gs:
        suite_meta["goal_status"] = gs
    merge_results(Path(args.out), "mosi_spoken", rows, suite_meta, model_meta, fresh=args.fresh)
    args.fresh = False
