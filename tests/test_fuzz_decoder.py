"""Fuzzing the wire decoder: whatever arrives on a socket, `decode` either returns a
valid Message or raises MessageError; it never raises anything else and never
allocates in proportion to a size the sender merely declares.

Hypothesis draws 10 000 base cases from four strategies (arbitrary frames,
plausible headers with wrong values, valid messages, arbitrary JSON headers;
derandomized: the same cases on every run). Each base case is then cut and
corrupted in 9 cheap ways (header truncated at 3 points, 2 header bytes flipped,
a buffer cut short, a float buffer filled with NaN, a frame dropped, a frame
added), so the decoder sees 100 000 inputs in all. A hypothesis example costs
about 0.5 ms of engine overhead by itself, so 100 000 separate examples would
take minutes; this way the whole file takes about 20-40 s of CPU.
"""

from __future__ import annotations

import json
import math
import os
import random
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from sentistream.engine.messages import (
    ALLOWED_DTYPES,
    KINDS,
    MAX_ARRAY_BYTES,
    MAX_HEADER_BYTES,
    Message,
    MessageError,
    decode,
    encode,
    now_ns,
)

VARIANTS = 10  # decoder inputs per hypothesis example: the case itself + 9 corruptions
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))  # e.g. FUZZ_SCALE=10 for a longer local run
EXAMPLES = {
    k: max(1, int(v * SCALE)) for k, v in {"raw": 3_000, "structured": 4_000, "mutated": 2_000, "json": 1_000}.items()
}
COUNT: dict[str, int] = {k: 0 for k in EXAMPLES}


def _settings(name: str):
    return settings(
        max_examples=EXAMPLES[name],
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )


def _check(frames: list) -> None:
    """The fuzz oracle for one decoder input."""
    try:
        msg = decode(frames)
    except MessageError:
        return
    # Accepted: everything about it must be sane.
    assert msg.kind in KINDS and isinstance(msg.stream, str)
    assert isinstance(msg.seq, int) and msg.seq >= 0 and math.isfinite(msg.t_media_s)
    total_in = sum(len(bytes(f)) for f in frames[2:])
    total_out = 0
    for a in msg.arrays:
        assert str(a.dtype) in ALLOWED_DTYPES and a.dtype != object
        assert a.nbytes <= MAX_ARRAY_BYTES
        if a.dtype.kind == "f":
            assert np.isfinite(a).all()
        total_out += a.nbytes
    # No array is larger than what actually arrived: nothing is allocated from a declared size.
    assert total_out == total_in


