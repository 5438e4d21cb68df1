"""Streaming frame-level acoustic features (numpy/scipy only).

Frames are laid on a fixed grid of the stream (frame k starts at sample k*hop
after the last reset), and leftover samples are kept between calls, so a signal
fed in arbitrary chunks yields the same frames as the whole signal at once:
the engine (live chunks) and the offline `extract` command (whole files) agree.

Per frame: log-mel, MFCC, RMS level, zero-crossing rate, YIN F0 + voicing
probability, spectral centroid and spectral flux. F0 needs a longer window
than the spectral frame (the integration window plus the longest period), so
each frame is analysed in an extended window centred on the same point; the
stream is therefore prefixed with zeros and frames come out with a lookahead
of about half a period at f0_min (~8 ms at the defaults).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft as sfft

from .audio_types import AudioFeatureFrames, AudioFeatureOptions, to_float_mono  # noqa: F401  (re-exported)

_BLOCK_FRAMES = 100  # frames per vectorised batch: larger batches fall out of cache and run slower


def feature_names(options: AudioFeatureOptions | None = None) -> tuple[str, ...]:
    """Column names of `AudioFeatureFrames.features`, in order."""
    o = options or AudioFeatureOptions()
    if o.extractor == "egemaps":
        from .egemaps import egemaps_feature_names

        return egemaps_feature_names()
    return (
        tuple(f"logmel_{i}" for i in range(o.n_mels))  # natural log of mel-band power, floor log(1e-10)
        + tuple(f"mfcc_{i}" for i in range(o.n_mfcc))  # DCT-II (ortho) of the log-mel vector
        + (
            "rms_db",  # 20*log10(RMS) of the raw frame, dBFS (full scale = 1.0), floor -100
            "zcr",  # fraction of adjacent sample pairs that change sign, 0..1
            "f0_hz",  # YIN fundamental frequency; 0 when unvoiced
            "voicing_prob",  # 1 - min CMND over the lag range, clipped to [0, 1]; 0 for silent frames
            "spectral_centroid_hz",  # magnitude-weighted mean frequency; 0 for silent frames
            "spectral_flux",  # L2 distance of L1-normalised magnitude spectra vs the previous frame
        )
    )


def feature_dim(options: AudioFeatureOptions | None = None) -> int:
    o = options or AudioFeatureOptions()
    if o.extractor == "egemaps":
        from .egemaps import EGEMAPS_DIM

        return EGEMAPS_DIM
    return o.n_mels + o.n_mfcc + 6


def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular HTK-mel filters, shape (n_fft//2 + 1, n_mels), unit peak."""

    def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    fmax = min(fmax, sr / 2.0)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    lo, ce, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None, :] - lo) / np.maximum(ce - lo, 1e-9)
    down = (hi - freqs[None, :]) / np.maximum(hi - ce, 1e-9)
    return np.maximum(0.0, np.minimum(up, down)).T.copy()


def _frames(x: np.ndarray, n: int, length: int, hop: int) -> np.ndarray:
    """Read-only (n, length) view of contiguous 1-D x, rows hop apart (far cheaper per call than
    sliding_window_view, which matters with 10-frame chunks)."""
    if not x.flags.c_contiguous or (n - 1) * hop + length > x.size:
        raise ValueError("frame view out of range")
    step = x.itemsize
    view = np.ndarray((n, length), x.dtype, buffer=x, offset=0, strides=(hop * step, step))
    view.flags.writeable = False
    return view


