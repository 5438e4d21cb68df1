"""How the three readouts make one score: the text model's score, the voice's valence and the
face's valence (docs/protocol.md, "Fusion rule").

Each branch is trained on its own real labeled data (text: the live ALMT on CMU-MOSI; voice:
RAVDESS, perception/voice.py; face: FER2013, perception/expression.py). No data pairs the three
(MOSI's audio and video are not here), so they are joined by a fixed, documented rule instead of a
learned one:

* ``av`` = the mean of the voice and face valences that are present (each in [-1, 1]).
* words in the window: ``with_text = s_text + NUDGE * 3 * av * (1 - |s_text| / 3)``: strong words
  dominate; voice and face move a weak or neutral text score up to NUDGE * 3 points.
* no words: ``without_text = NO_TEXT_GAIN * 3 * av``: the voice and the face carry the stream alone.
* ``text_strength`` ``g`` in [0, 1], how much the words carry sentiment at all:
  ``score = g * with_text + (1 - g) * without_text``. The engine passes 1 (no gate ships: a linear
  probe on the MiniLM embedding told neutral from opinionated sentences with an AUC of only
  0.65-0.73 on SST-5 / MOSI valid), so the text model's score always counts in full.

The score is the sum of one term per modality, so what an event says each modality changed
(``FusedScore.terms``) is exactly what it added.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

NUDGE = 0.5
NO_TEXT_GAIN = 0.8
SCORE_RANGE = 3.0


@dataclass(frozen=True)
class FusedScore:
    score: float
    terms: dict[str, float]  # text / audio (voice) / vision (face): what each added; they sum to score

    def weights(self) -> dict[str, float]:
        """|term| shares (sum 1): the event's ``contributions`` when attributions are off."""
        return attribution_shares(self.terms)


def fuse(text_score: float | None, voice: float | None, face: float | None, text_strength: float = 1.0) -> FusedScore:
    """``text_score`` in [-3, 3] (None: no words in the window), ``voice`` / ``face`` valences in
    [-1, 1] (None: absent), ``text_strength`` in [0, 1] (the gate)."""
    present = [(k, v) for k, v in (("audio", voice), ("vision", face)) if v is not None]
    share = {k: v / len(present) for k, v in present}  # each one's part of av
    if text_score is not None:
        g = min(1.0, max(0.0, float(text_strength)))
        nudge = NUDGE * SCORE_RANGE * (1.0 - min(abs(text_score), SCORE_RANGE) / SCORE_RANGE)
        gain = g * nudge + (1.0 - g) * NO_TEXT_GAIN * SCORE_RANGE
        terms = {"text": g * float(text_score)}
    else:
        gain = NO_TEXT_GAIN * SCORE_RANGE
        terms = {"text": 0.0}
    terms["audio"] = gain * share.get("audio", 0.0)
    terms["vision"] = gain * share.get("vision", 0.0)
    score = max(-SCORE_RANGE, min(SCORE_RANGE, sum(terms.values())))
    return FusedScore(score, terms)


class UtteranceCarry:
    """The text score of a window early in an utterance leans on the previous utterance's
    (docs/protocol.md, "Text context"): a window that has heard only the first words of an
    utterance reads little, while a speaker's next utterance usually keeps the sign of the last.

    ``score = w * s_now + (1 - w) * s_previous`` with ``w = min(1, words heard / full_after_words)``;
    ``s_previous`` is the score of the previous utterance, whole (the last score its context got).
    ``full_after_words = 0``: off (the score of the words heard alone). One per session."""

    def __init__(self, full_after_words: int):
        self.full_after_words = max(0, int(full_after_words))
        self._context = ""
        self._score: float | None = None  # the current utterance's newest score
        self._previous: float | None = None  # the previous utterance's last score
        self._weight = 1.0  # of the words heard, at the last text_score call

    def text_score(self, context: str, score: float | None) -> float | None:
        """The window's text score from its context (the newest utterance's words) and the model's
        score of that context (None: no words)."""
        context = context.strip()
        if context and self._context and not (context.startswith(self._context) or self._context.startswith(context)):
            self._previous = self._score  # a new utterance began
        if context and score is not None:
            self._context, self._score = context, float(score)
        self._weight = 1.0
        if score is None or self.full_after_words <= 0 or self._previous is None:
            return score
        self._weight = min(1.0, len(context.split()) / self.full_after_words)
        return self.blend(float(score))

    def blend(self, score: float) -> float:
        """Another score of the same window (an occluded one) with the weights of the last
        ``text_score`` call."""
        if self._weight >= 1.0 or self._previous is None:
            return score
        return self._weight * score + (1.0 - self._weight) * self._previous


def occlusion_attributions(
    text_score: float | None,
    voice: float | None,
    face: float | None,
    occluded: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """What each modality changed (docs/protocol.md, "Attributions"): the fused score with every
    present modality minus the fused score with that one masked, in score points (-6 .. 6).

    ``text_score`` is the fusion model's score of the whole window (None: no words);
    ``occluded["audio" / "vision"]`` its score with that input masked (models/live.py; default:
    ``text_score``, a model that does not read it). Masking audio drops the voice readout *and* the
    model's audio input, masking vision the face readout and its vision input, masking text the
    model's score. An absent modality, or one that changed nothing, gets exactly 0."""
    occ = occluded or {}
    full = fuse(text_score, voice, face).score

    def model_without(modality: str) -> float | None:
        return None if text_score is None else occ.get(modality, text_score)

    masked = {
        "text": fuse(None, voice, face).score,
        "audio": fuse(model_without("audio"), None, face).score,
        "vision": fuse(model_without("vision"), voice, None).score,
    }
    return {m: full - s for m, s in masked.items()}


def attribution_shares(attributions: Mapping[str, float]) -> dict[str, float]:
    """|value| shares (sum 1) of per-modality attributions or terms: the event's ``contributions``;
    all on text when nothing moved."""
    total = sum(abs(v) for v in attributions.values())
    if total <= 1e-9:
        return {"text": 1.0, "audio": 0.0, "vision": 0.0}
    return {k: abs(v) / total for k, v in attributions.items()}


#: Weight of each modality's presence in the confidence (text, audio / voice, vision / face).
COVERAGE = (0.6, 0.2, 0.2)


def sentiment_label(score: float, neutral_band: float) -> str:
    """negative / neutral / positive: neutral when |score| < neutral_band."""
    if score >= neutral_band:
        return "positive"
    if score <= -neutral_band:
        return "negative"
    return "neutral"


def confidence(score: float, present: tuple[bool, bool, bool], placeholder: bool = False) -> float:
    """Distance from the neutral boundary, discounted by the modalities missing (``present`` =
    text, audio, vision): a heuristic (README), zero for an untrained placeholder model."""
    if placeholder:
        return 0.0
    coverage = sum(w for w, on in zip(COVERAGE, present) if on)
    return float(math.tanh(abs(score)) * coverage)
