"""Source stages: a media file (or the bundled demo clip), a webcam, a microphone.

Every source stamps each message with the shared monotonic clock at capture
(`t_capture_ns`) and with its position on the session clock (`t_media_s`).
"""

from __future__ import annotations

import logging
import queue
import time
from importlib import resources
from pathlib import Path

import numpy as np

from ..messages import Message, now_ns
from ..stage import FatalStageError, Stage

log = logging.getLogger("sentistream.sources")

# pace = "fast": wall seconds without any event after which the source stops waiting for them
# (fusion restarting: it needs new input to emit again) until they come back.
FAST_HOLD_MAX_S = 5.0


def demo_clip_path() -> Path:
    return Path(str(resources.files("sentistream.assets").joinpath("demo.mp4")))


class FileSource(Stage):
    """Replays a media file (video + audio track) at real-time pace or as fast as possible.

    Decoding is `perception.media.iter_media`, the same code `extract` uses. At ``pace =
    "fast"`` the pipeline also subscribes this stage to the fusion events: it stays at most
    ``source.fast_lead_s`` of media ahead of the newest event's window end, so the graph runs
    as fast as its slowest stage and no stage is overrun; a track the file lacks is ended at
    once, so that fusion (``complete_windows``) does not wait for it.
    """

    def setup(self) -> None:
        from ...perception.media import MediaError, probe_media

        src = self.config.source
        self.path = Path(self.params.path or (src.path if src.kind == "file" else demo_clip_path()))
        if not self.path.is_file():
            raise FatalStageError(f"media file not found: {self.path} (give an existing file or use --source demo)")
        try:
            info = probe_media(self.path)
        except MediaError as exc:
            raise FatalStageError(str(exc)) from None
        if not (info.has_video or info.has_audio):
            raise FatalStageError(f"media file {self.path} has neither a video nor an audio track")
        self.declared_s = info.duration_s
        self.tracks = {"video": info.has_video, "audio": info.has_audio}
        self.events_t: float | None = None  # newest event window end (pace = "fast")
        self._event_wall = 0.0  # wall time that event arrived
        self._hold_released = False  # no event for FAST_HOLD_MAX_S: not waiting for them
        self.media_pos = float(self.params.resume_from_s)
        if not self.params.resume_from_s:
            self._check_decodable()

    def _check_decodable(self) -> None:
        """Fail before the session starts, in one line, on a file with nothing to play."""
        from ...perception.media import MediaError, iter_media

        src = self.config.source
        items = iter_media(self.path, src.sample_rate, src.audio_chunk_ms, src.width, src.height)
        try:
            first = next(items, None)
        except MediaError as exc:
            raise FatalStageError(str(exc)) from None
        finally:
            items.close()
        if first is None:
            raise FatalStageError(
                f"media file {self.path} holds no decodable video frames or audio samples (empty or damaged)"
            )

    def stats_extra(self) -> dict:
        return {"t_media_s": self.media_pos}

    def _pace(self, t_media: float) -> None:
        if self.config.source.pace != "realtime":
            if self.paced_by_events:
                self._hold_for_events(t_media)
            return
        assert self.t0_ns is not None
        while not self.stopping:
            wait = self.t0_ns / 1e9 + t_media - now_ns() / 1e9
            if wait <= 0:
                return
            time.sleep(min(wait, 0.05))
            self.service()

    def _read_events(self, timeout_ms: int) -> None:
        for msg in self._receive_batch(timeout_ms):
            if msg.kind == "event":
                self.events_t = max(self.events_t or 0.0, msg.t_media_s)
                self._event_wall = time.monotonic()
                if self._hold_released:
                    log.info("%s: events are back: the replay waits for them again", self.name)
                    self._hold_released = False

    def _hold_for_events(self, t_media: float) -> None:
        """Wait until the newest event is within fast_lead_s of t_media (reading them as they come,
        so they never queue up here); not while no event has come for FAST_HOLD_MAX_S."""
        lead = self.config.source.fast_lead_s
        if self.events_t is None:
            self.events_t = t_media  # the first lead is free (also for a source resumed mid-file)
            self._event_wall = time.monotonic()
        self._read_events(0)
        while not self.stopping and t_media - self.events_t > lead:
            if time.monotonic() - self._event_wall > FAST_HOLD_MAX_S:
                if not self._hold_released:
                    log.warning(
                        "%s: no event for %.0f s (is fusion restarting?): replaying on without "
                        "waiting for them until they come back",
                        self.name,
                        FAST_HOLD_MAX_S,
                    )
                    self._hold_released = True
                return
            self._read_events(50)
            self.service()

    def produce(self) -> None:
        src = self.config.source
        duration = src.duration_s if src.duration_s > 0 else float("inf")
        offset = 0.0
        missing = [s for s in self.output_streams if not self.tracks.get(s, True)]
        if self.paced_by_events and missing and not self.params.resume_from_s:
            self.publish_eos(self.media_pos, streams=missing)
        while not self.stopping:
            length = self._play_once(offset, duration)
            if offset == 0.0 and not self.stopping:
                self._check_damage(length, duration)
            if length <= 0 or not src.loop or offset + length >= duration:
                break
            offset += length
        self.publish_eos(self.media_pos)

    def _check_damage(self, length: float, duration: float) -> None:
        """After the first pass: an empty or truncated file gets one clear line."""
        if self.counters.published == 0 and not self.params.resume_from_s:
            raise FatalStageError(
                f"media file {self.path} holds no decodable video frames or audio samples (empty or damaged)"
            )
        if self.declared_s > length + 1.0 and duration > length + 1.0:
            log.warning(
                "%s: media file %s ended at %.1f s but declares %.1f s: it is truncated or damaged; "
                "what could be decoded was played",
                self.name,
                self.path,
                length,
                self.declared_s,
            )

    def _play_once(self, offset: float, duration: float) -> float:
        """Play the file once with media times shifted by `offset`; returns its length in s."""
        from ...perception.media import AudioItem, MediaError, iter_media

        src = self.config.source
        sr = src.sample_rate
        resume = self.media_pos - offset if self.media_pos > offset else 0.0
        errors: list[str] = []
        last = 0.0
        try:
            for item in iter_media(
                self.path,
                sr,
                src.audio_chunk_ms,
                src.width,
                src.height,
                start_s=resume,
                end_s=duration - offset,
                errors=errors,
            ):
                if self.stopping:
                    break
                t = offset + item.t
                self._pace(t)
                self.media_pos = max(self.media_pos, t)
                if isinstance(item, AudioItem):
                    last = max(last, item.t + item.samples.size / sr)
                    self.publish(Message("audio_chunk", "audio", 0, now_ns(), t, [item.samples]))
                else:
                    last = max(last, item.t)
                    self.publish(Message("video_frame", "video", 0, now_ns(), t, [item.rgb]))
                self.service()
        except MediaError as exc:
            raise FatalStageError(str(exc)) from None
        self.counters.errors += len(errors)
        return last


