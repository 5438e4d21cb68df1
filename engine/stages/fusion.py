"""Fusion stage: gathers the latest window of each modality by stream time and
emits sentiment events on a PUB socket (JSON in the message meta).

``window.trigger = "clock"`` (default): the stream clock is the newest face or
audio-feature time seen; each time it passes a hop boundary, the window ending
there is cut and scored (one event per hop, on a fixed grid of stream time).
``"frame"``: a window ends at each face frame as it arrives, at most one per
``hop_s`` (windowing.FrameTrigger), so a frame is scored without waiting for a
grid point: the low-latency profile (configs/low_latency.toml).

Stage param ``complete_windows`` (a file replayed with ``--pace fast``, clock mode): the clock
is the *slowest* live input instead of the newest, and for the words it is the recogniser's
``final_through_s``, so a window is cut only once every input has delivered all it will for
it: the transcript is in the window its words were spoken in, not late as at real-time pace.
An input that makes no progress for ``COMPLETE_STALL_S`` while it is idle (a recogniser that
has decoded all it heard and waits for audio the source holds back) no longer holds windows up:
they are cut as they are due, and counted. One that is behind (starved of CPU on a loaded
machine, or paused) is waited for, up to ``COMPLETE_BEHIND_S`` of silence: cutting its windows
would leave its words out of every event.
"""

from __future__ import annotations

import logging
import math
import time

from ...models.late_fusion import (
    UtteranceCarry,
    attribution_shares,
    confidence,
    fuse,
    occlusion_attributions,
    sentiment_label,
)
from ...payloads import FacePayload, VoicePayload, Word, WordsPayload
from ...perception.text import BackgroundTextEncoder
from ..messages import Message, now_ns
from ..stage import FatalStageError, Stage
from ..windowing import CompleteClock, FrameTrigger, WindowBuffer

log = logging.getLogger("sentistream.fusion")

EVENT_SCHEMA = "sentistream.event/1"
STREAM_KIND = {"face": "face_features", "audio_feat": "audio_features", "words": "words"}
COMPLETE_STALL_S = 2.0  # wall seconds without progress from an idle input before windows stop waiting
COMPLETE_BEHIND_S = 30.0  # ... from one that is behind (or dead: the supervisor restarts it meanwhile)


def _ms(a_ns: int, b_ns: int) -> float:
    return round((b_ns - a_ns) / 1e6, 3)


