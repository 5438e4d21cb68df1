"""`sentistream bench affect`: do the face and the voice carry sentiment? (bench/results/affect.json + .md)

* face: the engine's own path on each image (mediapipe face mesh -> the face box -> the FER2013
  mini-Xception): valence AUC (happy vs angry / disgust / fear / sad) and 3-class accuracy
  (positive = happy, negative = the four, neutral = neutral / surprise; argmax of the summed
  probabilities); ``face_direct``: the model on the whole image (what FER2013's crops are).
  Default data: FER2013 valid (PublicTest); ``--faces DIR``: any ``<emotion>/*.png|jpg`` folder.
* voice: the Whisper-encoder head on each clip: valence AUC and balanced accuracy (positive =
  happy, calm; negative = sad, angry, fearful, disgust). Default: RAVDESS actors 18-20 (never
  seen in training); ``--speech DIR`` (RAVDESS names) or ``--speech-csv FILE`` (path,emotion,speaker).
* voice_stream: held-out clips joined with pauses into one recording, replayed through the real
  graph (``sentistream run --pace fast``): the share of windows whose sign matches the clip's
  valence (``window_acc2``), for windows that end inside a clip, at least 1.5 s into it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import RESULTS, command_line, stamp, write_json

DEFAULT_FACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "affect" / "fer2013.npz"
FER_NEGATIVE = ("angry", "disgust", "fear", "sad")
STREAM_CLIPS = 24  # clips in the voice-only stream (half positive, half negative)


# --------------------------------------------------------------------------- face
def load_faces(faces: str | None, limit: int | None = None) -> tuple[list[np.ndarray], list[str]]:
    """Grayscale face images and their FER2013 emotion names."""
    import cv2

    if faces is None:
        d = np.load(DEFAULT_FACES)
        keep = d["split"] == "valid"
        imgs, names = list(d["images"][keep]), [str(d["emotions"][i]) for i in d["label"][keep]]
    else:
        imgs, names = [], []
        for p in sorted(Path(faces).glob("*/*")):
            if p.suffix.lower() in (".png", ".jpg", ".jpeg"):
                img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
                if img is not None:
                    imgs.append(img)
                    names.append(p.parent.name.lower())
    if limit:
        idx = np.random.default_rng(0).permutation(len(imgs))[:limit]
        imgs, names = [imgs[i] for i in idx], [names[i] for i in idx]
    return imgs, names


def _face_metrics(probs: np.ndarray, names: list[str]) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    from ..perception.expression import EXPRESSIONS, valence

    v = valence(probs)
    names_a = np.array(names)
    pos, neg = names_a == "happy", np.isin(names_a, FER_NEGATIVE)
    auc = roc_auc_score(np.r_[np.ones(pos.sum()), np.zeros(neg.sum())], np.r_[v[pos], v[neg]])
    idx = {e: EXPRESSIONS.index(e) for e in EXPRESSIONS}
    three = np.stack(
        [
            probs[:, [idx[e] for e in FER_NEGATIVE]].sum(1),
            probs[:, [idx["neutral"], idx["surprise"]]].sum(1),
            probs[:, idx["happy"]],
        ],
        1,
    )
    truth = np.where(pos, 2, np.where(neg, 0, 1))
    return {
        "valence_auc": round(float(auc), 4),
        "acc3": round(float((three.argmax(1) == truth).mean()), 4),
        "n": len(names),
    }


def bench_face(faces: str | None, limit: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
    import cv2

    from ..perception.expression import EXPRESSIONS, ExpressionModel
    from ..perception.face import FaceFeatureExtractor, FaceOptions

    imgs, names = load_faces(faces, limit)
    model = ExpressionModel()
    t = time.perf_counter()
    direct = model.predict(np.stack([cv2.resize(i, (64, 64), interpolation=cv2.INTER_AREA) for i in imgs]))
    direct_ms = (time.perf_counter() - t) / len(imgs) * 1e3
    # The engine's path: each image as a video frame (upscaled, with a border so the mesh finds it).
    ex = FaceFeatureExtractor(FaceOptions(static_image_mode=True, max_num_faces=1))
    engine = np.zeros((len(imgs), len(EXPRESSIONS)), np.float32)
    engine[:, EXPRESSIONS.index("neutral")] = 1.0  # no face found: neutral (valence 0)
    found, t = 0, time.perf_counter()
    for i, img in enumerate(imgs):
        big = cv2.copyMakeBorder(
            cv2.resize(img, (192, 192), interpolation=cv2.INTER_CUBIC), 64, 64, 64, 64, cv2.BORDER_CONSTANT, value=0
        )
        r = ex.extract(cv2.cvtColor(big, cv2.COLOR_GRAY2RGB))
        if r.expression is not None:
            engine[i], found = r.expression, found + 1
    engine_ms = (time.perf_counter() - t) / len(imgs) * 1e3
    ex.close()
    face = {
        **_face_metrics(engine, names),
        "face_found": round(found / len(imgs), 4),
        "ms_per_frame_mesh_and_expression": round(engine_ms, 2),
    }
    return face, {**_face_metrics(direct, names), "ms_per_crop": round(direct_ms, 3)}


# --------------------------------------------------------------------------- voice
def held_out_clips(speech: str | None, speech_csv: str | None):
    from ..models import voice_training as vt

    if speech_csv:
        return vt.clips_from_csv(speech_csv)
    if speech:
        return vt.clips_from_ravdess_dir(speech)
    return [c for c in vt.clips_from_ravdess_dir(vt.DEFAULT_SPEECH) if int(c.speaker) in vt.TEST_ACTORS]


def bench_voice(clips) -> dict[str, Any]:
    from faster_whisper import decode_audio

    from ..models.voice_training import voice_metrics
    from ..perception.asr import AsrOptions, load_whisper
    from ..perception.voice import VoiceHead, whisper_embedding

    model, head = load_whisper(AsrOptions()), VoiceHead.load()
    vals, audio_s, t = [], 0.0, 0.0
    for c in clips:
        audio = decode_audio(str(c.path), sampling_rate=16000)
        t0 = time.perf_counter()
        vals.append(float(head.valence(whisper_embedding(model, audio))[0]))
        t += time.perf_counter() - t0
        audio_s += audio.size / 16000
    m = voice_metrics(np.array(vals), clips)
    return {
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()},
        "ms_per_audio_s": round(t / max(audio_s, 1e-9) * 1e3, 2),
    }


def voice_stream(clips, n: int = STREAM_CLIPS, seed: int = 0, keep_dir: Path | None = None) -> dict[str, Any]:
    """The voice-only stream through the real graph (module docstring)."""
    import wave

    from faster_whisper import decode_audio

    rng = np.random.default_rng(seed)
    pos = [c for c in clips if c.valence > 0]
    neg = [c for c in clips if c.valence < 0]
    pick = [pos[i] for i in rng.permutation(len(pos))[: n // 2]] + [neg[i] for i in rng.permutation(len(neg))[: n // 2]]
    pick = [pick[i] for i in rng.permutation(len(pick))]
    parts, spans, t = [], [], 0.0
    for c in pick:
        gap = np.zeros(int(rng.uniform(0.4, 1.2) * 16000), np.float32)
        audio = decode_audio(str(c.path), sampling_rate=16000).astype(np.float32)
        parts += [gap, audio]
        t += gap.size / 16000
        spans.append((t, t + audio.size / 16000, c.valence))
        t += audio.size / 16000
    parts.append(np.zeros(16000, np.float32))
    signal = np.concatenate(parts)
    with tempfile.TemporaryDirectory(prefix="sentistream-affect-") as tmp:
        folder = keep_dir or Path(tmp)
        wav, out = folder / "voice_stream.wav", folder / "events.jsonl"
        with wave.open(str(wav), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes((np.clip(signal, -1, 1) * 32767).astype(np.int16).tobytes())
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "sentistream.cli",
                "run",
                "--source",
                str(wav),
                "--pace",
                "fast",
                "--jsonl",
                str(out),
                "--view",
                "none",
            ],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"the voice stream run failed: {proc.stderr[-2000:]}")
        events = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    right = total = voice_right = voice_total = 0
    scores: dict[int, list[float]] = {1: [], -1: []}
    voices: dict[int, list[float]] = {1: [], -1: []}
    for e in events:
        t1 = e["window"]["t1"]
        for a, b, v in spans:
            if a + 1.5 <= t1 <= b + 0.25:  # 1.5 s of this clip's voice read, and not past it
                total += 1
                right += (e["score"] > 0) == (v > 0)
                scores[v].append(e["score"])
                voice = (e.get("readouts") or {}).get("voice")
                if voice is not None:
                    voices[v].append(voice)
                    voice_total += 1
                    voice_right += (voice > 0) == (v > 0)
    return {
        "window_acc2": round(right / max(total, 1), 4),  # the fused score's sign
        "voice_readout_acc2": round(voice_right / max(voice_total, 1), 4),  # the voice branch's own sign
        "mean_score_positive_clips": round(float(np.mean(scores[1])), 3) if scores[1] else None,
        "mean_score_negative_clips": round(float(np.mean(scores[-1])), 3) if scores[-1] else None,
        "mean_voice_positive_clips": round(float(np.mean(voices[1])), 3) if voices[1] else None,
        "mean_voice_negative_clips": round(float(np.mean(voices[-1])), 3) if voices[-1] else None,
        "windows": total,
        "windows_with_voice": voice_total,
        "clips": len(pick),
        "seconds": round(t, 1),
        "events": len(events),
    }


# --------------------------------------------------------------------------- command
def cmd_affect(args) -> int:
    results: dict[str, Any] = {}
    if not args.no_face:
        results["face"], results["face_direct"] = bench_face(args.faces, args.face_limit)
    clips = held_out_clips(args.speech, args.speech_csv)
    if not args.no_voice:
        results["voice"] = bench_voice(clips)
        results["voice_stream"] = voice_stream(clips, args.stream_clips)
    results["data"] = {
        "faces": args.faces or f"{DEFAULT_FACES} (FER2013 valid = PublicTest)",
        "speech": args.speech_csv or args.speech or "RAVDESS actors 18-20 (held out of voice training)",
    }
    results["goals"] = {"face.valence_auc": 0.93, "voice.valence_auc": 0.88, "voice_stream.window_acc2": 0.80}
    results["stamp"] = stamp("cpu", command_line("sentistream bench affect"), False)
    out = Path(args.out)
    write_json(out / "affect.json", results)
    (out / "affect.md").write_text(_markdown(results))
    print(json.dumps({k: v for k, v in results.items() if k != "stamp"}, indent=2))
    return 0


def _markdown(r: dict[str, Any]) -> str:
    s = r["stamp"]
    rows = ["# Affect: face and voice", "", "| what | metric | value | goal |", "|---|---|---|---|"]
    for section, key in (
        ("face", "valence_auc"),
        ("face", "acc3"),
        ("face", "face_found"),
        ("face_direct", "valence_auc"),
        ("face_direct", "acc3"),
        ("voice", "valence_auc"),
        ("voice", "balanced_acc"),
        ("voice_stream", "window_acc2"),
        ("voice_stream", "voice_readout_acc2"),
        ("voice_stream", "mean_score_positive_clips"),
        ("voice_stream", "mean_score_negative_clips"),
        ("voice_stream", "mean_voice_positive_clips"),
        ("voice_stream", "mean_voice_negative_clips"),
    ):
        if section in r and key in r[section]:
            goal = r["goals"].get(f"{section}.{key}", "")
            rows.append(f"| {section} | {key} | {r[section][key]} | {goal and f'>= {goal}'} |")
    rows += [
        "",
        f"Data: faces {r['data']['faces']}; speech {r['data']['speech']}.",
        "",
        f"Command: `{s['command']}`. Machine: {s['cpu']} ({s['cpu_count']} CPUs), {s['date']}, git {s['git']}.",
        "",
        "Notes:",
        "- face: the engine's path (mediapipe face mesh on the 48 px image upscaled to 192 px with a 64 px "
        "border, then the expression model on the mesh box); images where the mesh finds no face count as "
        "neutral. face_direct: the model on the whole 48 px image, the crops it was trained on.",
        "- voice_stream: lexically neutral RAVDESS sentences through the real graph; the text branch (trained "
        "on CMU-MOSI opinions) scores them 1-2 points either way and dominates the fusion rule when words are "
        "present, so the stream follows the words more than the voice (models/affect/MODEL_CARD.md).",
        "",
        "Research / non-commercial data (FER2013, RAVDESS CC BY-NC-SA 4.0): see models/affect/MODEL_CARD.md.",
        "",
    ]
    return "\n".join(rows)


def register(bench_subparsers) -> None:
    p = bench_subparsers.add_parser("affect", help="face and voice valence: AUC, accuracy, a voice-only stream")
    p.add_argument("--faces", default=None, help="a folder of <emotion>/*.png|jpg (default: FER2013 valid)")
    p.add_argument("--face-limit", type=int, default=None, help="score a random subset of this many faces")
    p.add_argument("--speech", default=None, help="a folder of RAVDESS-named clips (default: actors 18-20)")
    p.add_argument("--speech-csv", default=None, help="rows path,emotion,speaker (RAVDESS emotion names)")
    p.add_argument("--stream-clips", type=int, default=STREAM_CLIPS, help="clips in the voice-only stream")
    p.add_argument("--no-face", action="store_true")
    p.add_argument("--no-voice", action="store_true")
    p.add_argument("--out", default=str(RESULTS), help="results folder")
    p.set_defaults(func=cmd_affect)
