"""Typed payloads of the engine's messages: what a stage puts in ``Message.meta`` and what the
next one reads back. One type per kind; the wire format (JSON meta) is unchanged:
``to_meta()`` writes exactly the keys the engine always sent, ``from_meta()`` reads them back and
drops what is malformed instead of raising (a bad word never ends a stage).

* ``words`` (asr -> fusion): :class:`WordsPayload` of :class:`Word`.
* ``face_features`` (face -> fusion): :class:`FacePayload` (the feature vector is the array).
* ``voice_affect`` (asr -> fusion): :class:`VoicePayload`, the voice's valence over a stretch.

This module imports nothing of the package: perception, the bus and the client share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Word:
    """One recognised word; times in seconds on the stream's media clock."""

    text: str
    start_s: float
    end_s: float
    probability: float = 1.0

    def to_meta(self) -> dict[str, Any]:
        return {"text": self.text, "start_s": self.start_s, "end_s": self.end_s, "probability": self.probability}

    @classmethod
    def from_meta(cls, d: Any) -> Word | None:
        """The word ``d`` describes, or None when it is malformed (missing key, not a number)."""
        try:
            word = cls(str(d["text"]), float(d["start_s"]), float(d["end_s"]), float(d.get("probability", 1.0)))
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        if not (math.isfinite(word.start_s) and math.isfinite(word.end_s)):
            return None
        return word


def words_from_meta(items: Any) -> list[Word]:
    """The well-formed words of a meta list (anything else is skipped)."""
    if not isinstance(items, list):
        return []
    return [w for w in (Word.from_meta(d) for d in items) if w is not None]


@dataclass
class WordsPayload:
    """``words`` message: what the recogniser committed (final) and its current partial guess."""

    committed: list[Word] = field(default_factory=list)
    partial: list[Word] = field(default_factory=list)
    utterance_end: bool = False
    final_through_s: float = 0.0  # no word will be committed before this stream time any more
    decode_ms: float = 0.0
    # A heartbeat of an idle recogniser: it has decoded all the audio it heard (through
    # heard_through_s) and waits for more; the words are unchanged (keep the partial shown).
    idle: bool = False
    heard_through_s: float = 0.0  # stream time of the end of the audio the recogniser has received

    def to_meta(self) -> dict[str, Any]:
        return {
            "committed": [w.to_meta() for w in self.committed],
            "partial": [w.to_meta() for w in self.partial],
            "utterance_end": bool(self.utterance_end),
            "final_through_s": float(self.final_through_s),
            "decode_ms": float(self.decode_ms),
            "idle": bool(self.idle),
            "heard_through_s": float(self.heard_through_s),
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any], default_through_s: float = 0.0) -> WordsPayload:
        through = meta.get("final_through_s", default_through_s)
        if not isinstance(through, (int, float)) or isinstance(through, bool) or not math.isfinite(through):
            through = default_through_s
        decode_ms = meta.get("decode_ms", 0.0)
        heard = meta.get("heard_through_s", 0.0)
        if not isinstance(heard, (int, float)) or isinstance(heard, bool) or not math.isfinite(heard):
            heard = 0.0
        return cls(
            committed=words_from_meta(meta.get("committed", [])),
            partial=words_from_meta(meta.get("partial", [])),
            utterance_end=bool(meta.get("utterance_end", False)),
            final_through_s=float(through),
            decode_ms=float(decode_ms) if isinstance(decode_ms, (int, float)) else 0.0,
            idle=meta.get("idle") is True,
            heard_through_s=float(heard),
        )


def _unit_or_none(value: Any) -> float | None:
    """A finite number clipped to [-1, 1], or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return max(-1.0, min(1.0, float(value)))


@dataclass
class FacePayload:
    """``face_features`` message meta: was a face found (if not, why), and its expression:
    7 class probabilities (perception.expression.EXPRESSIONS order) and a valence in [-1, 1]
    (None when the expression model is off)."""

    present: bool = False
    reason: str = ""
    valence: float | None = None
    expression: list[float] | None = None

    def to_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"present": bool(self.present), "reason": self.reason}
        if self.valence is not None:
            meta["valence"] = float(self.valence)
        if self.expression is not None:
            meta["expression"] = [float(p) for p in self.expression]
        return meta

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> FacePayload:
        reason = meta.get("reason", "")
        present = meta.get("present") is True
        expression = meta.get("expression")
        if not (
            isinstance(expression, list)
            and len(expression) == 7
            and all(_unit_or_none(p) is not None for p in expression)
        ):
            expression = None
        return cls(
            present=present,
            reason=reason if isinstance(reason, str) else str(reason),
            valence=_unit_or_none(meta.get("valence")) if present else None,
            expression=[float(p) for p in expression] if expression is not None and present else None,
        )


@dataclass
class VoicePayload:
    """``voice_affect`` message meta: the voice's valence in [-1, 1] over stream times [t0_s, t1_s];
    the message time says how far the voice has been read (``valence`` null: no speech there)."""

    t0_s: float
    t1_s: float
    valence: float

    def to_meta(self) -> dict[str, Any]:
        return {"t0_s": float(self.t0_s), "t1_s": float(self.t1_s), "valence": float(self.valence)}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> VoicePayload | None:
        """None when malformed (missing or non-finite times) or without a valence (silence)."""
        valence = _unit_or_none(meta.get("valence"))
        try:
            t0, t1 = float(meta["t0_s"]), float(meta["t1_s"])
        except (KeyError, TypeError, ValueError):
            return None
        if valence is None or not (math.isfinite(t0) and math.isfinite(t1)) or t1 < t0:
            return None
        return cls(t0, t1, valence)