def _fuzz(name: str, frames: list, seed: int) -> None:
    """Check a case and 9 corruptions of it (deterministic from `seed`)."""
    rng = random.Random(seed)
    frames = [bytes(f) for f in frames]
    variants = [frames]
    if len(frames) >= 2:
        head = frames[1]
        for _ in range(3):  # header truncated
            variants.append([frames[0], head[: rng.randint(0, max(0, len(head) - 1))], *frames[2:]])
        for _ in range(2):  # header bytes flipped
            h = bytearray(head) or bytearray(b"{")
            for _ in range(rng.randint(1, 3)):
                h[rng.randrange(len(h))] = rng.randrange(256)
            variants.append([frames[0], bytes(h), *frames[2:]])
    while len(variants) < 6:
        variants.append([bytes([rng.randrange(256)]) * rng.randint(0, 3) for _ in range(rng.randint(0, 4))])
    bufs = frames[2:]
    i = 2 + rng.randrange(len(bufs)) if bufs else None
    cut = list(frames)
    if i is not None:
        cut[i] = cut[i][: max(0, len(cut[i]) - rng.randint(1, 9))]
    variants.append(cut)  # a buffer cut short
    nan = list(frames)
    if i is not None:
        nan[i] = (b"\x00\x00\xc0\x7f" * (len(nan[i]) // 4 + 1))[: len(nan[i])]  # float32 NaN bytes
    variants.append(nan)
    variants.append(frames[:-1])  # the last frame dropped
    variants.append([*frames, bytes(rng.randint(0, 16))])  # an extra frame
    assert len(variants) == VARIANTS
    for v in variants:
        _check(v)
    COUNT[name] += len(variants)


# ---- strategy 1: arbitrary frames --------------------------------------------------------------

_raw_frame = st.one_of(st.binary(max_size=48), st.sampled_from([b"audio", b"video", b"events", b"{}", b""]))


@_settings("raw")
@given(st.lists(_raw_frame, max_size=6), st.integers(0, 2**32))
def test_fuzz_raw_frames(frames, seed):
    _fuzz("raw", frames, seed)


# ---- strategy 2: structurally plausible headers with wrong values -------------------------------
# Pools of interesting values, drawn by index: far cheaper for hypothesis than nested one_of's.

DTYPES = sorted(ALLOWED_DTYPES) * 3 + ["object", "O", "float16", "complex128", "<f4", "S4", "V8", "", 7, None]
DIMS = [
    0,
    1,
    2,
    3,
    4,
    7,
    16,
    -1,
    -3,
    2**31,
    2**63,
    2**70,
    MAX_ARRAY_BYTES,
    MAX_ARRAY_BYTES + 1,
    7680,
    4320,
    1.5,
    float("nan"),
    True,
    None,
    "3",
    [2],
]
SHAPES = [[], [0], [1], [4], [2, 3], [1, 1, 3], [0, 2**40], [2, 2, 2, 2], [1, 1, 1, 1, 1], 4, "4", None, {}]
VALUES = [0, 1, 7, 2**63, 2**70, -1, 1.5, -0.5, float("inf"), float("nan"), True, False, None, "1", [], {}]
METAS = [
    {},
    {"k": "v"},
    {"present": True, "reason": ""},
    {"committed": [{"text": "hi"}]},
    [],
    [1],
    "x",
    3,
    None,
    {"x": float("nan")},
    {"deep": [[[[[[[]]]]]]]},
]
TRACES = [{}, {"media": 1}, {"a": 2**70}, {"a": "b"}, {"a": 1.5}, {"a": True}, {"a": None}, [], "x", None]


_S = {  # strategies built once: building them inside the composite costs more than drawing
    "kind": st.sampled_from(sorted(KINDS) + ["pickle", "", "EVENT"]),
    "topic": st.sampled_from(["audio", "video", "events", "face"]),
    "n_arrays": st.sampled_from([0, 1, 1, 2, 3, 9]),
    "d10": st.integers(0, 9),
    "d4": st.integers(0, 3),
    "d20": st.integers(0, 19),
    "ndim": st.integers(0, 5),
    "odd_descr": st.sampled_from([None, 3, "x", {}, {"dtype": "uint8"}]),
    "odd_arrays": st.sampled_from([None, {}, "x", 3]),
    "dtype": st.sampled_from(DTYPES),
    "dim": st.sampled_from(DIMS),
    "shape": st.sampled_from(SHAPES),
    "v": st.sampled_from([1, 1, 1, 0, 2, "1", None, True, 1.0]),
    "stream": st.sampled_from(["audio", "x", "", None, 1]),
    "value": st.sampled_from(VALUES),
    "meta": st.sampled_from(METAS),
    "trace": st.sampled_from(TRACES),
    "drop": st.lists(
        st.sampled_from(["v", "kind", "stream", "seq", "t_capture_ns", "t_media_s", "arrays", "meta", "trace"]),
        max_size=2,
    ),
    "extra": st.sampled_from([0, 0, 0, -1, 1]),
    "size": st.integers(0, 64),
    "delta": st.sampled_from([0, 0, 0, -1, 1, -3]),
    "fill": st.sampled_from([0, 0x7F, 0xFF]),  # 0x7F.. / 0xFF.. bytes are NaN as floats
}


@st.composite
def _structured(draw):
    S = _S
    topic = draw(S["topic"])
    descrs: object = []
    for _ in range(draw(S["n_arrays"])):
        if draw(S["d10"]) == 0:
            descrs.append(draw(S["odd_descr"]))
        elif draw(S["d4"]) == 0:
            descrs.append({"dtype": draw(S["dtype"]), "shape": [draw(S["dim"]) for _ in range(draw(S["ndim"]))]})
        else:
            descrs.append({"dtype": draw(S["dtype"]), "shape": draw(S["shape"])})
    if draw(S["d20"]) == 0:
        descrs = draw(S["odd_arrays"])
    header = {
        "v": draw(S["v"]),
        "kind": draw(S["kind"]),
        "stream": topic if draw(S["d10"]) else draw(S["stream"]),
        "seq": draw(S["value"]),
        "t_capture_ns": draw(S["value"]),
        "t_media_s": draw(S["value"]),
        "arrays": descrs,
        "meta": draw(S["meta"]),
        "trace": draw(S["trace"]),
    }
    for key in draw(S["drop"]):
        header.pop(key, None)
    head = json.dumps(header, allow_nan=True).encode()
    n = len(descrs) if isinstance(descrs, list) else 0
    buffers = []
    for i in range(max(0, n + draw(S["extra"]))):
        d = descrs[i] if i < n else None
        size = 0
        if isinstance(d, dict) and isinstance(d.get("shape"), list):
            try:
                itemsize = np.dtype(d["dtype"]).itemsize if d.get("dtype") in ALLOWED_DTYPES else 1
                size = math.prod(int(s) for s in d["shape"]) * itemsize
            except (TypeError, ValueError, OverflowError):
                size = 0
        if not 0 <= size <= 4096:
            size = draw(S["size"])
        size = max(0, size + draw(S["delta"]))
        buffers.append(bytes([draw(S["fill"])]) * size)
    return [topic.encode(), head, *buffers]


@_settings("structured")
@given(_structured(), st.integers(0, 2**32))
def test_fuzz_structured_headers(frames, seed):
    _fuzz("structured", frames, seed)


# ---- strategy 3: valid messages (then corrupted by _fuzz) ----------------------------------------

_arrays = st.lists(
    st.tuples(
        st.sampled_from(["uint8", "int16", "int32", "float32", "float64", "bool", "int64"]),
        st.lists(st.integers(0, 5), max_size=3),
    ),
    max_size=3,
)


@_settings("mutated")
@given(_arrays, st.sampled_from(sorted(KINDS)), st.integers(0, 2**40), st.integers(0, 2**32))
def test_fuzz_valid_messages_and_their_corruptions(arrays, kind, seq, seed):
    rng = np.random.default_rng(seed)
    arrs = [(rng.random(shape) * 100).astype(dtype) for dtype, shape in arrays]
    msg = Message(kind, "audio", seq, now_ns(), 1.5, arrs, {"k": "v"}, {"media": 1})
    frames = encode(msg)
    out = decode([bytes(f) for f in frames])  # the uncorrupted message round-trips
    assert out.seq == seq and all(np.array_equal(a, b) for a, b in zip(out.arrays, arrs))
    _fuzz("mutated", frames, seed)


# ---- strategy 4: arbitrary JSON (and near-JSON) in the header frame ---------------------------------

_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8))
_json_value = st.recursive(
    _json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=8
)
_header_text = st.one_of(
    _json_value.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"NaN", b'{"v":NaN}', b'{"v":1,"seq":Infinity}', b"[" * 5000, b"1e999", b"9" * 5000, b"\xff\xfe"]),
)


