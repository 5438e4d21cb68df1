"""Typed message payloads: the wire keys are the ones the engine always sent, malformed entries
are dropped on the way in, and the fusion stage reads words and faces through them (in process)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sentistream.engine.messages import Message, decode, now_ns
from sentistream.models.late_fusion import fuse
from sentistream.payloads import FacePayload, VoicePayload, Word, WordsPayload


def test_words_payload_keeps_the_wire_keys_and_round_trips():
    p = WordsPayload([Word("great", 0.4, 0.8, 0.9)], [Word("film", 0.8, 1.1, 0.5)], True, 1.2, 35.0)
    meta = p.to_meta()
    assert set(meta) == {
        "committed",
        "partial",
        "utterance_end",
        "final_through_s",
        "decode_ms",
        "idle",
        "heard_through_s",
    }
    assert meta["committed"] == [{"text": "great", "start_s": 0.4, "end_s": 0.8, "probability": 0.9}]
    # through the real wire codec (JSON header), back to the same payload
    msg = decode(Message("words", "words", 0, now_ns(), 1.1, meta=meta).encode())
    assert WordsPayload.from_meta(msg.meta) == p
    # an idle heartbeat: no words, how far the recogniser has heard
    beat = WordsPayload(final_through_s=1.2, idle=True, heard_through_s=7.5)
    assert (
        WordsPayload.from_meta(decode(Message("words", "words", 1, now_ns(), 7.5, meta=beat.to_meta()).encode()).meta)
        == beat
    )
    assert WordsPayload.from_meta({"idle": "yes", "heard_through_s": "far"}).idle is False  # only a real true


def test_malformed_words_are_dropped_not_raised():
    meta = {
        "committed": [
            {"text": "ok", "start_s": 0.1, "end_s": 0.2},  # no probability: 1.0
            {"text": "x"},  # no times
            {"text": "y", "start_s": "soon", "end_s": 1},
            {"text": "z", "start_s": math.nan, "end_s": 1.0},
            "not a word",
        ],
        "partial": "not a list",
        "final_through_s": "later",
    }
    p = WordsPayload.from_meta(meta, default_through_s=2.5)
    assert p.committed == [Word("ok", 0.1, 0.2, 1.0)] and p.partial == [] and p.final_through_s == 2.5


def test_face_payload_is_strict_about_presence():
    assert FacePayload.from_meta({"present": True, "reason": ""}).present
    assert not FacePayload.from_meta({"present": "false"}).present  # a string is no face
    assert FacePayload.from_meta({}).to_meta() == {"present": False, "reason": ""}


def test_fusion_stage_in_process_puts_each_word_in_its_window():
    """run_stage on the real fusion stage (real model, real MiniLM): words arrive as the ASR stage
    sends them, a malformed one among them; each event's words lie inside its window."""
    from sentistream.engine.config import EngineConfig
    from sentistream.engine.harness import run_stage, stage_spec
    from sentistream.engine.stages.fusion import FusionStage
    from sentistream.perception.audio_features import feature_dim
    from sentistream.perception.face import FACE_FEATURE_DIM

    cfg = EngineConfig()
    cfg.fusion.backend = "eager"
    streams = ["face", "audio_feat", "words", "voice"]
    spec = stage_spec("fusion", inputs=streams, outputs=["events"], config=cfg, expected_inputs=streams)
    stage = FusionStage(spec)
    rng = np.random.default_rng(0)
    inputs: list[Message] = []
    for i in range(60):  # 6 s: a face frame every 0.1 s and 10 feature frames with it
        t = round(0.1 * (i + 1), 3)
        inputs.append(
            Message(
                "face_features",
                "face",
                i,
                now_ns(),
                t,
                [rng.normal(0, 0.1, FACE_FEATURE_DIM).astype(np.float32)],
                meta=FacePayload(True, "ok", 0.8, [0.0, 0.0, 0.0, 0.9, 0.1, 0.0, 0.0]).to_meta(),
            )
        )
        times = t - 0.1 + 0.01 * np.arange(1, 11)
        inputs.append(
            Message(
                "audio_features",
                "audio_feat",
                i,
                now_ns(),
                t,
                [rng.normal(0, 1, (10, feature_dim())).astype(np.float32), times],
            )
        )
        if i % 5 == 4 and i >= 20:  # the voice's valence over the last 2 s, every 0.5 s
            inputs.append(Message("voice_affect", "voice", i, now_ns(), t, meta=VoicePayload(t - 2, t, -0.5).to_meta()))
        if i in (15, 45):
            words = [Word("really", t - 0.6, t - 0.3), Word("great", t - 0.3, t - 0.05)]
            meta = WordsPayload(words, [], True, t).to_meta()
            meta["committed"].append({"text": "broken"})  # malformed: dropped
            inputs.append(Message("words", "words", i, now_ns(), t, meta=meta))
    inputs += [Message("eos", s, 0, now_ns(), 6.0) for s in ("face", "audio_feat", "words", "voice")]
    run = run_stage(stage, inputs)
    events = [m.meta for m in run.of_kind("event")]
    assert len(events) >= 20 and run.published[-1].kind == "eos"
    said = [w for e in events for w in e["new_words"]]
    assert [w["text"] for w in said] == ["really", "great", "really", "great"]  # each once, none broken
    for e in events:
        for w in e["words"]:
            assert w["end_s"] > e["window"]["t0"] and w["start_s"] < e["window"]["t1"], (w, e["window"])
        assert math.isfinite(e["score"]) and e["modalities"]["vision"] and e["modalities"]["audio"]
        # the readouts, and a score that is the fusion rule of them, with honest shares
        r = e["readouts"]
        assert r["face"] == pytest.approx(0.8) and abs(sum(e["contributions"].values()) - 1) < 1e-3
        text = r["text"] * 3 if r["text"] is not None else None
        assert e["score"] == pytest.approx(
            fuse(text, r["voice"], r["face"], r.get("text_strength", 1.0)).score, abs=2e-3
        )
    assert any(e["readouts"]["voice"] == pytest.approx(-0.5) for e in events)
    assert all(e["readouts"]["voice"] is None for e in events if e["window"]["t1"] <= 2.0)  # none yet
    assert run.counters["errors"] == 0