class AudioFeatureExtractor:
    """Streaming extractor: `process` chunks in order, `flush` at the end of the stream."""

    def __init__(self, options: AudioFeatureOptions | None = None) -> None:
        o = self.options = options or AudioFeatureOptions()
        sr = o.sample_rate
        self.frame_len = max(2, int(round(sr * o.frame_ms / 1000.0)))
        self.hop = max(1, int(round(sr * o.hop_ms / 1000.0)))
        self.n_fft = 1 << (self.frame_len - 1).bit_length()
        self.tau_min = max(2, int(math.floor(sr / o.f0_max)))
        self.tau_max = max(self.tau_min + 2, int(math.ceil(sr / o.f0_min)))
        # YIN: difference over an integration window of frame_len at lags 0..tau_max+1.
        self.yin_w = self.frame_len
        self.win_len = self.frame_len + self.tau_max + 2
        self.pad_left = (self.win_len - self.frame_len) // 2
        self.yin_nfft = sfft.next_fast_len(self.win_len, real=True)
        # Spectral path in float32 (the FFTs cost ~60 % of float64; features are float32 anyway).
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(self.frame_len) / self.frame_len)).astype(
            np.float32
        )  # periodic Hann
        self.mel_fb = mel_filterbank(sr, self.n_fft, o.n_mels, o.fmin, o.fmax).astype(np.float32)
        n_mfcc = min(o.n_mfcc, o.n_mels)
        self.dct = sfft.dct(np.eye(o.n_mels), type=2, norm="ortho", axis=0)[:, :n_mfcc]  # (n_mels, n_mfcc)
        if n_mfcc < o.n_mfcc:  # more MFCCs than mel bands asked: pad with zero columns
            self.dct = np.pad(self.dct, ((0, 0), (0, o.n_mfcc - n_mfcc)))
        self.freqs = np.arange(self.n_fft // 2 + 1) * sr / self.n_fft  # float64: the centroid is in Hz
        self.dim = feature_dim(o)
        self._taus = np.arange(1, self.tau_max + 2, dtype=np.float64)
        self._cols = np.arange(self.tau_max - self.tau_min + 1)[None, :]
        self.nonfinite_total = 0
        self.reset()

    # -- state -----------------------------------------------------------------

    def reset(self) -> None:
        """Start a new stream: drop buffered samples, flux history and the clock."""
        # The buffer holds the zero-prefixed stream from the next frame's extended window
        # on: buffer index 0 is stream sample next_frame * hop - pad_left.
        self._buf = np.zeros(self.pad_left, np.float64)
        self._next_frame = 0  # index of the next frame to emit
        self._fed = 0  # stream samples received since reset
        self._prev_mag: np.ndarray | None = None
        self._clock: tuple[float, int] | None = None  # (t0_s, stream index) of the latest chunk

    def process(self, samples: np.ndarray, t0_s: float) -> AudioFeatureFrames:
        """Append a chunk whose first sample is at `t0_s` on the caller's clock; return complete frames."""
        try:
            x = to_float_mono(samples)
        except (TypeError, ValueError):
            x = np.zeros(0, np.float64)
        n_bad = 0
        if not np.isfinite(x).all():  # rare: one cheap check on the common path
            bad = ~np.isfinite(x)
            n_bad = int(bad.sum())
            x = np.where(bad, 0.0, x)
            self.nonfinite_total += n_bad
        if x.size or self._clock is None:
            self._clock = (float(t0_s), self._fed)
        self._fed += x.size
        self._buf = np.concatenate([self._buf, x])
        n_frames = 0
        if self._buf.size >= self.win_len:
            n_frames = (self._buf.size - self.win_len) // self.hop + 1
        out = self._emit(n_frames)
        out.n_nonfinite = n_bad
        return out

    def flush(self) -> AudioFeatureFrames:
        """End of stream: emit the remaining frames whose centre lies inside the signal
        (zero-padded past the end), then reset."""
        centre = self.frame_len / 2.0
        n_total = 0 if self._fed == 0 else int(math.floor((self._fed - 1 - centre) / self.hop)) + 1
        n_frames = max(0, n_total - self._next_frame)
        if n_frames:
            need = (n_frames - 1) * self.hop + self.win_len
            if self._buf.size < need:
                self._buf = np.concatenate([self._buf, np.zeros(need - self._buf.size)])
        out = self._emit(n_frames)
        self.reset()
        return out

    # -- analysis ----------------------------------------------------------------

    def _times(self, first: int, n: int) -> np.ndarray:
        centres = (first + np.arange(n)) * self.hop + self.frame_len / 2.0  # stream sample index
        t0, idx0 = self._clock if self._clock is not None else (0.0, 0)
        return t0 + (centres - idx0) / self.options.sample_rate

    def _emit(self, n: int) -> AudioFeatureFrames:
        if n <= 0:
            return AudioFeatureFrames(np.zeros((0, self.dim), np.float32), np.zeros(0, np.float64))
        # Blocks bound the temporary (frames x FFT size) arrays when a whole file comes in one call.
        blocks = []
        for b0 in range(0, n, _BLOCK_FRAMES):
            nb = min(_BLOCK_FRAMES, n - b0)
            start = b0 * self.hop
            blocks.append(self._analyse(self._buf[start : start + (nb - 1) * self.hop + self.win_len], nb))
        times = self._times(self._next_frame, n)
        self._next_frame += n
        self._buf = self._buf[n * self.hop :].copy()
        return AudioFeatureFrames(np.concatenate(blocks, axis=0), times)

    def _analyse(self, span: np.ndarray, n: int) -> np.ndarray:
        """Features of the n frames whose extended windows tile `span` at the hop.

        Written for few numpy calls: with 100 ms chunks (10 frames) per-call overhead,
        not arithmetic, dominates the cost.
        """
        o, fl, pl, hop = self.options, self.frame_len, self.pad_left, self.hop
        wins = _frames(span, n, self.win_len, hop)
        frames = wins[:, pl : pl + fl]
        out = np.empty((n, self.dim), np.float64)
        nm, nc = o.n_mels, o.n_mfcc
        c_rms, c_zcr, c_f0, c_vp, c_cen, c_flux = range(nm + nc, nm + nc + 6)

        # Running energy: e_all[i] = sum(span[i : i+fl]^2) gives both frame RMS and YIN's window energies.
        csum = np.cumsum(np.square(span))
        e_all = np.empty(csum.size - fl + 1)
        e_all[0] = csum[fl - 1]
        np.subtract(csum[fl:], csum[:-fl], out=e_all[1:])
        frame_e = np.maximum(e_all[pl : pl + (n - 1) * hop + 1 : hop], 0.0)
        out[:, c_rms] = 10.0 * np.log10(np.maximum(frame_e / fl, 1e-10))  # 20 log10(rms), floor -100 dB

        signs = np.signbit(frames)
        out[:, c_zcr] = np.add.reduce(signs[:, 1:] != signs[:, :-1], axis=1, dtype=np.int32) / (fl - 1)

        # Spectrum of the Hann-windowed frame (scipy's own zero-padding path is several times slower).
        padded = np.zeros((n, self.n_fft), np.float32)  # single-precision FFTs cost about 60 %
        np.multiply(frames, self.window, out=padded[:, :fl])
        mag = np.abs(sfft.rfft(padded, axis=1))
        power = np.square(mag)
        logmel = np.log(np.maximum(power @ self.mel_fb, 1e-10), out=out[:, :nm])
        np.matmul(logmel, self.dct, out=out[:, nm : nm + nc])

        mag_sum = mag.sum(axis=1, keepdims=True)
        norm = mag / np.maximum(mag_sum, 1e-12)  # L1-normalised: flux ignores loudness changes
        out[:, c_cen] = norm @ self.freqs  # exactly 0 for a silent frame
        prev = np.empty_like(norm)
        prev[0] = norm[0] if self._prev_mag is None else self._prev_mag
        prev[1:] = norm[:-1]
        out[:, c_flux] = np.sqrt(np.square(norm - prev).sum(axis=1))
        self._prev_mag = norm[-1].copy()

        out[:, c_f0], out[:, c_vp] = self._yin(wins, e_all, out[:, c_rms])
        out[~np.isfinite(out)] = 0.0
        return out.astype(np.float32)

    def _yin(self, wins: np.ndarray, e_all: np.ndarray, rms_db: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised YIN (de Cheveigne & Kawahara 2002) over frames; returns (f0_hz, voicing_prob)."""
        o, W, tmax, hop = self.options, self.yin_w, self.tau_max + 1, self.hop
        n = wins.shape[0]
        # r(tau) = sum_{j<W} x_j x_{j+tau}: circular cross-correlation does not wrap since nfft >= win_len.
        # Both transforms in one call: rows [0, n) the whole window, [n, 2n) its first W samples.
        b = np.zeros((2 * n, self.yin_nfft), np.float32)
        b[:n, : self.win_len] = wins
        b[n:, :W] = wins[:, :W]
        spec = sfft.rfft(b, axis=1)
        r = sfft.irfft(np.conj(spec[n:]) * spec[:n], n=self.yin_nfft, axis=1)[:, : tmax + 1]
        # d(tau) = e(0) + e(tau) - 2 r(tau), with e(tau) = energy of x[tau : tau+W].
        e_tau = _frames(e_all, n, tmax + 1, hop)
        e0 = e_tau[:, :1]
        d = e_tau + e0
        d -= 2.0 * r
        np.maximum(d, 0.0, out=d)
        # Cumulative-mean-normalised difference d'(tau) = d(tau) * tau / sum_{1..tau} d, for tau >= 1.
        cum = np.cumsum(d[:, 1:], axis=1)
        cmnd = np.ones((n, tmax + 1))
        np.divide(d[:, 1:] * self._taus, cum, out=cmnd[:, 1:], where=cum > 1e-12)

        lo, hi = self.tau_min, self.tau_max  # search lags; hi+1 exists for the local-minimum test
        seg = cmnd[:, lo : hi + 1]
        vprob = np.clip(1.0 - seg.min(axis=1), 0.0, 1.0)
        # First lag under the threshold, then walk down to the bottom of that dip; else the global minimum.
        below = seg < o.yin_threshold
        has = below.any(axis=1)
        first = np.argmax(below, axis=1)
        stop = (cmnd[:, lo + 1 : hi + 2] >= seg) & (self._cols >= first[:, None])
        stop[:, -1] = True
        best = np.where(has, np.argmax(stop, axis=1), np.argmin(seg, axis=1)) + lo

        # Parabolic interpolation around the chosen lag.
        rows = np.arange(n)
        y0, y1, y2 = cmnd[rows, best - 1], cmnd[rows, best], cmnd[rows, best + 1]
        den = y0 - 2.0 * y1 + y2
        safe = np.abs(den) > 1e-12
        shift = np.clip(0.5 * (y0 - y2) / np.where(safe, den, 1.0), -1.0, 1.0) * safe
        tau = best + shift

        silent = (rms_db < o.silence_db) | (e0[:, 0] <= 1e-12)
        f0 = np.where(has & ~silent, o.sample_rate / np.maximum(tau, 1.0), 0.0)
        return f0, np.where(silent, 0.0, vprob)


def make_audio_extractor(options: AudioFeatureOptions | None = None):
    """The extractor ``options.extractor`` names: ``AudioFeatureExtractor`` ("builtin") or the
    optional ``egemaps.EgemapsExtractor``; both have ``process`` / ``flush`` / ``reset``."""
    o = options or AudioFeatureOptions()
    if o.extractor == "builtin":
        return AudioFeatureExtractor(o)
    if o.extractor == "egemaps":
        from .egemaps import EgemapsExtractor

        return EgemapsExtractor(o)
    raise ValueError(f"audio_features.extractor must be 'builtin' or 'egemaps', not {o.extractor!r}")