@_settings("json")
@given(
    st.sampled_from([b"audio", b"\xff", b""]),
    _header_text,
    st.lists(st.binary(max_size=8), max_size=2),
    st.integers(0, 2**32),
)
def test_fuzz_header_json(topic, head, buffers, seed):
    _fuzz("json", [topic, head, *buffers], seed)


def test_fuzz_case_count():
    """Runs after the four fuzz tests (file order): the decoder really saw 100 000 inputs."""
    if any(n == 0 for n in COUNT.values()):
        pytest.skip("run together with the fuzz tests")
    assert sum(COUNT.values()) >= VARIANTS * sum(EXAMPLES.values()), COUNT
    if SCALE >= 1:
        assert sum(COUNT.values()) >= 100_000, COUNT


# ---- targeted: sizes a peer declares are never allocated -------------------------------------------


def _header(arrays, **over):
    h = {
        "v": 1,
        "kind": "audio_chunk",
        "stream": "audio",
        "seq": 0,
        "t_capture_ns": 1,
        "t_media_s": 0.0,
        "arrays": arrays,
        "meta": {},
        "trace": {},
    }
    h.update(over)
    return json.dumps(h).encode()


@pytest.mark.parametrize(
    "shape,dtype",
    [
        ([2**31, 2**31], "float64"),
        ([MAX_ARRAY_BYTES], "float64"),
        ([7680, 4320, 3, 2], "uint8"),
        ([0, MAX_ARRAY_BYTES, MAX_ARRAY_BYTES], "float64"),
        ([MAX_ARRAY_BYTES] * 4, "uint8"),
    ],
)
def test_huge_declared_sizes_allocate_nothing(shape, dtype):
    frames = [b"audio", _header([{"dtype": dtype, "shape": shape}]), b"\x00" * 16]
    tracemalloc.start()
    try:
        for _ in range(50):
            try:
                decode(frames)
            except MessageError:
                pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, peak


def test_oversized_header_is_refused_before_parsing():
    frames = [b"audio", b" " * (MAX_HEADER_BYTES + 1)]
    with pytest.raises(MessageError, match="exceeds"):
        decode(frames)


def test_non_finite_floats_are_refused_with_a_clear_message():
    for bad in (np.nan, np.inf, -np.inf):
        a = np.zeros(16, np.float32)
        a[3] = bad
        frames = [b"audio", _header([{"dtype": "float32", "shape": [16]}]), a.tobytes()]
        with pytest.raises(MessageError, match="non-finite"):
            decode(frames)
    with pytest.raises(MessageError, match="NaN"):
        decode([b"audio", _header([], meta={"x": float("nan")})])  # json.dumps writes a bare NaN


def test_non_buffer_frames_are_message_errors():
    for frames in ([b"audio", 12], [None, b"{}"], [b"audio", _header([{"dtype": "uint8", "shape": [1]}]), object()]):
        with pytest.raises(MessageError):
            decode(frames)


def test_1x1_and_8k_frames_decode_zero_copy():
    for h, w in ((1, 1), (4320, 7680)):
        frame = np.full((h, w, 3), 7, np.uint8)
        frames = encode(Message("video_frame", "video", 0, now_ns(), 0.0, [frame]))
        out = decode(frames)
        assert out.arrays[0].shape == (h, w, 3)
        assert np.shares_memory(out.arrays[0], frame) or out.arrays[0].ctypes.data == frame.ctypes.data
    too_big = [
        b"video",
        _header([{"dtype": "uint8", "shape": [4321, 7680, 3]}], kind="video_frame", stream="video"),
        b"",
    ]
    with pytest.raises(MessageError, match="exceeds the limit"):
        decode(too_big)
