"""What every audio feature extractor shares (the builtin one in ``audio_features`` and the optional
eGeMAPS one in ``egemaps``): its options, its output frames and the sample conversion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass
class AudioFeatureOptions:
    sample_rate: int = 16000
    frame_ms: float = 25.0
    hop_ms: float = 10.0
    n_mels: int = 40
    n_mfcc: int = 13
    fmin: float = 50.0
    fmax: float = 8000.0  # clipped to the Nyquist frequency
    f0_min: float = 60.0
    f0_max: float = 400.0
    yin_threshold: float = 0.2  # CMND dip below this = voiced (0.1-0.2 in the YIN paper; speech wants the loose end)
    silence_db: float = -60.0  # frames with RMS below this (dBFS) are unvoiced whatever YIN says
    # "builtin" (this module, the default) or "egemaps": eGeMAPSv02 LLDs from the optional
    # opensmile package (research / personal-use licence: perception/egemaps.py). The other
    # options above apply to "builtin" only.
    extractor: Literal["builtin", "egemaps"] = "builtin"


@dataclass
class AudioFeatureFrames:
    features: np.ndarray  # float32 (T, D), columns as in feature_names()
    times_s: np.ndarray  # float64 (T,), centre time of each frame on the caller's clock
    n_nonfinite: int = 0  # NaN/Inf input samples replaced by 0 in this call


def to_float_mono(samples: object) -> np.ndarray:
    """Any sample array -> float64 mono on a [-1, 1] full scale.

    Integer PCM is scaled by its full range (int16 / 32768, uint8 centred on 128);
    2-D input is averaged over channels: (samples, channels), or (channels, samples)
    when the first axis is short (<= 8) and the second long.
    """
    a = np.asarray(samples)
    if a.dtype == np.bool_:
        a = a.astype(np.float64)
    elif np.issubdtype(a.dtype, np.signedinteger):
        a = a.astype(np.float64) / float(-np.iinfo(a.dtype).min)
    elif np.issubdtype(a.dtype, np.unsignedinteger):
        mid = float(np.iinfo(a.dtype).max // 2 + 1)
        a = (a.astype(np.float64) - mid) / mid
    else:
        a = a.astype(np.float64, copy=False)  # strings / objects raise here and become an empty chunk
    if a.ndim == 2:
        a = a.mean(axis=0 if a.shape[0] <= 8 < a.shape[1] else 1)
    return a.reshape(-1)
