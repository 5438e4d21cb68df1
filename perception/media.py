"""Decoding a media file into time-stamped video frames and 16 kHz audio chunks.

The live file source and the offline `extract` command both read media through
`iter_media`, so they see the same frames and the same audio chunks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("sentistream.media")


class MediaError(RuntimeError):
    """A media file that cannot be opened or has no usable track."""


@dataclass
class VideoItem:
    t: float  # media time of the frame, seconds
    rgb: np.ndarray  # HxWx3 uint8


@dataclass
class AudioItem:
    t: float  # media time of the chunk's first sample
    samples: np.ndarray  # float32 mono


MediaItem = VideoItem | AudioItem


@dataclass
class MediaInfo:
    has_video: bool
    has_audio: bool
    duration_s: float


class AudioChunker:
    """Cuts a sample stream into fixed chunks stamped by sample count (no jitter)."""

    def __init__(self, sample_rate: int, chunk_ms: int) -> None:
        self.sample_rate = sample_rate
        self.chunk = max(1, sample_rate * chunk_ms // 1000)
        self.pending = np.zeros(0, dtype=np.float32)
        self.pending_t0 = 0.0

    def push(self, samples: np.ndarray, t0: float) -> list[tuple[float, np.ndarray]]:
        if self.pending.size == 0:
            self.pending_t0 = t0
        self.pending = np.concatenate([self.pending, samples.astype(np.float32, copy=False)])
        out = []
        while self.pending.size >= self.chunk:
            out.append((self.pending_t0, self.pending[: self.chunk].copy()))
            self.pending = self.pending[self.chunk :]
            self.pending_t0 += self.chunk / self.sample_rate
        return out

    def flush(self) -> list[tuple[float, np.ndarray]]:
        if self.pending.size == 0:
            return []
        out = [(self.pending_t0, self.pending.copy())]
        self.pending = np.zeros(0, dtype=np.float32)
        return out


def probe_media(path: str | Path) -> MediaInfo:
    import av

    try:
        with av.open(str(path)) as c:
            dur = float(c.duration / 1e6) if c.duration else 0.0
            return MediaInfo(bool(c.streams.video), bool(c.streams.audio), dur)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise MediaError(f"cannot open media file {path}: {exc}") from None


def _fit(frame, max_width: int, max_height: int):
    if frame.width > max_width or frame.height > max_height:
        scale = min(max_width / frame.width, max_height / frame.height)
        return frame.reformat(width=max(2, int(frame.width * scale)), height=max(2, int(frame.height * scale)))
    return frame


def iter_media(
    path: str | Path,
    sample_rate: int = 16000,
    chunk_ms: int = 100,
    max_width: int = 640,
    max_height: int = 480,
    start_s: float = 0.0,
    end_s: float = float("inf"),
    errors: list[str] | None = None,
) -> Iterator[MediaItem]:
    """Yield video frames and audio chunks in demux order, times relative to the file.

    Items before `start_s` are skipped and decoding stops at `end_s`; times stay on
    the file's clock. Undecodable packets are skipped and described in `errors`.
    """
    import av

    chunker = AudioChunker(sample_rate, chunk_ms)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    audio_samples = 0  # the audio clock counts samples, not packet timestamps

    def audio_items(frames) -> Iterator[AudioItem]:
        nonlocal audio_samples
        for rf in frames:
            samples = rf.to_ndarray().reshape(-1).astype(np.float32)
            t_first = audio_samples / sample_rate
            audio_samples += samples.size
            for t, chunk in chunker.push(samples, t_first):
                if start_s <= t < end_s:
                    yield AudioItem(t, chunk)

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise MediaError(f"cannot open media file {path}: {exc}") from None
    with container:
        streams = list(container.streams.video[:1]) + list(container.streams.audio[:1])
        if not streams:
            raise MediaError(f"media file {path} has neither a video nor an audio track")
        for s in streams:
            s.thread_type = "AUTO"
        ended = False
        try:
            for packet in container.demux(*streams):
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as exc:  # a corrupt packet: skip it, keep going
                    if errors is not None:
                        errors.append(str(exc))
                    log.warning("undecodable packet skipped in %s: %s", path, exc)
                    continue
                for frame in frames:
                    if isinstance(frame, av.VideoFrame):
                        t = float(frame.time or 0.0)
                        if t >= end_s:
                            ended = True
                            break
                        if t >= start_s:
                            yield VideoItem(t, _fit(frame, max_width, max_height).to_ndarray(format="rgb24"))
                    elif isinstance(frame, av.AudioFrame):
                        if audio_samples / sample_rate >= end_s:
                            ended = True
                            break
                        yield from audio_items(resampler.resample(frame))
                if ended:
                    break
        except av.error.FFmpegError as exc:
            if errors is not None:
                errors.append(str(exc))
            log.warning("media read stopped early in %s: %s", path, exc)
        if not ended:
            yield from audio_items(resampler.resample(None))
        for t, chunk in chunker.flush():
            if start_s <= t < end_s:
                yield AudioItem(t, chunk)
