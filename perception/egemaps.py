"""Optional audio extractor: eGeMAPSv02 low-level descriptors from the `opensmile` package.

eGeMAPS (Eyben et al., IEEE TAC 2016) is the field's standard minimal acoustic parameter set: 25
frame-level descriptors every 10 ms (loudness, alpha ratio, Hammarberg index, spectral slopes and
flux, MFCC 1-4, F0 in semitones, jitter, shimmer, HNR, H1-H2, H1-A3, formants F1-F3 with
bandwidths and amplitudes). Select it with ``[audio_features] extractor = "egemaps"`` and install
it with ``pip install 'sentistream[opensmile]'``.

**Licence.** openSMILE is distributed by audEERING under a research licence: free for research,
teaching and personal use; commercial use needs a licence from audEERING. That is why it is never
the default (the default is ``perception.audio_features``, numpy/scipy only) and is imported only
when asked for. A model trained on these features (``extract`` then ``train``) is needed to use
them live: the shipped live model reads the default 59-d frames and refuses 25-d ones at start.

Streaming: openSMILE analyses whole signals, so chunks are gathered into blocks of ``BLOCK_S`` of
new audio; each block is analysed together with ``CONTEXT_S`` of the audio before it, and frames
within ``LOOKAHEAD_FRAMES`` of the block's end are held back until the next block (their windows,
up to 60 ms for pitch, and the 3-frame smoothing reach past the end). The frame grid is the
stream's (frame k starts at sample k * 160 after a reset), so chunked and whole-file extraction
give the same frames at the same times; their values agree closely but not bit for bit, since
each block restarts openSMILE's smoothing and pitch tracking (``tests/test_egemaps.py`` states the
tolerance).
"""

from __future__ import annotations

import numpy as np

from .audio_types import AudioFeatureFrames, AudioFeatureOptions, to_float_mono

EGEMAPS_DIM = 25
HOP_S = 0.01  # openSMILE's eGeMAPS frame step
FRAME_S = 0.02  # the frame length of most eGeMAPS descriptors (frame times are their centres)
BLOCK_S = 0.5
CONTEXT_S = 0.5
LOOKAHEAD_FRAMES = 8


def _import_opensmile():
    try:
        import opensmile
    except ImportError as exc:  # the optional extra
        raise ImportError(
            "audio_features.extractor = 'egemaps' needs the opensmile package "
            "(pip install 'sentistream[opensmile]'; research / personal-use licence, see "
            "perception/egemaps.py)"
        ) from exc
    return opensmile


def egemaps_feature_names() -> tuple[str, ...]:
    opensmile = _import_opensmile()
    smile = opensmile.Smile(
        feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.LowLevelDescriptors
    )
    return tuple(smile.feature_names)


class EgemapsExtractor:
    """Streaming eGeMAPSv02 LLDs with the interface of ``AudioFeatureExtractor``."""

    def __init__(self, options: AudioFeatureOptions | None = None) -> None:
        opensmile = _import_opensmile()
        self.options = options or AudioFeatureOptions()
        self.sr = int(self.options.sample_rate)
        self.smile = opensmile.Smile(
            feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.LowLevelDescriptors
        )
        self.dim = EGEMAPS_DIM
        self.hop = int(round(HOP_S * self.sr))
        self.block = int(round(BLOCK_S * self.sr))
        self.context = int(round(CONTEXT_S / HOP_S)) * self.hop  # a whole number of frames
        self.nonfinite_total = 0
        self.reset()

    def reset(self) -> None:
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0  # stream sample index of _buf[0]
        self._next = 0  # index of the next frame to emit
        self._fed = 0
        self._clock: tuple[float, int] | None = None  # (t0_s, stream index) of the latest chunk

    def process(self, samples: np.ndarray, t0_s: float) -> AudioFeatureFrames:
        try:
            x = to_float_mono(samples).astype(np.float32)
        except (TypeError, ValueError):
            x = np.zeros(0, np.float32)
        bad = ~np.isfinite(x)
        n_bad = int(bad.sum())
        if n_bad:
            x = np.where(bad, 0.0, x).astype(np.float32)
            self.nonfinite_total += n_bad
        if x.size or self._clock is None:
            self._clock = (float(t0_s), self._fed)
        self._fed += x.size
        self._buf = np.concatenate([self._buf, np.clip(x, -1.0, 1.0)])
        ready = self._fed - self._next * self.hop >= self.block + LOOKAHEAD_FRAMES * self.hop
        out = self._run(final=False) if ready else self._empty()
        out.n_nonfinite = n_bad
        return out

    def flush(self) -> AudioFeatureFrames:
        out = self._run(final=True) if self._fed else self._empty()
        self.reset()
        return out

    def _empty(self) -> AudioFeatureFrames:
        return AudioFeatureFrames(np.zeros((0, self.dim), np.float32), np.zeros(0, np.float64))

    def _run(self, final: bool) -> AudioFeatureFrames:
        seg_start = max(self._buf_start, self._next * self.hop - self.context)
        seg = self._buf[seg_start - self._buf_start :]
        if seg.size < self.hop:
            return self._empty()
        values = self.smile.process_signal(seg, self.sr).to_numpy(dtype=np.float32)
        first = seg_start // self.hop  # seg_start is on the frame grid
        frames = first + np.arange(len(values))
        usable = len(values) if final else max(0, len(values) - LOOKAHEAD_FRAMES)
        keep = (frames >= self._next) & (np.arange(len(values)) < usable)
        values, frames = values[keep], frames[keep]
        values[~np.isfinite(values)] = 0.0
        if len(frames):
            self._next = int(frames[-1]) + 1
        cut = max(self._buf_start, self._next * self.hop - self.context)
        self._buf = self._buf[cut - self._buf_start :]
        self._buf_start = cut
        t0, idx0 = self._clock if self._clock is not None else (0.0, 0)
        times = t0 + (frames * self.hop + FRAME_S * self.sr / 2.0 - idx0) / self.sr
        return AudioFeatureFrames(values.astype(np.float32), times.astype(np.float64))
