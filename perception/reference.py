"""Known transcripts in place of speech recognition (``asr.reference_words``): the true words at
their own times, committed as the audio passes them, so a stream can be scored without ASR errors
(`sentistream bench stream`, variant ``reference``).

:class:`ReferenceRecognizer` has the recogniser's interface (``add_audio`` / ``step`` / ``finish``),
so the ASR stage runs it unchanged."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from ..payloads import Word, words_from_meta
from .asr import SAMPLE_RATE, AsrUpdate


def load_reference_words(path: str | Path) -> list[Word]:
    """The words of a JSON list of ``{"text", "start_s", "end_s"}`` (in time order after sorting);
    a file that is not such a list is a ValueError naming it."""
    try:
        items = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"asr.reference_words {path}: {exc}") from None
    words = words_from_meta(items)
    if not isinstance(items, list) or len(words) != len(items):
        raise ValueError(f"asr.reference_words {path}: need a JSON list of {{text, start_s, end_s}} objects")
    return sorted(words, key=lambda w: (w.start_s, w.end_s))


class ReferenceRecognizer:
    """Commits each reference word once the audio heard reaches its end (fed from the ASR stage's
    loop, stepped from its decode thread); an utterance ends where a pause of ``pause_s`` follows."""

    def __init__(self, words: list[Word], pause_s: float = 0.35) -> None:
        self.words = words
        self.pause_s = pause_s
        self._next = 0
        self._audio_end = 0.0
        self._reported = 0.0
        self._lock = threading.Lock()

    def add_audio(self, samples: np.ndarray, t0_s: float) -> None:
        with self._lock:
            self._audio_end = max(self._audio_end, t0_s + np.asarray(samples).size / SAMPLE_RATE)

    def _take(self, through: float) -> AsrUpdate:
        start = self._next
        while self._next < len(self.words) and self.words[self._next].end_s <= through:
            self._next += 1
        committed = self.words[start : self._next]
        nxt = self.words[self._next] if self._next < len(self.words) else None
        ended = bool(committed) and (nxt is None or nxt.start_s - committed[-1].end_s >= self.pause_s)
        # No word will be committed before the next one's start (or the audio's end).
        final = through if nxt is None else min(through, nxt.start_s)
        self._reported = through
        return AsrUpdate(
            committed=list(committed),
            utterance_end=ended,
            decoded=True,
            audio_end_s=through,
            final_through_s=final,
        )

    def step(self) -> AsrUpdate:
        with self._lock:
            if self._audio_end <= self._reported + 1e-9:
                return AsrUpdate()  # nothing new heard: the stage's loop waits a little
            return self._take(self._audio_end)

    def finish(self) -> AsrUpdate:
        with self._lock:
            last = self.words[-1].end_s if self.words else 0.0
            return self._take(max(self._audio_end, last))
