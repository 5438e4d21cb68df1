"""Wire format: round trips, and every malformed input is a MessageError, never a crash."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sentistream.engine.messages import MAX_ARRAY_BYTES, Message, MessageError, decode, encode, now_ns


def _roundtrip(msg: Message) -> Message:
    frames = [bytes(f) for f in encode(msg)]
    return decode(frames)


def test_roundtrip_arrays_meta_trace():
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    times = np.arange(5, dtype=np.float64)
    msg = Message("video_frame", "video", 7, now_ns(), 1.25, [frame, times], {"k": [1, "x"]}, {"media": 5})
    out = _roundtrip(msg)
    assert out.kind == "video_frame" and out.stream == "video" and out.seq == 7
    assert out.t_media_s == 1.25 and out.meta == {"k": [1, "x"]} and out.trace == {"media": 5}
    np.testing.assert_array_equal(out.arrays[0], frame)
    np.testing.assert_array_equal(out.arrays[1], times)


def test_empty_and_zero_size_arrays():
    out = _roundtrip(Message("audio_chunk", "audio", 0, 1, 0.0, [np.zeros(0, np.float32)]))
    assert out.arrays[0].shape == (0,)


def test_encode_refuses_object_arrays_and_unknown_kinds():
    with pytest.raises(MessageError):
        encode(Message("video_frame", "video", 0, 1, 0.0, [np.array([object()])]))
    with pytest.raises(MessageError):
        encode(Message("pickle", "video", 0, 1, 0.0))


def _header(**over):
    h = {
        "v": 1,
        "kind": "audio_chunk",
        "stream": "audio",
        "seq": 0,
        "t_capture_ns": 1,
        "t_media_s": 0.0,
        "arrays": [{"dtype": "float32", "shape": [4]}],
        "meta": {},
        "trace": {},
    }
    h.update(over)
    return json.dumps(h).encode()


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b"audio"],
        [b"audio", b"not json"],
        [b"audio", b"[1,2]"],
        [b"\xff\xfe", _header()],
        [b"audio", _header(v=99), bytes(16)],
        [b"audio", _header(kind="pickle"), bytes(16)],
        [b"video", _header(), bytes(16)],  # topic / stream mismatch
        [b"audio", _header(seq=-1), bytes(16)],
        [b"audio", _header(seq="1"), bytes(16)],
        [b"audio", _header(t_media_s="nan"), bytes(16)],
        [b"audio", _header(), bytes(15)],  # truncated buffer
        [b"audio", _header()],  # missing buffer
        [b"audio", _header(), bytes(16), bytes(16)],  # extra buffer
        [b"audio", _header(arrays=[{"dtype": "object", "shape": [4]}]), bytes(16)],
        [b"audio", _header(arrays=[{"dtype": "float32", "shape": [1 << 40, 1 << 40]}]), bytes(16)],
        [b"audio", _header(arrays=[{"dtype": "float32", "shape": [MAX_ARRAY_BYTES]}]), bytes(16)],
        [b"audio", _header(arrays=[{"dtype": "float32", "shape": [-4]}]), bytes(16)],
        [b"audio", _header(arrays=[{"dtype": "float32", "shape": [1, 1, 1, 1, 4]}]), bytes(16)],
        [b"audio", _header(meta=[1]), bytes(16)],
        [b"audio", _header(trace={"x": "y"}), bytes(16)],
        [b"audio", b"{" * 100000],
    ],
)
def test_malformed_frames_raise_message_error(frames):
    with pytest.raises(MessageError):
        decode(frames)
