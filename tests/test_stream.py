"""The stream told as a stream: the newest-utterance text rule, the known-transcript recogniser,
the stream scoring rules, the demo clip's ground truth and a small stream through the real graph."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import read_jsonl, sentistream_cmd

from sentistream.bench.stream_data import Segment, build_recording, read_segments
from sentistream.bench.stream_score import flip_lags, segment_agreement, truth_at, window_pairs, window_phases
from sentistream.engine.windowing import WindowBuffer, split_utterances
from sentistream.payloads import Word
from sentistream.perception.reference import ReferenceRecognizer, load_reference_words


def _words(spec):
    return [Word(t, a, b) for t, a, b in spec]


def test_utterances_split_at_sentence_ends_pauses_and_recogniser_ends():
    words = _words([("I", 0.0, 0.2), ("liked", 0.25, 0.5), ("it.", 0.55, 0.8), ("But", 0.9, 1.0), ("then", 1.05, 1.2)])
    words += _words([("no", 2.0, 2.2), ("way", 2.25, 2.4), ("ok", 2.45, 2.6)])
    got = [[w.text for w in u] for u in split_utterances(words, 0.35, {2.4})]
    assert got == [["I", "liked", "it."], ["But", "then"], ["no", "way"], ["ok"]]


def test_utterance_context_is_the_newest_utterance_begun_by_the_window_end():
    buf = WindowBuffer(3.0, 0.25, 4, 2, text_lookback_s=8.0, text_context="utterance")
    buf.add_words(_words([("terrible", 0.0, 0.5), ("film", 0.55, 1.0)]), [])
    buf.add_words(_words([("very", 1.6, 1.9), ("happy", 1.95, 2.3)]), [], utterance_end=True)
    assert buf.cut(1.2).context_text == "terrible film"
    assert buf.cut(1.7).context_text == "very"  # "happy" starts after the window's end
    assert buf.cut(3.0).context_text == "very happy"
    assert buf.cut(10.4).context_text == ""  # ended more than text_lookback_s ago: silence
    lookback = WindowBuffer(3.0, 0.25, 4, 2, text_lookback_s=8.0, text_context="lookback")
    lookback.add_words(buf.words, [])
    assert lookback.cut(3.0).context_text == "terrible film very happy"
    with pytest.raises(ValueError, match="text_context"):
        WindowBuffer(3.0, 0.25, 4, 2, text_context="newest")


def test_reference_recognizer_commits_words_as_the_audio_passes_them(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(
        json.dumps([{"text": "b", "start_s": 0.6, "end_s": 0.9}, {"text": "a", "start_s": 0.1, "end_s": 0.5}])
    )
    rec = ReferenceRecognizer(load_reference_words(path), pause_s=0.35)
    assert rec.step().decoded is False  # nothing heard yet
    rec.add_audio(np.zeros(8000, np.float32), 0.0)  # 0.5 s
    up = rec.step()
    assert [w.text for w in up.committed] == ["a"] and up.final_through_s == pytest.approx(0.5)
    assert not up.utterance_end  # "b" follows after 0.1 s
    rec.add_audio(np.zeros(8000, np.float32), 0.5)
    up = rec.step()
    assert [w.text for w in up.committed] == ["b"] and up.utterance_end
    assert rec.finish().committed == []
    path.write_text('{"text": "not a list"}')
    with pytest.raises(ValueError, match="JSON list"):
        load_reference_words(path)


def _event(t1, score, final=False):
    return {"window": {"t0": t1 - 3, "t1": t1}, "score": score, **({"final": True} if final else {})}


def test_truth_flip_lag_and_agreement_rules():
    segs = [Segment(1.0, 3.0, 2.0), Segment(4.0, 6.0, -1.0), Segment(7.0, 9.0, 1.5)]
    assert truth_at(segs, 0.5) is None and truth_at(segs, 3.5) == 2.0 and truth_at(segs, 4.0) == -1.0
    events = [_event(t, 1) for t in (2.0, 3.0, 5.0, 6.0, 7.0, 8.0, 9.0, 9.5)] + [_event(10.0, -1, final=True)]
    pred, true = window_pairs(events, segs)
    assert pred.size == 8 and list(true[:3]) == [2.0, 2.0, -1.0]
    # t1 = 2.0 (the middle of 1-3) is late; 3.0 after; 5.0 late; 6.0 after; 7.0 early; 8.0 late ...
    assert window_phases(events, segs) == ["late", "after", "late", "after", "early", "late", "after", "after"]
    lags, never = flip_lags(events, segs)
    assert never == 1  # the second segment's sign never shows before the third ends
    assert lags == [0.0]  # the third: the stream already agrees as it ends
    assert segment_agreement(events, segs, end_s=10.0) == [(2, 2), (0, 2), (3, 3)]
    late = [_event(t, -1 if t < 9.0 else 1) for t in (5.0, 6.0, 7.0, 8.0, 9.0, 9.5, 10.0)]
    assert flip_lags(late, segs) == ([0.0, 0.0], 0)
    slow = [_event(t, 1) for t in (5.0, 6.0, 6.5)] + [_event(t, -1) for t in (7.25, 8.0, 9.0)] + [_event(9.75, 1)]
    assert flip_lags(slow, segs) == ([pytest.approx(1.25), pytest.approx(0.75)], 0)


def test_labels_csv_is_checked(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("start_s,end_s,label\n0.5,2.0,1.5\n3,2,1\n")
    with pytest.raises(ValueError, match="r.csv:3"):
        read_segments(p)
    p.write_text("start_s,end_s,label\n0.5,2.0,1.5\n")
    assert read_segments(p) == [Segment(0.5, 2.0, 1.5)]


def test_demo_clip_ground_truth(tmp_path, demo_meta):
    """A fast replay of the bundled clip: the events between 1 s after a sentence starts and the
    next sentence's start carry that sentence's sign (>= 80 % each, >= 95 % over the clip)."""
    out = tmp_path / "events.jsonl"
    import subprocess

    subprocess.run(
        sentistream_cmd("run", "--source", "demo", "--pace", "fast", "--jsonl", str(out), "--view", "none"),
        check=True,
        capture_output=True,
        timeout=300,
    )
    events = read_jsonl(out)
    segs = [
        Segment(s["start_s"], s["end_s"], 1.0 if s["sentiment"] == "positive" else -1.0) for s in demo_meta["sentences"]
    ]
    agree = segment_agreement(events, segs, end_s=demo_meta["duration_s"])
    for k, (ok, n) in enumerate(agree):
        assert n >= 5 and ok / n >= 0.8, (k, agree)
    # The goal, 95 % (59 of 62, also with two benchmarks loading the 2 cores: a recogniser that is
    # behind is waited for, so no window is cut before its words).
    assert sum(ok for ok, _ in agree) / sum(n for _, n in agree) >= 0.95, agree


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
@pytest.mark.parametrize("variant", ["reference", "asr"])
def test_small_stream_follows_each_utterance(tmp_path, variant):
    """Two spoken utterances of opposite sign with a face track, through the real graph: the
    stream flips within the pause and each utterance's windows carry its sign."""
    from sentistream.bench.stream import run_graph

    utts = [
        ("a", "i really love this movie it is wonderful and amazing", 2.5),
        ("b", "this film was terrible and boring i hated it", -2.5),
        ("c", "the acting was brilliant and i am very happy", 2.0),
    ]
    rec = build_recording(tmp_path, "small", utts, np.random.default_rng(0))
    events, _ = run_graph(rec, variant, "utterance", "fast", tmp_path)
    agree = segment_agreement(events, rec.segments, end_s=rec.duration_s)
    assert all(n and ok / n >= 0.75 for ok, n in agree), agree
    lags, never = flip_lags(events, rec.segments)
    assert never == 0 and len(lags) == 2 and max(lags) <= 1.5, lags
    if variant != "reference":
        return
    # The bench command on the same folder (--data): it reuses this run (--keep) and writes the
    # JSON whose key names other tools read.
    import json
    import subprocess

    res = tmp_path / "res"
    cmd = sentistream_cmd("bench", "stream", "--data", str(tmp_path), "--variants", "reference")
    cmd += ["--keep", str(tmp_path), "--out", str(res), "--name", "small"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "kept from an earlier run" in out.stderr
    v = json.loads((res / "small.json").read_text())["variants"]["reference"]
    assert {"acc2_non0", "f1_non0", "mae", "corr"} <= set(v["window"]) and "acc2_non0" in v["utterance"]
    assert set(v["flip_lag_s"]) >= {"p50", "p90", "never"} and v["flip_lag_s"]["never"] == 0
    assert (
        sum(p["windows"] for p in v["window_by_phase"].values())
        == v["windows"]
        == len(window_pairs(events, rec.segments)[0])
    )
    assert (res / "small.md").read_text().startswith("# bench stream")


def test_utterance_carry_leans_on_the_previous_utterance_until_enough_words():
    from sentistream.models.late_fusion import UtteranceCarry

    off = UtteranceCarry(0)
    assert off.text_score("i loved it", 2.0) == 2.0
    assert off.text_score("the plot", -0.5) == -0.5  # off: the words heard alone
    c = UtteranceCarry(4)
    assert c.text_score("i loved", 1.0) == 1.0  # no previous utterance yet
    assert c.text_score("i loved it so much", 2.5) == 2.5  # the same utterance grows
    # a new utterance: 1 word of 4 heard -> 1/4 of its score, 3/4 of the previous one's last
    assert c.text_score("the", -2.0) == pytest.approx(0.25 * -2.0 + 0.75 * 2.5)
    assert c.blend(-1.0) == pytest.approx(0.25 * -1.0 + 0.75 * 2.5)  # an occluded score, same weights
    assert c.text_score("the plot was dull", -2.0) == -2.0  # 4 words: its own score alone
    assert c.text_score("", None) is None  # no words: nothing to score
    assert c.text_score("great", 1.0) == pytest.approx(0.25 * 1.0 + 0.75 * -2.0)  # previous: "the plot was dull"
