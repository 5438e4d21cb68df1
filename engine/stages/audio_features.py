"""Audio feature stage: audio chunks -> per-frame spectral features (streaming)."""

from __future__ import annotations

import numpy as np

from ..messages import Message
from ..stage import Stage


class AudioFeatureStage(Stage):
    def setup(self) -> None:
        from ...perception.audio_features import make_audio_extractor

        self.extractor = make_audio_extractor(self.config.audio_features)
        self.expected_t: float | None = None
        self.last_msg: Message | None = None

    def on_message(self, msg: Message) -> None:
        if msg.kind != "audio_chunk" or not msg.arrays:
            return
        samples = msg.arrays[0]
        sr = self.config.audio_features.sample_rate
        # A gap (dropped chunk, restarted source) must not be stitched into one frame.
        if self.expected_t is not None and abs(msg.t_media_s - self.expected_t) > 0.5 * samples.size / sr + 1e-3:
            self.extractor.reset()
        self.expected_t = msg.t_media_s + samples.size / sr
        self.last_msg = msg
        self._publish(self.extractor.process(samples, msg.t_media_s), msg)

    def _publish(self, frames, msg: Message) -> None:
        if frames.features.shape[0] == 0:
            return
        self.publish(
            Message(
                "audio_features",
                "audio_feat",
                0,
                msg.t_capture_ns,
                float(frames.times_s[-1]),
                [np.asarray(frames.features, dtype=np.float32), np.asarray(frames.times_s, dtype=np.float64)],
                trace=dict(msg.trace),
            )
        )

    def on_eos(self, msg: Message) -> None:
        if self.last_msg is not None:
            self._publish(self.extractor.flush(), self.last_msg)
        self.extractor.reset()
        self.expected_t = None
        self.publish_eos(msg.t_media_s)
