"""How a stream of events is scored against time-stamped labels (`sentistream bench stream`; the
demo clip's test). Pure functions over events (the JSON the engine emits) and segments.

* **Truth at an event**: the label of the segment being spoken at the window's end ``t1``, or of
  the last one that ended before it; events before the first segment starts have none (skipped).
  Closing events (``final``) re-score the last window and are skipped too.
* **Window figures**: MMSA's metrics (``acc2_non0``, ``f1_non0``, ``mae``, ``corr``, ...) of every
  scored event's ``score`` against its truth.
* **Flip lag**: for each segment whose label's sign differs from the previous segment's (both
  non-zero), the seconds from its end until the first event at or after its end whose sign
  matches it (0 when the stream already agrees as the segment ends); ``never`` counts those with
  no such event before the next segment ends (or the recording does).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .stream_data import Segment


def scored_events(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events that stand for a window (not a closing re-score), in window order."""
    return sorted((e for e in events if not e.get("final")), key=lambda e: e["window"]["t1"])


def truth_at(segments: Sequence[Segment], t: float) -> float | None:
    """The module docstring's rule; ``segments`` sorted by start."""
    i = bisect_right([s.start_s for s in segments], t) - 1
    return None if i < 0 else segments[i].label


def text_readout_score(event: dict[str, Any]) -> float:
    """The text readout alone on the score's scale, 0 where no words were read."""
    return 3.0 * float((event.get("readouts") or {}).get("text") or 0.0)


def window_pairs(
    events: Sequence[dict[str, Any]],
    segments: Sequence[Segment],
    value: Callable[[dict[str, Any]], float] = lambda e: float(e["score"]),
) -> tuple[np.ndarray, np.ndarray]:
    """(``value`` of the event, default its fused score; truth) of every scored event that has a truth."""
    pred, true = [], []
    for e in scored_events(events):
        label = truth_at(segments, float(e["window"]["t1"]))
        if label is not None:
            pred.append(value(e))
            true.append(label)
    return np.asarray(pred, float), np.asarray(true, float)


PHASES = ("early", "late", "after")


def phase_at(segments: Sequence[Segment], t: float) -> str | None:
    """Where ``t`` falls in the segment whose label is its truth: the first or the second half of
    it being spoken (``early`` / ``late``), or the pause after it ended (``after``): how much of
    the utterance a window could have heard."""
    i = bisect_right([s.start_s for s in segments], t) - 1
    if i < 0:
        return None
    seg = segments[i]
    if t >= seg.end_s:
        return "after"
    return "early" if t < (seg.start_s + seg.end_s) / 2 else "late"


def window_phases(events: Sequence[dict[str, Any]], segments: Sequence[Segment]) -> list[str]:
    """:func:`phase_at` of each event :func:`window_pairs` scores, in the same order."""
    out = []
    for e in scored_events(events):
        phase = phase_at(segments, float(e["window"]["t1"]))
        if phase is not None:
            out.append(phase)
    return out


def flip_lags(events: Sequence[dict[str, Any]], segments: Sequence[Segment]) -> tuple[list[float], int]:
    """(lags in seconds of the flips the stream followed, how many it never followed)."""
    evs = scored_events(events)
    times = [float(e["window"]["t1"]) for e in evs]
    lags, never = [], 0
    for k in range(1, len(segments)):
        prev, seg = segments[k - 1], segments[k]
        if prev.label == 0 or seg.label == 0 or (prev.label > 0) == (seg.label > 0):
            continue
        horizon = segments[k + 1].end_s if k + 1 < len(segments) else float("inf")
        want = seg.label > 0
        lag = None
        for i in range(bisect_right(times, seg.end_s - 1e-9), len(evs)):
            if times[i] > horizon:
                break
            if (float(evs[i]["score"]) > 0) == want:
                lag = max(0.0, times[i] - seg.end_s)
                break
        if lag is None:
            never += 1
        else:
            lags.append(lag)
    return lags, never


def lag_summary(lags: Sequence[float], never: int) -> dict[str, Any]:
    a = np.asarray(lags, float)
    return {
        "p50": round(float(np.percentile(a, 50)), 3) if a.size else None,
        "p90": round(float(np.percentile(a, 90)), 3) if a.size else None,
        "never": int(never),
        "flips": int(a.size + never),
    }


def segment_agreement(
    events: Sequence[dict[str, Any]], segments: Sequence[Segment], settle_s: float = 1.0, end_s: float | None = None
) -> list[tuple[int, int]]:
    """Per segment, (events that agree in sign, events) among those whose window ends between
    ``settle_s`` after it starts and the next segment's start (``end_s`` for the last): the demo
    clip's ground-truth rule."""
    evs = scored_events(events)
    out = []
    for k, seg in enumerate(segments):
        lo = seg.start_s + settle_s
        hi = segments[k + 1].start_s if k + 1 < len(segments) else (end_s if end_s is not None else float("inf"))
        sel = [e for e in evs if lo <= float(e["window"]["t1"]) < hi]
        ok = sum(1 for e in sel if (float(e["score"]) > 0) == (seg.label > 0))
        out.append((ok, len(sel)))
    return out


def carry_rescored(events: Sequence[dict[str, Any]], full_after_words: int) -> list[dict[str, Any]]:
    """The scored events re-fused from their own readouts with ``window.carry_words =
    full_after_words`` (models/late_fusion.py UtteranceCarry): what the engine would have emitted
    with that setting, since the carry changes only how the text score enters the fusion rule."""
    from ..models.late_fusion import UtteranceCarry, fuse

    carry, out = UtteranceCarry(full_after_words), []
    for e in scored_events(events):
        r = e.get("readouts") or {}
        text = None if r.get("text") is None else 3.0 * float(r["text"])
        score = fuse(carry.text_score(str(e.get("context") or ""), text), r.get("voice"), r.get("face")).score
        out.append({**e, "score": score})
    return out
