"""ASR stage: audio chunks -> committed and partial words (faster-whisper, streaming).

A Whisper decode costs about the same whatever the clip length (inputs are
padded to 30 s), so the recogniser runs in its own thread at its own pace on
the newest audio, while this stage's loop keeps receiving audio and publishes
whatever the recogniser has committed.
"""

from __future__ import annotations

import bisect
import logging
import queue
import threading

from ...payloads import WordsPayload
from ..messages import Message, now_ns
from ..stage import Stage

log = logging.getLogger("sentistream.asr")


class AsrStage(Stage):
    def setup(self) -> None:
        from ...perception.asr import StreamingRecognizer
        from ..asr_server import open_whisper

        opts = self.config.asr
        self.recognizer = StreamingRecognizer(opts, open_whisper(opts))
        self.updates: queue.Queue = queue.Queue()
        self.audio_end = 0.0
        # (media time, capture ns) of each chunk's first sample: maps word times to capture times
        self._clock_map: list[tuple[float, int]] = []
        self._last_trace: dict[str, int] = {}
        self._halt = threading.Event()
        self.decodes = 0
        self.thread = threading.Thread(target=self._decode_loop, name="asr-decode", daemon=True)
        self.thread.start()

    def _decode_loop(self) -> None:
        while not self._halt.is_set():
            try:
                update = self.recognizer.step()
            except Exception:  # the stage must outlive one bad decode
                log.exception("%s: decode failed", self.name)
                self._halt.wait(0.2)
                continue
            if update.decode_ms > 0:
                self.decodes += 1
            # A decoded step that cleared the partial is published too, so no stale guess lingers.
            if update.committed or update.partial or update.utterance_end or update.decoded:
                self.updates.put(update)
            if update.decode_ms <= 0:
                self._halt.wait(0.05)  # nothing new to decode yet

    def on_message(self, msg: Message) -> None:
        if msg.kind != "audio_chunk" or not msg.arrays:
            return
        samples = msg.arrays[0]
        self.recognizer.add_audio(samples, msg.t_media_s)
        self.audio_end = msg.t_media_s + samples.size / self.config.source.sample_rate
        self._clock_map.append((msg.t_media_s, msg.t_capture_ns))
        if len(self._clock_map) > 2000:
            del self._clock_map[:1000]
        self._last_trace = dict(msg.trace)

    def _capture_ns_at(self, t_media: float) -> int:
        """Capture time of the audio at media time t (when that sound entered the engine)."""
        if not self._clock_map:
            return now_ns()
        # Whisper's word timestamps can run past the audio heard so far (into the silence padded
        # after the clip): such a word ended no later than the newest audio, and never in the future.
        t_media = min(t_media, self.audio_end)
        i = bisect.bisect_right(self._clock_map, (t_media, 1 << 62)) - 1
        t0, c0 = self._clock_map[max(i, 0)]
        return min(int(c0 + max(0.0, t_media - t0) * 1e9), now_ns())

    def _publish_update(self, update) -> None:
        payload = WordsPayload(
            committed=list(update.committed),
            partial=list(update.partial),
            utterance_end=bool(update.utterance_end),
            final_through_s=float(update.final_through_s),
            decode_ms=float(update.decode_ms),
        )
        words = payload.committed or payload.partial
        t_ref = words[-1].end_s if words else self.audio_end
        self.publish(
            Message(
                "words",
                "words",
                0,
                self._capture_ns_at(t_ref),
                float(t_ref),
                meta=payload.to_meta(),
                trace={k: v for k, v in self._last_trace.items() if k != self.name},
            )
        )

    def on_idle(self) -> None:
        while True:
            try:
                update = self.updates.get_nowait()
            except queue.Empty:
                return
            self._publish_update(update)

    def on_eos(self, msg: Message) -> None:
        self._halt.set()
        self.thread.join(timeout=30)
        self.on_idle()
        self._publish_update(self.recognizer.finish())
        self.publish_eos(max(msg.t_media_s, self.audio_end))
        self._halt.clear()
        self.thread = threading.Thread(target=self._decode_loop, name="asr-decode", daemon=True)
        self.thread.start()

    def stats_extra(self) -> dict:
        return {"decodes": self.decodes, "audio_end_s": self.audio_end}

    def teardown(self) -> None:
        halt = getattr(self, "_halt", None)
        if halt is not None:
            halt.set()
            self.thread.join(timeout=5)