class FusionStage(Stage):
    def setup(self) -> None:
        import torch

        from ...models.live import LiveModel
        from ...perception.audio_features import feature_dim
        from ...perception.face import FACE_FEATURE_DIM
        from ...perception.text import TextEncoder
        from ..live_backend import live_backend

        torch.set_num_threads(max(1, self.config.fusion.threads))
        w = self.config.window
        self.audio_dim = feature_dim(self.config.audio_features)
        self.buffer = WindowBuffer(
            w.length_s,
            w.hop_s,
            FACE_FEATURE_DIM,
            self.audio_dim,
            text_lookback_s=w.text_lookback_s,
            text_context=w.text_context,
            utterance_pause_s=w.utterance_pause_s,
        )
        self.new_words: list[Word] = []  # committed since the previous event
        self.carry = UtteranceCarry(w.carry_words)
        self.trigger = FrameTrigger(w.hop_s) if w.trigger == "frame" else None
        self.last_t1 = 0.0  # the newest window end scored (the closing event repeats it)
        try:
            encoder = TextEncoder(self.config.text)
            if self.config.text.background:
                encoder = BackgroundTextEncoder(encoder)  # a changed transcript never delays an event
            self.model = LiveModel(
                self.config.fusion,
                encoder,
                FACE_FEATURE_DIM,
                self.audio_dim,
                backend_factory=live_backend(self.config.fusion),
            )
        except (FileNotFoundError, ValueError) as exc:
            # A missing model file or a checkpoint that does not fit its text encoder: a restart
            # cannot fix it, so the graph stops with the reason instead of respawning this stage.
            raise FatalStageError(f"fusion: {exc}") from None
        self.model.warm_up()
        self.expected_inputs = set(self.params.expected_inputs)
        self.complete = self.params.complete_windows and self.trigger is None
        # The voice readouts are waited for like any input (the ASR stage ends the stream at once
        # when it has no voice head, e.g. with a Whisper server).
        self.complete_clock = CompleteClock(self.expected_inputs, COMPLETE_STALL_S, COMPLETE_BEHIND_S)
        self.face_valence: list[tuple[float, float]] = []  # (frame time, valence), newest last
        self.voice_valence: list[VoicePayload] = []
        self._stall_logged = False
        self.stalled_windows = 0  # complete mode: windows cut before a stalled input caught up
        self.ended: set[str] = set()
        self.lost: dict[str, str] = {}  # modality -> why its input ended (e.g. device_lost)
        self.clock = 0.0
        self.event_seq = 0
        # The newest message of each stream and when it arrived here (latency breakdown).
        self.latest: dict[str, tuple[Message, int]] = {}
        extra = self.params.events_address
        if extra and self.pub is not None:
            self.pub.bind(extra)  # the public address agents and dashboards subscribe to

    # ---- inputs ------------------------------------------------------------
    def on_message(self, msg: Message) -> None:
        arrived = now_ns()
        if self.trigger is None and not self.latest and msg.kind in ("face_features", "audio_features"):
            # First data (a fresh session, or this stage was restarted mid-session):
            # windows start at the next hop boundary, never back at zero.
            hop = self.buffer.hop_s
            self.buffer.next_t1 = max(hop, math.ceil(msg.t_media_s / hop - 1e-9) * hop)
        if msg.kind == "voice_affect":
            voice = VoicePayload.from_meta(msg.meta)
            if voice is not None:
                self.voice_valence.append(voice)
            # a readout (or a silent stretch) up to t_media_s: complete windows may pass it
            self.complete_clock.advance(msg.stream, msg.t_media_s, time.monotonic())
            if self.complete:
                self._emit_due()
            return
        if msg.kind == "face_features" and msg.arrays:
            face = FacePayload.from_meta(msg.meta)
            self.buffer.add_vision(msg.t_media_s, msg.arrays[0], face.present)
            if face.valence is not None:
                self.face_valence.append((msg.t_media_s, face.valence))
            self.clock = max(self.clock, msg.t_media_s)
        elif msg.kind == "audio_features" and len(msg.arrays) == 2:
            self.buffer.add_audio(msg.arrays[1], msg.arrays[0])
            self.clock = max(self.clock, msg.t_media_s)
        elif msg.kind == "words":
            words = WordsPayload.from_meta(msg.meta, default_through_s=msg.t_media_s)
            if words.idle:  # a heartbeat: the words are unchanged, the recogniser waits for audio
                self.complete_clock.advance("words", words.final_through_s, time.monotonic(), words.heard_through_s)
                if self.complete:
                    self._emit_due()
                return
            self.complete_clock.advance("words", words.final_through_s, time.monotonic())
            self.buffer.add_words(words.committed, words.partial, words.utterance_end)
            self.new_words.extend(words.committed)
            if self.expected_inputs <= {"words"}:
                self.clock = max(self.clock, msg.t_media_s)
        else:
            return
        if msg.kind != "words":
            self.complete_clock.advance(msg.stream, msg.t_media_s, time.monotonic())
        self.latest[msg.stream] = (msg, arrived)
        if self.trigger is None:
            self._emit_due()
            return
        t1 = self.trigger.on_input(msg.kind, msg.t_media_s)
        if t1 is not None:
            self._emit(t1)
            self.buffer.prune(t1 - self.buffer.length_s - 1.0)

    def on_eos(self, msg: Message) -> None:
        reason = msg.meta.get("reason")
        if reason:
            modality = {"face": "vision", "audio_feat": "audio", "words": "text"}.get(msg.stream, msg.stream)
            if modality not in self.lost:
                log.error("fusion: %s input ended (%s); it is masked from now on", modality, reason)
            self.lost[modality] = str(reason)
        self.ended.add(msg.stream)
        if self.trigger is not None:
            self.trigger.end(STREAM_KIND.get(msg.stream, msg.stream))
        self.clock = max(self.clock, msg.t_media_s)
        if self.expected_inputs and self.ended >= self.expected_inputs:
            if self.trigger is None:
                self._emit_due(final=True)
            else:
                last = self.trigger.closing(self.clock)
                if last is not None:
                    self._emit(last)
            if self.new_words:
                # Words committed after the last window (the recogniser's final decode):
                # one closing event re-scores the last window so no word is lost.
                encoder = self.model.text_encoder
                if isinstance(encoder, BackgroundTextEncoder):  # ... and is read by the model
                    encoder.settle(self.buffer.cut(self.last_t1).context_text)
                self._emit(self.last_t1, final=True)
            self.publish_eos(self.clock)
            self.ended.clear()
            if self.trigger is not None:
                self.trigger.ended.clear()

    def on_idle(self) -> None:
        if self.complete and self.latest:
            self._emit_due()  # a stalled input's grace period may have run out

    def stats_extra(self) -> dict:
        return {"stalled_windows": self.stalled_windows} if self.complete else {}

    # ---- output ------------------------------------------------------------
    def _emit_due(self, final: bool = False) -> None:
        clock, stalled = self.clock, []
        if self.complete:
            clock, stalled = self.complete_clock.clock(self.clock, time.monotonic(), self.ended)
        due = self.buffer.due_windows(clock + (self.buffer.hop_s * 0.5 if final else 0.0))
        if stalled and due:
            if not self._stall_logged:  # once per stall
                self._stall_logged = True
                log.warning(
                    "fusion: %s made no progress for %.0f s (stuck at %.2f s of stream time): "
                    "windows are cut without waiting for it until it moves (stats: stalled_windows)",
                    ", ".join(stalled),
                    self.complete_clock.silent_s(time.monotonic()),
                    self.complete_clock.slowest,
                )
            self.stalled_windows += len(due)
        elif not stalled:
            self._stall_logged = False
        for t1 in due:
            self._emit(t1)
        self.buffer.prune(self.buffer.next_t1 - self.buffer.length_s - 1.0)

    def _emit(self, t1: float, final: bool = False) -> None:
        t_start = now_ns()
        self.last_t1 = t1
        window = self.buffer.cut(t1)
        pred = self.model.predict(window)
        has_text = bool(window.context) if pred.text is None else bool(pred.text)
        readouts = {
            "text": round(pred.score / 3.0, 4) if has_text else None,
            "voice": self._voice_now(window.t0, window.t1),
            "face": self._mean_face(window.t0, window.t1),
        }
        context = window.context_text if pred.text is None else pred.text
        # early in an utterance the previous one's score counts too (window.carry_words)
        text_score = self.carry.text_score(context, pred.score if has_text else None)
        occluded = {k: self.carry.blend(v) for k, v in pred.occluded.items()} if pred.occluded else pred.occluded
        fused = fuse(text_score, readouts["voice"], readouts["face"])
        attributions = (
            occlusion_attributions(text_score, readouts["voice"], readouts["face"], occluded)
            if self.model.attribution
            else None
        )
        present = (has_text, readouts["voice"] is not None, readouts["face"] is not None)
        t_emit = now_ns()
        event = {
            "schema": EVENT_SCHEMA,
            "seq": self.event_seq,
            "window": {"t0": round(window.t0, 6), "t1": round(window.t1, 6)},
            "score": round(fused.score, 4),
            "label": sentiment_label(fused.score, self.config.fusion.neutral_band),
            "confidence": round(confidence(fused.score, present, self.model.placeholder), 4),
            "contributions": {
                k: round(v, 4)
                for k, v in (attribution_shares(attributions) if attributions else fused.weights()).items()
            },
            "readouts": readouts,
            "modalities": {
                "text": has_text,
                "audio": bool(window.audio.shape[0]),
                "vision": bool(window.vision_present.any()) if window.vision_present.size else False,
            },
            "transcript": window.transcript,
            "partial": " ".join(w.text.strip() for w in window.partial).strip(),
            "words": [
                {"text": w.text.strip(), "start_s": round(w.start_s, 3), "end_s": round(w.end_s, 3)}
                for w in window.words
            ],
            "new_words": [
                {"text": w.text.strip(), "start_s": round(w.start_s, 3), "end_s": round(w.end_s, 3)}
                for w in self.new_words
            ],
            "context": context,
            "model": self.model.describe(),
            "latency_ms": self._latency(t_start, t_emit, pred),
            "t_emit_ns": t_emit,
        }
        if attributions is not None:
            event["attributions"] = {k: round(v, 4) for k, v in attributions.items()}
        if final:
            event["final"] = True
        if self.lost:
            event["ended"] = dict(self.lost)
        self.event_seq += 1
        self.new_words = []
        horizon = window.t1 - 2 * self.buffer.length_s  # readouts older than any next window: dropped
        self.face_valence = [fv for fv in self.face_valence if fv[0] > horizon]
        self.voice_valence = [v for v in self.voice_valence if v.t1_s > horizon]
        capture = max((m.t_capture_ns for m, _ in self.latest.values()), default=t_emit)
        self.publish(Message("event", "events", 0, capture, t1, meta=event))

    def _mean_face(self, t0: float, t1: float) -> float | None:
        values = [v for t, v in self.face_valence if t0 < t <= t1]
        return round(sum(values) / len(values), 4) if values else None

    def _voice_now(self, t0: float, t1: float) -> float | None:
        """The voice now: the newest readout that ends inside the window (each covers the
        voice_window_s of audio before it), not a mean over older speech."""
        values = [v.valence for v in self.voice_valence if t0 < v.t1_s <= t1]
        return round(values[-1], 4) if values else None

    def _latency(self, t_start: int, t_emit: int, pred) -> dict:
        """capture -> each stage -> emit, in ms, for the newest input of each stream."""
        out: dict[str, object] = {}
        for stream, (msg, arrived) in self.latest.items():
            stages = {k: v for k, v in sorted(msg.trace.items(), key=lambda kv: kv[1])}
            steps: dict[str, float] = {}
            prev = msg.t_capture_ns
            for stage_name, t in stages.items():
                steps[stage_name] = _ms(prev, t)
                prev = t
            steps["to_fusion"] = _ms(prev, arrived)
            steps["capture_to_emit"] = _ms(msg.t_capture_ns, t_emit)
            out[stream] = steps
        out["text_encoder"] = round(pred.text_ms, 3)
        out["model"] = round(pred.model_ms, 3)
        out["fusion"] = _ms(t_start, t_emit)
        newest = max((m.t_capture_ns for m, _ in self.latest.values()), default=t_emit)
        out["capture_to_emit"] = _ms(newest, t_emit)
        return out
