"""Streaming audio features on synthetic signals and real synthesised speech."""

from __future__ import annotations

import shutil
import subprocess
from math import gcd
from pathlib import Path

import numpy as np
import pytest
import scipy.io.wavfile
import scipy.signal

from sentistream.perception.audio_features import (
    AudioFeatureExtractor,
    AudioFeatureFrames,
    AudioFeatureOptions,
    feature_dim,
    feature_names,
)

SR = 16000
NAMES = feature_names()
IDX = {n: i for i, n in enumerate(NAMES)}


def tone(freq: float, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def run_whole(x: np.ndarray, t0: float = 0.0, ex: AudioFeatureExtractor | None = None) -> AudioFeatureFrames:
    ex = ex or AudioFeatureExtractor()
    a, b = ex.process(x, t0), ex.flush()
    return AudioFeatureFrames(np.vstack([a.features, b.features]), np.concatenate([a.times_s, b.times_s]))


def col(frames: AudioFeatureFrames, name: str) -> np.ndarray:
    return frames.features[:, IDX[name]]


def test_names_and_dims() -> None:
    o = AudioFeatureOptions()
    assert len(NAMES) == feature_dim(o) == 59 == len(set(NAMES))
    f = AudioFeatureExtractor(o).process(tone(220, 0.5), 0.0)
    assert f.features.shape[1] == feature_dim(o) and f.features.dtype == np.float32 and f.times_s.dtype == np.float64
    o2 = AudioFeatureOptions(n_mels=64, n_mfcc=20)
    cols = AudioFeatureExtractor(o2).process(tone(220, 0.2), 0).features.shape[1]
    assert len(feature_names(o2)) == feature_dim(o2) == cols


def test_sine_pitch_and_voicing() -> None:
    f = run_whole(tone(220, 1.0))
    steady = slice(3, -3)  # away from the zero padding at both ends
    f0, vp = col(f, "f0_hz")[steady], col(f, "voicing_prob")[steady]
    assert np.all(np.abs(f0 - 220) < 0.03 * 220)
    assert np.median(f0) == pytest.approx(220, rel=0.005)
    assert np.all(vp > 0.8)
    assert np.median(col(f, "rms_db")) == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.2)


@pytest.mark.parametrize("freq", [80.0, 150.0, 350.0])
def test_pitch_range(freq: float) -> None:
    f0 = col(run_whole(tone(freq, 0.5, amp=0.2)), "f0_hz")[4:-4]
    assert np.median(f0) == pytest.approx(freq, rel=0.02)


def test_frame_grid_and_times() -> None:
    n = SR  # 1 s
    f = run_whole(np.zeros(n, np.float32), t0=10.0)
    # Frames whose centre lies inside the signal: 12.5 ms, 22.5 ms, ... < 1 s.
    assert f.features.shape[0] == (n - 1 - 200) // 160 + 1 == 99
    np.testing.assert_allclose(f.times_s[:3], [10.0125, 10.0225, 10.0325])
    np.testing.assert_allclose(np.diff(f.times_s), 0.01)


