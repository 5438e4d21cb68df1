"""Sliding windows over time-stamped modality streams (pure, no sockets).

The fusion stage and offline tools use this same code, so a model sees the
same window contents live and offline.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..payloads import Word

#: How a window's text context is chosen (``window.text_context``): ``"utterance"`` = the newest
#: utterance alone (the default: docs/protocol.md, "Text context"), ``"lookback"`` = every
#: committed word of the last ``text_lookback_s``, run together.
TEXT_CONTEXTS = ("utterance", "lookback")
SENTENCE_END = (".", "!", "?")
MAX_CONTEXT_WORDS = 400  # words split into utterances per window: bounds the cost of a cut


def split_utterances(
    words: list[Word], pause_s: float, ends: frozenset[float] | set[float] = frozenset()
) -> list[list[Word]]:
    """Committed words (in time order) cut into utterances: after a word that ends a sentence
    (``. ! ?``), before a pause of at least ``pause_s``, and after a word whose end time is in
    ``ends`` (the recogniser's utterance ends: its VAD heard the speech stop)."""
    out: list[list[Word]] = []
    current: list[Word] = []
    for i, w in enumerate(words):
        current.append(w)
        nxt = words[i + 1] if i + 1 < len(words) else None
        if nxt is None:
            break
        if w.text.rstrip().endswith(SENTENCE_END) or nxt.start_s - w.end_s >= pause_s or round(w.end_s, 6) in ends:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


@dataclass
class Window:
    t0: float
    t1: float
    vision: np.ndarray  # [Tv, Dv] face features of frames inside the window
    vision_present: np.ndarray  # [Tv] bool: a face was found in that frame
    audio: np.ndarray  # [Ta, Da] audio feature frames inside the window
    words: list[Word] = field(default_factory=list)  # committed words overlapping it
    partial: list[Word] = field(default_factory=list)  # not yet committed
    # Committed words the model reads: speech is committed a second or more after it
    # is spoken, so text looks further back than audio and video (text_lookback_s), and with
    # text_context "utterance" it is the newest utterance begun by t1 (split_utterances).
    context: list[Word] = field(default_factory=list)

    @property
    def transcript(self) -> str:
        return " ".join(w.text.strip() for w in self.words).strip()

    @property
    def context_text(self) -> str:
        return " ".join(w.text.strip() for w in self.context).strip()


class WindowBuffer:
    """Keeps the recent past of each modality and cuts windows [t1 - length, t1]."""

    def __init__(
        self,
        length_s: float,
        hop_s: float,
        vision_dim: int,
        audio_dim: int,
        keep_words_s: float = 120.0,
        text_lookback_s: float | None = None,
        text_context: str = "lookback",
        utterance_pause_s: float = 0.35,
    ):
        if text_context not in TEXT_CONTEXTS:
            raise ValueError(f"text_context must be one of {TEXT_CONTEXTS}, not {text_context!r}")
        self.text_context = text_context
        self.utterance_pause_s = utterance_pause_s
        self._utterance_ends: set[float] = set()  # end times of words the recogniser closed an utterance with
        self.length_s = length_s
        self.text_lookback_s = max(length_s, text_lookback_s or length_s)
        self.hop_s = hop_s
        self.vision_dim = vision_dim
        self.audio_dim = audio_dim
        self.keep_words_s = keep_words_s
        self._vision: deque[tuple[float, np.ndarray, bool]] = deque()
        self._audio_t: deque[np.ndarray] = deque()
        self._audio_x: deque[np.ndarray] = deque()
        self.words: list[Word] = []
        self.partial: list[Word] = []
        self.next_t1 = hop_s

    def add_vision(self, t: float, features: np.ndarray, present: bool) -> None:
        if features.shape != (self.vision_dim,) or not np.all(np.isfinite(features)):
            features = np.zeros(self.vision_dim, dtype=np.float32)
            present = False
        self._vision.append((t, features.astype(np.float32, copy=False), present))

    def add_audio(self, times: np.ndarray, frames: np.ndarray) -> None:
        if frames.ndim != 2 or frames.shape[1] != self.audio_dim or times.shape[0] != frames.shape[0]:
            raise ValueError(f"audio frames must be [T, {self.audio_dim}] with T times")
        frames = np.nan_to_num(frames.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
        self._audio_t.append(times.astype(np.float64, copy=False))
        self._audio_x.append(frames)

    def add_words(self, committed: list[Word], partial: list[Word], utterance_end: bool = False) -> None:
        self.words.extend(committed)
        self.partial = list(partial)
        if utterance_end and self.words:
            self._utterance_ends.add(round(self.words[-1].end_s, 6))

    def _context(self, t1: float) -> list[Word]:
        # Only words begun by the window's end: a fast replay may have committed later ones.
        begun = [w for w in self.words if w.start_s <= t1]
        if self.text_context == "lookback":
            ctx0 = t1 - self.text_lookback_s
            return [w for w in begun if w.end_s > ctx0]
        # The newest utterance, whole (the model was trained on single utterances), while it
        # ended less than text_lookback_s ago (then silence: the voice and face carry the stream).
        utterances = split_utterances(begun[-MAX_CONTEXT_WORDS:], self.utterance_pause_s, self._utterance_ends)
        if not utterances or utterances[-1][-1].end_s <= t1 - self.text_lookback_s:
            return []
        return utterances[-1]

    def cut(self, t1: float) -> Window:
        t0 = max(0.0, t1 - self.length_s)
        vis = [(f, p) for (t, f, p) in self._vision if t0 < t <= t1 or (t0 == 0.0 and t == 0.0)]
        vision = np.stack([f for f, _ in vis]) if vis else np.zeros((0, self.vision_dim), np.float32)
        present = np.array([p for _, p in vis], dtype=bool)
        if self._audio_t:
            times = np.concatenate(list(self._audio_t))
            frames = np.concatenate(list(self._audio_x))
            sel = (times > t0) & (times <= t1)
            audio = frames[sel]
        else:
            audio = np.zeros((0, self.audio_dim), np.float32)
        words = [w for w in self.words if w.end_s > t0 and w.start_s <= t1]
        partial = [w for w in self.partial if w.end_s > t0 and w.start_s <= t1]
        return Window(t0, t1, vision, present, audio, words, partial, self._context(t1))

    def prune(self, before: float) -> None:
        """Forget data that no future window can contain."""
        while self._vision and self._vision[0][0] <= before:
            self._vision.popleft()
        while self._audio_t and self._audio_t[0].size and self._audio_t[0][-1] <= before:
            self._audio_t.popleft()
            self._audio_x.popleft()
        horizon = before - self.keep_words_s
        if self.words and self.words[0].end_s < horizon:
            self.words = [w for w in self.words if w.end_s >= horizon]
            self._utterance_ends = {t for t in self._utterance_ends if t >= horizon}

    def due_windows(self, clock: float) -> list[float]:
        """Window ends that the stream clock has passed: one per hop, none skipped."""
        ends = []
        while self.next_t1 <= clock + 1e-9:
            ends.append(round(self.next_t1, 6))
            self.next_t1 += self.hop_s
        return ends


class FrameTrigger:
    """When to cut windows in ``trigger = "frame"`` mode: at the media time of a lead input's
    message, as soon as it reaches the fusion stage, at most one window per ``min_hop_s``.

    The clock mode cuts windows on a fixed grid of stream time, so a frame waits for the next
    grid point (half a hop on average) and for some input to pass it. Here the window ends *at*
    the newest face frame, which is therefore always inside it: frame -> event is just the
    face stage plus fusion. Audio is taken up to that time as far as it has arrived (a chunk
    still in flight lands in the next window, which overlaps this one by length - hop).

    The lead is the face stream while it is live; when it has ended or has sent nothing for
    ``stall_s`` of stream time (camera lost, no video source) the audio features lead, then
    the words, so a session without a camera still gets events.
    """

    ORDER = ("face_features", "audio_features", "words")

    def __init__(self, min_hop_s: float, stall_s: float = 0.5):
        self.min_hop_s = min_hop_s
        self.stall_s = max(stall_s, 2 * min_hop_s)
        self.last_t: dict[str, float] = {}  # newest media time per input kind
        self.ended: set[str] = set()
        self.last_t1 = -float("inf")

    def lead(self) -> str | None:
        clock = max(self.last_t.values(), default=0.0)
        for kind in self.ORDER:
            t = self.last_t.get(kind)
            if t is not None and kind not in self.ended and t >= clock - self.stall_s:
                return kind
        return None

    def on_input(self, kind: str, t: float) -> float | None:
        """Record a message; the window end to cut now, or None."""
        if kind not in self.ORDER:
            return None
        self.last_t[kind] = max(t, self.last_t.get(kind, t))
        if kind != self.lead() or t < self.last_t1 + self.min_hop_s - 1e-9:
            return None
        self.last_t1 = t
        return t

    def end(self, kind: str) -> None:
        self.ended.add(kind)

    def closing(self, clock: float) -> float | None:
        """At end of stream: one last window over data newer than the last window, if any."""
        if clock > self.last_t1 + 1e-6:
            self.last_t1 = clock
            return clock
        return None


class CompleteClock:
    """How far a fast replay may cut windows (fusion's ``complete_windows``): up to the slowest
    live input's progress, i.e. the media time before which it has delivered everything it
    will (for the words: the recogniser's ``final_through_s``).

    When the slowest input has sent nothing for ``stall_s`` wall seconds, windows stop waiting
    for it only if it is *idle*: it has caught up with the newest media (its progress, or for the
    words the ``heard_through_s`` of the recogniser's idle heartbeat, is within ``CAUGHT_UP_S``
    of it), i.e. it needs audio the source is holding back. One that is merely behind (a
    recogniser starved of CPU, or paused) is waited for, up to ``behind_s`` of silence (it is
    dead: the supervisor restarts it meanwhile). ``clock`` then returns the newest time and the
    names of the stalled inputs.
    """

    CAUGHT_UP_S = 1.0  # an input this close to the newest media has heard all there is

    def __init__(self, inputs: set[str] | list[str], stall_s: float, behind_s: float | None = None):
        self.inputs = set(inputs)
        self.stall_s = stall_s
        self.behind_s = max(stall_s, behind_s if behind_s is not None else stall_s)
        self.progress: dict[str, float] = {}
        self.idle_heard: dict[str, float] = {}  # an idle heartbeat's heard-through time, per input
        self._slowest = 0.0  # the slowest input's progress at the last clock()
        self._heard: float | None = None  # wall time the slowest input last moved or spoke

    def advance(self, stream: str, t: float, now: float, idle_heard_s: float | None = None) -> None:
        """stream has delivered everything up to media time t (a message arrived at wall time now).
        ``idle_heard_s``: the message is an idle heartbeat (the sender has decoded all it heard,
        up to that media time, and is waiting for more): it says nothing about being busy."""
        if idle_heard_s is not None:
            self.idle_heard[stream] = float(idle_heard_s)
        else:
            self.idle_heard.pop(stream, None)
            if self.progress.get(stream, 0.0) <= self._slowest + 1e-9:
                self._heard = now  # the input being waited for is alive, even if it did not move
        self.progress[stream] = max(self.progress.get(stream, 0.0), float(t))

    @property
    def slowest(self) -> float:
        return self._slowest

    def silent_s(self, now: float) -> float:
        """Wall seconds since the slowest input last moved or spoke."""
        return 0.0 if self._heard is None else now - self._heard

    def _idle(self, stream: str, newest: float) -> bool:
        heard = max(self.progress.get(stream, 0.0), self.idle_heard.get(stream, -math.inf))
        return heard >= newest - self.CAUGHT_UP_S

    def clock(
        self, newest: float, now: float, ended: set[str] | frozenset[str] = frozenset()
    ) -> tuple[float, list[str]]:
        """(how far windows may be cut, the inputs that stalled: [] while none has); an input in
        ``ended`` has sent its end of stream and holds nothing up."""
        waiting = {s: self.progress.get(s, 0.0) for s in self.inputs if s not in ended}
        slowest = min(waiting.values(), default=newest)
        if self._heard is None or slowest > self._slowest + 1e-9 or slowest >= newest:
            self._slowest, self._heard = slowest, now
            return min(slowest, newest), []
        silent = now - self._heard
        stalled = sorted(s for s, t in waiting.items() if t <= slowest)
        if silent > self.behind_s or (silent > self.stall_s and all(self._idle(s, newest) for s in stalled)):
            return newest, stalled
        return slowest, []