class CameraSource(Stage):
    """A webcam through OpenCV, by index."""

    def setup(self) -> None:
        import cv2

        src = self.config.source
        self.cap = cv2.VideoCapture(src.camera_index)
        if not self.cap.isOpened():
            raise FatalStageError(
                f"camera {src.camera_index} could not be opened (no /dev/video{src.camera_index} or it is busy); "
                "try another index with --source webcam:N, check `sentistream doctor`, or use --source demo"
            )
        self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, src.width)
        self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, src.height)
        self.cap.set(cv2.CAP_PROP_FPS, src.fps)

    def produce(self) -> None:
        import cv2

        failures = 0
        t_end = self.config.source.duration_s or float("inf")
        while not self.stopping:
            ok, bgr = self.cap.read()
            t = self.media_time_now()
            if t >= t_end:
                break
            if not ok or bgr is None:
                failures += 1
                if failures >= 50:  # about 2-5 s without a frame: the camera is gone
                    # eos(reason "device_lost") downstream + a report the supervisor logs
                    self.device_lost(
                        "video", t, f"camera {self.config.source.camera_index}", "stopped delivering frames"
                    )
                    return
                time.sleep(0.05)
                self.service()
                continue
            failures = 0
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            self.publish(Message("video_frame", "video", 0, now_ns(), t, [rgb]))
            self.service()
        self.publish_eos(self.media_time_now())

    def teardown(self) -> None:
        cap = getattr(self, "cap", None)
        if cap is not None:
            cap.release()


class MicrophoneSource(Stage):
    """A microphone through sounddevice, 16 kHz mono float32."""

    def setup(self) -> None:
        src = self.config.source
        device = self.params.microphone if self.params.microphone is not None else src.microphone
        self.device_name = device
        try:
            import sounddevice as sd
        except OSError as exc:  # PortAudio missing
            raise FatalStageError(
                f"microphone {device!r}: the PortAudio library is missing ({exc}); install it "
                "(apt-get install libportaudio2) or use --source demo"
            ) from None
        self.sd = sd
        self.blocks: queue.Queue = queue.Queue(maxsize=1000)
        self.overflows = 0
        sd_device = None if device in ("", "default") else (int(device) if str(device).isdigit() else device)
        try:
            self.stream = sd.InputStream(
                samplerate=src.sample_rate,
                channels=1,
                dtype="float32",
                device=sd_device,
                blocksize=src.sample_rate * src.audio_chunk_ms // 1000,
                callback=self._callback,
            )
        except Exception as exc:  # PortAudioError, ValueError for unknown names
            raise FatalStageError(
                f"microphone {device!r} could not be opened: {exc}; list devices with "
                "`python -m sounddevice` or `sentistream doctor`, pass --mic NAME_OR_INDEX, or use --source demo"
            ) from None

    def _callback(self, indata, frames, time_info, status) -> None:  # runs in PortAudio's thread
        if status:
            self.overflows += 1
        try:
            self.blocks.put_nowait(indata[:, 0].copy())
        except queue.Full:
            self.overflows += 1

    def stats_extra(self) -> dict:
        return {"overflows": self.overflows}

    def produce(self) -> None:
        src = self.config.source
        t_end = src.duration_s or float("inf")
        samples_seen = 0
        t_start: float | None = None
        silent_for = 0.0
        self.stream.start()
        try:
            while not self.stopping:
                try:
                    block = self.blocks.get(timeout=0.1)
                except queue.Empty:
                    silent_for += 0.1
                    if silent_for > 5.0:
                        # eos(reason "device_lost") downstream + a report the supervisor logs
                        self.device_lost(
                            "audio",
                            self.media_time_now(),
                            f"microphone {self.device_name!r}",
                            "stopped delivering audio",
                        )
                        return
                    self.service()
                    continue
                silent_for = 0.0
                if t_start is None:
                    t_start = max(0.0, self.media_time_now() - block.size / src.sample_rate)
                t = t_start + samples_seen / src.sample_rate
                samples_seen += block.size
                if t >= t_end:
                    break
                self.publish(Message("audio_chunk", "audio", 0, now_ns(), t, [block.astype(np.float32)]))
                self.service()
        finally:
            self.stream.stop()
        self.publish_eos(self.media_time_now())

    def teardown(self) -> None:
        stream = getattr(self, "stream", None)
        if stream is not None:
            stream.close()