def test_silence_is_finite_and_unvoiced() -> None:
    f = run_whole(np.zeros(SR, np.float32))
    assert np.isfinite(f.features).all()
    assert not col(f, "f0_hz").any() and not col(f, "voicing_prob").any()
    assert np.all(col(f, "rms_db") == pytest.approx(-100.0))
    assert not col(f, "spectral_centroid_hz").any() and not col(f, "spectral_flux").any()
    tiny = run_whole(np.full(SR // 2, 1e-9, np.float32))  # DC just above zero: still silent
    assert np.isfinite(tiny.features).all() and not col(tiny, "f0_hz").any()


def test_chunked_equals_whole() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(int(2.3 * SR)) / SR
    x = (0.4 * np.sin(2 * np.pi * (120 + 60 * t) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    x[SR : SR + 4000] = 0.0  # a silent stretch inside
    whole = run_whole(x, t0=5.0)

    ex = AudioFeatureExtractor()
    cuts = np.unique(np.concatenate([[0, 1, 1, 7, 400], rng.integers(0, x.size, 30), [x.size]]))
    parts = [ex.process(x[a:b], 5.0 + a / SR) for a, b in zip(cuts[:-1], cuts[1:])]
    parts.append(ex.process(np.zeros(0, np.float32), 99.0))  # an empty chunk changes nothing
    parts.append(ex.flush())
    feats = np.vstack([p.features for p in parts])
    times = np.concatenate([p.times_s for p in parts])
    assert feats.shape == whole.features.shape
    np.testing.assert_allclose(feats, whole.features, atol=1e-5, rtol=0)
    np.testing.assert_allclose(times, whole.times_s, atol=1e-9)


def test_flush_resets_and_reset_clears() -> None:
    ex = AudioFeatureExtractor()
    a = run_whole(tone(200, 0.3), ex=ex)
    b = run_whole(tone(200, 0.3), ex=ex)  # flush() ended the first stream
    np.testing.assert_array_equal(a.features, b.features)
    ex.process(tone(300, 0.25), 0.0)
    ex.reset()
    c = run_whole(tone(200, 0.3), ex=ex)
    np.testing.assert_array_equal(a.features, c.features)
    assert ex.flush().features.shape == (0, feature_dim())


def test_noise_vs_sine_zcr_and_centroid() -> None:
    noise = run_whole((0.3 * np.random.default_rng(2).standard_normal(SR)).astype(np.float32))
    sine = run_whole(tone(220, 1.0))
    assert np.median(col(noise, "zcr")) > 0.3 > 0.05 > np.median(col(sine, "zcr"))
    assert np.median(col(noise, "spectral_centroid_hz")) > 3000
    assert np.median(col(sine, "spectral_centroid_hz")) < 600
    assert np.median(col(noise, "spectral_flux")) > 5 * np.median(col(sine, "spectral_flux"))
    assert np.mean(col(noise, "f0_hz") > 0) < 0.2  # noise is mostly unvoiced
    assert np.median(col(noise, "voicing_prob")) < np.median(col(sine, "voicing_prob"))


def test_nonfinite_input_is_replaced_and_counted() -> None:
    x = tone(220, 0.5)
    x[1000:1010] = np.nan
    x[3000] = np.inf
    x[4000] = -np.inf
    ex = AudioFeatureExtractor()
    f = ex.process(x, 0.0)
    assert f.n_nonfinite == 12 and ex.nonfinite_total == 12
    assert np.isfinite(f.features).all() and f.features.shape[0] > 40
    clean = tone(220, 0.5)
    clean[1000:1010] = 0.0
    clean[[3000, 4000]] = 0.0
    np.testing.assert_allclose(f.features, AudioFeatureExtractor().process(clean, 0.0).features, atol=1e-5)
    g = AudioFeatureExtractor().process(np.full(SR // 4, np.nan, np.float32), 0.0)
    assert np.isfinite(g.features).all() and not col(g, "f0_hz").any()


def test_empty_and_odd_inputs() -> None:
    ex = AudioFeatureExtractor()
    f = ex.process(np.zeros(0, np.float32), 0.0)
    assert f.features.shape == (0, feature_dim()) and f.times_s.shape == (0,)
    assert ex.flush().features.shape[0] == 0
    assert ex.process(np.zeros(100, np.float32), 0.0).features.shape[0] == 0  # not a full window yet
    assert ex.flush().features.shape[0] == 0  # 100 samples: no frame centre (200) inside
    stereo = np.stack([tone(220, 0.3), tone(220, 0.3)], axis=1)
    mono = run_whole(tone(220, 0.3)).features
    np.testing.assert_allclose(run_whole(stereo).features, mono, atol=1e-5)
    np.testing.assert_allclose(run_whole(stereo.T).features, mono, atol=1e-5)  # channels first
    assert ex.process(np.array(["not", "audio"]), 0.0).features.shape == (0, feature_dim())


def test_int16_input_is_scaled() -> None:
    x = tone(220, 0.5, amp=0.25)
    pcm = np.round(x * 32767).astype(np.int16)
    a = run_whole(pcm).features
    b = run_whole(pcm.astype(np.float32) / 32768.0).features
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert np.median(a[:, IDX["rms_db"]]) == pytest.approx(20 * np.log10(0.25 / np.sqrt(2)), abs=0.2)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_real_speech_pitch(tmp_path: Path) -> None:
    wav = tmp_path / "out.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "hello world"], check=True, capture_output=True, timeout=30)
    sr, pcm = scipy.io.wavfile.read(wav)
    x = pcm.astype(np.float64) / 32768.0 if pcm.dtype == np.int16 else pcm.astype(np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    g = gcd(SR, sr)
    x16 = scipy.signal.resample_poly(x, SR // g, sr // g).astype(np.float32)
    f = run_whole(x16)
    f0 = col(f, "f0_hz")
    voiced = f0 > 0
    assert np.isfinite(f.features).all()
    assert voiced.sum() >= 15 and 0.1 < voiced.mean() < 0.9  # speech has voiced and unvoiced parts
    assert np.all((f0[voiced] > 70) & (f0[voiced] < 300))
    assert np.all(col(f, "voicing_prob")[voiced] > 0.7)
    # Voiced frames are louder than the quietest frames (pauses, onsets).
    assert np.median(col(f, "rms_db")[voiced]) > np.percentile(col(f, "rms_db"), 10) + 10
