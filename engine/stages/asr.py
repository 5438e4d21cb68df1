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
import time

import numpy as np

from ...payloads import VoicePayload, WordsPayload
from ..messages import Message, now_ns
from ..stage import FatalStageError, Stage

log = logging.getLogger("sentistream.asr")

# An idle recogniser (all it heard is decoded) says so this often: a fast replay's fusion then
# knows it waits for audio the source holds back, not that it is behind (engine/windowing.py).
IDLE_HEARTBEAT_S = 0.5


_IDLE = object()  # queued by the decode thread: publish an idle heartbeat


class AsrStage(Stage):
    def setup(self) -> None:
        from ...perception.asr import StreamingRecognizer
        from ...perception.voice import load_voice_affect
        from ..asr_server import open_whisper

        opts = self.config.asr
        whisper = open_whisper(opts)
        if opts.reference_words:  # known transcripts: the true words instead of decoding
            from ...perception.reference import ReferenceRecognizer, load_reference_words

            try:
                words = load_reference_words(opts.reference_words)
            except ValueError as exc:
                raise FatalStageError(str(exc)) from None  # a restart cannot fix the file
            self.recognizer = ReferenceRecognizer(words, self.config.window.utterance_pause_s)
            log.info("%s: %d reference words from %s (no recognition)", self.name, len(words), opts.reference_words)
        else:
            self.recognizer = StreamingRecognizer(opts, whisper)
        # The voice's valence on the same Whisper encoder (not with a Whisper server: its
        # encoder is elsewhere); the last voice_window_s of audio, every voice_hop_s.
        self.voice = load_voice_affect(whisper, opts.voice_head)
        self._voice_audio: list[np.ndarray] = []
        self._voice_samples = 0
        self._voice_next_t = 0.0
        self.voice_readouts = 0
        self._voice_ended = False
        self.updates: queue.Queue = queue.Queue()
        self.audio_end = 0.0
        self._final_through = 0.0  # the newest final_through_s published
        src = self.config.source
        self._fast_replay = src.kind in ("demo", "file") and src.pace == "fast"
        # (media time, capture ns) of each chunk's first sample: maps word times to capture times
        self._clock_map: list[tuple[float, int]] = []
        self._last_trace: dict[str, int] = {}
        self._halt = threading.Event()
        self.decodes = 0
        self.thread = threading.Thread(target=self._decode_loop, name="asr-decode", daemon=True)
        self.thread.start()

    def _decode_loop(self) -> None:
        last_put = time.monotonic()
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
                last_put = time.monotonic()
            elif time.monotonic() - last_put >= IDLE_HEARTBEAT_S:
                # In a fast replay the source waits for these words: decode the open utterance
                # again (LocalAgreement commits what two hypotheses agree on) before idling.
                redecode = getattr(self.recognizer, "redecode", None)
                if not (self._fast_replay and redecode is not None and redecode()):
                    self.updates.put(_IDLE)
                last_put = time.monotonic()
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
        if self.voice is not None:
            self._voice_step(samples, msg)
        elif not self._voice_ended:  # no voice head here: end the stream so no window waits for it
            self._voice_ended = True
            self.publish_eos(msg.t_media_s, streams=["voice"])

    def _voice_step(self, samples: np.ndarray, msg: Message) -> None:
        opts, sr = self.config.asr, self.config.source.sample_rate
        keep = int(opts.voice_window_s * sr)
        self._voice_audio.append(np.asarray(samples, np.float32).reshape(-1))
        self._voice_samples += self._voice_audio[-1].size
        while self._voice_audio and self._voice_samples - self._voice_audio[0].size >= keep:
            self._voice_samples -= self._voice_audio.pop(0).size
        if self.audio_end + 1e-6 < self._voice_next_t:
            return
        self._voice_next_t = self.audio_end + opts.voice_hop_s
        clip = np.concatenate(self._voice_audio)[-keep:]
        t1 = self.audio_end
        meta: dict = {"t0_s": t1 - clip.size / sr, "t1_s": t1, "valence": None}  # None: no speech here
        if clip.size >= 0.5 * sr and np.isfinite(clip).all():
            rms_db = 20 * np.log10(float(np.sqrt(np.mean(clip.astype(np.float64) ** 2))) + 1e-12)
            valence = self.voice.valence(clip) if rms_db >= opts.voice_min_rms_db else None
            if valence is not None:
                self.voice_readouts += 1
                meta = VoicePayload(meta["t0_s"], t1, valence).to_meta()
        # published in silence too: the message time tells fusion how far the voice has been read
        self.publish(Message("voice_affect", "voice", 0, msg.t_capture_ns, t1, meta=meta, trace=dict(msg.trace)))

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

    def _publish_idle(self) -> None:
        """The recogniser has decoded what it heard and waits for more: words unchanged."""
        payload = WordsPayload(final_through_s=self._final_through, idle=True, heard_through_s=self.audio_end)
        trace = {k: v for k, v in self._last_trace.items() if k != self.name}
        t = self.audio_end
        self.publish(Message("words", "words", 0, self._capture_ns_at(t), t, meta=payload.to_meta(), trace=trace))

    def _publish_update(self, update) -> None:
        payload = WordsPayload(
            committed=list(update.committed),
            partial=list(update.partial),
            utterance_end=bool(update.utterance_end),
            final_through_s=float(update.final_through_s),
            decode_ms=float(update.decode_ms),
            heard_through_s=float(update.audio_end_s or self.audio_end),
        )
        self._final_through = max(self._final_through, payload.final_through_s)
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
            if update is _IDLE:
                self._publish_idle()
            else:
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
        return {"decodes": self.decodes, "audio_end_s": self.audio_end, "voice_readouts": self.voice_readouts}

    def teardown(self) -> None:
        halt = getattr(self, "_halt", None)
        if halt is not None:
            halt.set()
            self.thread.join(timeout=5)
