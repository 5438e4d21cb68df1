"""Word error rate of a transcript against its reference, on normalised words (lower case,
contractions and small numbers written out, punctuation dropped). Used by the ASR benchmark and
by the live trainer's ASR-augmentation report."""

from __future__ import annotations

import re

CONTRACTIONS = {
    "n't": " not",
    "'re": " are",
    "'m": " am",
    "'ll": " will",
    "'ve": " have",
    "'d": " would",
    "'s": " is",
}
NUMBER_WORDS = {
    "0": "zero",
    "1": "one",
    "2": "two",
    "3": "three",
    "4": "four",
    "5": "five",
    "6": "six",
    "7": "seven",
    "8": "eight",
    "9": "nine",
    "10": "ten",
}


def normalise(text: str) -> list[str]:
    """Lower case, contractions expanded (both sides), punctuation dropped."""
    text = text.lower().replace("’", "'")
    text = re.sub(r"\bcan't\b", "can not", text)
    text = re.sub(r"\bwon't\b", "will not", text)
    for short, full in CONTRACTIONS.items():
        text = text.replace(short, full)
    words = re.sub(r"[^a-z0-9' ]+", " ", text).replace("'", "").split()
    return [NUMBER_WORDS.get(w, w) for w in words]


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(refs: list[str], hyps: list[str]) -> float:
    errors = sum(edit_distance(normalise(r), normalise(h)) for r, h in zip(refs, hyps))
    total = sum(len(normalise(r)) for r in refs)
    return errors / max(total, 1)
