"""Face and voice carry sentiment: the expression model on a real face, the voice head on held-out
RAVDESS actors, the fusion rule, and a stream where only the voice carries the sentiment."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from sentistream.models.late_fusion import fuse
from sentistream.payloads import FacePayload, VoicePayload

RAVDESS = __import__("sentistream.models.voice_training", fromlist=["DEFAULT_SPEECH"]).DEFAULT_SPEECH
needs_ravdess = pytest.mark.skipif(not RAVDESS.is_dir(), reason=f"RAVDESS not found at {RAVDESS}")


def test_fusion_rule_terms_add_up_and_words_dominate():
    strong = fuse(-2.5, 0.9, 0.9)  # clearly negative words, a happy voice and face
    assert strong.score < -2.0 and abs(sum(strong.terms.values()) - strong.score) < 1e-9
    weak = fuse(0.1, 0.8, None)  # neutral words: the voice moves the score
    assert weak.score > 1.0 and weak.terms["vision"] == 0.0 and weak.weights()["audio"] > 0.9
    silent = fuse(None, -0.6, -0.4)  # no words: voice and face alone
    assert silent.terms["text"] == 0.0 and silent.score == pytest.approx(0.8 * 3 * -0.5)
    assert fuse(None, None, None).score == 0.0 and fuse(None, None, None).weights()["text"] == 1.0
    assert all(abs(fuse(s, v, f).score) <= 3.0 for s in (-3, 0, 3) for v in (-1, 1) for f in (-1, 1))
    # words without sentiment (gate 0) leave the stream to voice and face; the gate scales the text term
    assert fuse(1.5, -0.5, None, text_strength=0.0).score == pytest.approx(fuse(None, -0.5, None).score)
    half = fuse(2.0, 0.5, 0.5, text_strength=0.5)
    assert half.terms["text"] == pytest.approx(1.0) and abs(sum(half.terms.values()) - half.score) < 1e-9


def test_expression_on_a_real_face_through_the_face_extractor():
    from skimage.data import astronaut

    from sentistream.perception.expression import EXPRESSIONS, valence
    from sentistream.perception.face import FaceFeatureExtractor

    with FaceFeatureExtractor() as ex:
        r = ex.extract(astronaut())  # a smiling astronaut
        assert r.present and r.expression is not None and r.expression.shape == (7,)
        assert EXPRESSIONS[int(np.argmax(r.expression))] == "happy" and valence(r.expression) > 0.8
        blank = ex.extract(np.full((480, 640, 3), 128, np.uint8))
        assert not blank.present and blank.expression is None  # no face: no expression


def test_a_missing_expression_model_turns_expression_off_with_one_line(tmp_path, caplog):
    from sentistream.perception.expression import load_expression_model

    with caplog.at_level(logging.WARNING, logger="sentistream.expression"):
        assert load_expression_model(str(tmp_path / "nope.tflite")) is None
    assert "face expression off" in caplog.text and "nope.tflite" in caplog.text
    assert load_expression_model("none") is None


def test_payloads_refuse_malformed_affect():
    assert VoicePayload.from_meta({"t0_s": 1.0, "t1_s": 3.0, "valence": 0.4}) == VoicePayload(1.0, 3.0, 0.4)
    for bad in (
        {"t0_s": 1.0, "t1_s": 3.0},
        {"t0_s": 3.0, "t1_s": 1.0, "valence": 0.1},
        {"t0_s": "x", "t1_s": 1.0, "valence": 0.1},
        {"t0_s": 0, "t1_s": 1, "valence": float("nan")},
    ):
        assert VoicePayload.from_meta(bad) is None, bad
    face = FacePayload.from_meta({"present": True, "valence": 7.0, "expression": [0.1] * 6})
    assert face.valence == 1.0 and face.expression is None  # clipped; a 6-class list is dropped
    assert FacePayload.from_meta({"present": False, "valence": 0.5}).valence is None


@needs_ravdess
def test_voice_valence_on_held_out_actors():
    """Real Whisper encoder on real RAVDESS speech of actors the head never saw (18-20)."""
    from sentistream.bench.affect import bench_voice, held_out_clips

    clips = [c for c in held_out_clips(None, None) if c.valence != 0]
    rng = np.random.default_rng(0)
    sample = [clips[i] for i in rng.permutation(len(clips))[:40]]
    m = bench_voice(sample)
    assert m["valence_auc"] >= 0.75 and m["n"] == 40, m


@needs_ravdess
@pytest.mark.slow
def test_a_stream_where_only_the_voice_carries_sentiment():
    """Lexically neutral sentences ("Kids are talking by the door"), spoken happy / calm or sad /
    angry / fearful / disgusted by held-out actors, through the real graph: the stream's sign
    follows the voice."""
    from sentistream.bench.affect import held_out_clips, voice_stream

    result = voice_stream(held_out_clips(None, None), n=24, seed=0)  # as `sentistream bench affect`
    assert result["windows"] >= 30 and result["windows_with_voice"] >= 0.9 * result["windows"], result
    # the voice branch's readout is higher on positive clips than on negative ones, by a margin
    assert result["mean_voice_positive_clips"] - result["mean_voice_negative_clips"] >= 0.2, result
