"""Typed payloads of the engine's messages: what a stage puts in ``Message.meta`` and what the
next one reads back. One type per kind; the wire format (JSON meta) is unchanged:
``to_meta()`` writes exactly the keys the engine always sent, ``from_meta()`` reads them back and
drops what is malformed instead of raising (a bad word never ends a stage).

* ``words`` (asr -> fusion): :class:`WordsPayload` of :class:`Word`.
* ``face_features`` (face -> fusion): :class:`FacePayload` (the feature vector is the array).

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

    def to_meta(self) -> dict[str, Any]:
        return {
            "committed": [w.to_meta() for w in self.committed],
            "partial": [w.to_meta() for w in self.partial],
            "utterance_end": bool(self.utterance_end),
            "final_through_s": float(self.final_through_s),
            "decode_ms": float(self.decode_ms),
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any], default_through_s: float = 0.0) -> WordsPayload:
        through = meta.get("final_through_s", default_through_s)
        if not isinstance(through, (int, float)) or isinstance(through, bool) or not math.isfinite(through):
            through = default_through_s
        decode_ms = meta.get("decode_ms", 0.0)
        return cls(
            committed=words_from_meta(meta.get("committed", [])),
            partial=words_from_meta(meta.get("partial", [])),
            utterance_end=bool(meta.get("utterance_end", False)),
            final_through_s=float(through),
            decode_ms=float(decode_ms) if isinstance(decode_ms, (int, float)) else 0.0,
        )


@dataclass
class FacePayload:
    """``face_features`` message meta: was a face found, and if not, why."""

    present: bool = False
    reason: str = ""

    def to_meta(self) -> dict[str, Any]:
        return {"present": bool(self.present), "reason": self.reason}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> FacePayload:
        reason = meta.get("reason", "")
        return cls(present=meta.get("present") is True, reason=reason if isinstance(reason, str) else str(reason))
