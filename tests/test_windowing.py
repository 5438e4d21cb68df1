"""Window cutting, pure (no sockets): the clock grid, the frame trigger and the complete clock."""

from __future__ import annotations

import numpy as np
import pytest

from sentistream.engine.windowing import CompleteClock, FrameTrigger, WindowBuffer

FPS = 15.0


def test_clock_grid_yields_every_hop_once():
    buf = WindowBuffer(3.0, 0.25, 4, 2)
    assert buf.due_windows(0.6) == [0.25, 0.5]
    assert buf.due_windows(0.6) == []
    assert buf.due_windows(1.01) == [0.75, 1.0]


def test_frame_trigger_cuts_at_each_frame_and_holds_it():
    trig, buf = FrameTrigger(0.05), WindowBuffer(3.0, 0.05, 4, 2)
    ends = []
    for k in range(1, 31):
        t = k / FPS
        buf.add_vision(t, np.full(4, k, np.float32), True)
        t1 = trig.on_input("face_features", t)
        if t1 is not None:
            win = buf.cut(t1)
            assert win.vision[-1, 0] == k  # the frame that triggered the window is its newest
            ends.append(t1)
    assert ends == pytest.approx([k / FPS for k in range(1, 31)])


def test_frame_trigger_spaces_windows_by_min_hop():
    trig = FrameTrigger(0.05)
    ends = [t for k in range(1, 61) if (t := trig.on_input("face_features", k / 60.0)) is not None]
    assert len(ends) == 20  # 60 fps frames, a window at most every 50 ms: every third frame
    assert min(np.diff(ends)) >= 0.05 - 1e-9


def test_audio_does_not_trigger_while_the_face_is_live():
    trig = FrameTrigger(0.05)
    assert trig.on_input("face_features", 0.1) == 0.1
    assert trig.on_input("audio_features", 0.2) is None
    assert trig.on_input("face_features", 0.1667) == 0.1667


def test_audio_leads_when_the_face_stalls_or_ends_and_face_takes_back():
    trig = FrameTrigger(0.05, stall_s=0.5)
    trig.on_input("face_features", 1.0)
    assert trig.on_input("audio_features", 1.3) is None  # a face frame 0.3 s old: still live
    assert trig.on_input("audio_features", 1.6) == 1.6  # 0.6 s without a frame: audio leads
    assert trig.on_input("face_features", 1.62) is None  # too close to the last window
    assert trig.on_input("face_features", 1.7) == 1.7  # the face is back in the lead
    trig.end("face_features")
    assert trig.on_input("audio_features", 1.8) == 1.8


def test_words_lead_a_text_only_session_and_unknown_kinds_are_ignored():
    trig = FrameTrigger(0.05)
    assert trig.on_input("video_frame", 1.0) is None
    assert trig.on_input("words", 1.0) == 1.0
    assert trig.on_input("words", 1.01) is None


def test_closing_window_covers_data_after_the_last_window_only():
    trig = FrameTrigger(0.05)
    trig.on_input("face_features", 2.0)
    assert trig.closing(2.0) is None
    assert trig.closing(2.3) == 2.3


def test_complete_clock_waits_for_the_slowest_live_input():
    c = CompleteClock({"face", "audio_feat", "words"}, stall_s=2.0)
    assert c.clock(0.0, now=0.0) == (0.0, [])
    c.advance("face", 5.0, now=0.1)
    c.advance("audio_feat", 4.0, now=0.1)
    assert c.clock(5.0, now=0.1) == (0.0, [])  # no words yet
    c.advance("words", 3.0, now=0.2)
    assert c.clock(5.0, now=0.2) == (3.0, [])
    c.advance("words", 2.0, now=0.3)  # progress never goes back
    assert c.clock(5.0, now=0.3) == (3.0, [])
    # an ended input holds nothing up
    assert c.clock(5.0, now=0.4, ended={"words"}) == (4.0, [])
    assert c.clock(5.0, now=0.5, ended={"words", "face", "audio_feat"}) == (5.0, [])
    # a new pass (looped or restarted source): every input is live again
    assert c.clock(5.0, now=0.6) == (3.0, [])


def test_complete_clock_stops_waiting_for_a_silent_input_until_it_moves():
    c = CompleteClock({"audio_feat", "words"}, stall_s=2.0)
    c.advance("audio_feat", 6.0, now=10.0)
    c.advance("words", 1.5, now=10.0)
    assert c.clock(6.0, now=10.0) == (1.5, [])
    c.advance("words", 1.5, now=11.5)  # a decode that committed nothing: slow, not stalled
    assert c.clock(6.0, now=13.0) == (1.5, [])
    c.advance("audio_feat", 6.5, now=13.0)  # others speaking does not count for it
    assert c.clock(6.5, now=13.4) == (1.5, [])
    assert c.clock(6.5, now=13.6) == (6.5, ["words"])  # 2 s without a word from it: cut on the newest
    c.advance("words", 4.0, now=14.0)  # it moves again: waiting resumes (windows already cut stay cut)
    assert c.clock(6.5, now=14.0) == (4.0, [])
    assert c.clock(6.5, now=15.0) == (4.0, [])
    c.advance("words", 7.0, now=15.5)
    c.advance("audio_feat", 7.5, now=15.5)
    assert c.clock(7.5, now=15.5) == (7.0, [])
    assert c.clock(7.5, now=30.0, ended={"words"}) == (7.5, [])  # only audio_feat left, and it is the newest


def test_complete_clock_cuts_past_an_idle_input_but_waits_for_one_behind():
    c = CompleteClock({"audio_feat", "words"}, stall_s=2.0, behind_s=30.0)
    c.advance("audio_feat", 8.0, now=0.0)
    c.advance("words", 2.0, now=0.0)
    assert c.clock(8.0, now=0.0) == (2.0, [])
    # silent (starved of CPU, or paused): it heard no more than 2.0 s, the media is at 8 s
    assert c.clock(8.0, now=5.0) == (2.0, [])
    assert c.clock(8.0, now=29.0) == (2.0, [])
    assert c.clock(8.0, now=30.5) == (8.0, ["words"])  # silent past behind_s: dead, cut
    c.advance("words", 3.0, now=31.0)
    assert c.clock(8.0, now=31.0) == (3.0, [])
    # idle heartbeats: it decoded all it heard (7.5 s, caught up) and waits for the held audio
    c.advance("words", 3.0, now=31.5, idle_heard_s=7.5)
    c.advance("words", 3.0, now=32.5, idle_heard_s=7.5)
    assert c.clock(8.0, now=32.9) == (3.0, [])  # heartbeats do not count as moving ...
    assert c.clock(8.0, now=33.1) == (8.0, ["words"])  # ... so after stall_s the windows go on
    # an old heartbeat does not make it idle once more media came (it is behind again)
    c.advance("audio_feat", 12.0, now=33.2)
    assert c.clock(12.0, now=36.0) == (3.0, [])
