"""Fusion backends: every available backend matches eager on real inputs; selection and fallbacks.

Inputs are built the way the live engine builds them (LiveModel.inputs_for): MiniLM token
embeddings of real sentences (perception/text.py), spectral features of espeak-ng speech
(perception/audio_features.py), face-mesh features of a real face (perception/face.py) or no face.

Tolerances (absolute, score and contributions): 1e-4 for fp32 backends (onnxruntime, compile), 3e-2
for TensorRT fp16 (engine/backends.py TOLERANCE).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import types
from math import gcd

import numpy as np
import pytest
import torch

from sentistream.engine import backends as B
from sentistream.engine.backends import (
    BackendOptions,
    BackendUnavailable,
    CompileBackend,
    EagerBackend,
    OnnxRuntimeBackend,
    ShapePlan,
    collate,
    select_backend,
)
from sentistream.engine.config import ConfigError, FusionConfig, config_from_dict
from sentistream.engine.windowing import Window
from sentistream.payloads import Word

MODELS = ["almt", "tfn"]  # the live model's architecture and a baseline (an LSTM, a tensor fusion)
TOL = 1e-4

SENTENCES = [
    "I really love this movie, it is wonderful and amazing. The acting was brilliant and I am very happy.",
    "okay",
    "This film was terrible, boring and awful, I hated it, and the acting was the worst I have seen "
    "in years, what a horrible waste of time, I am so disappointed with everything about it, the "
    "story, the music, the dialogue, the pacing, and the ending, which made no sense at all.",
]


# ------------------------------------------------------------------------------ real inputs
def _speech_features() -> np.ndarray:
    """[T, 59] audio features of ~3 s of espeak-ng speech (a tone if espeak-ng is missing)."""
    from sentistream.perception.audio_features import AudioFeatureExtractor

    sr = 16000
    x = None
    if shutil.which("espeak-ng"):
        import tempfile

        import scipy.io.wavfile
        import scipy.signal

        with tempfile.TemporaryDirectory() as tmp:
            wav = f"{tmp}/s.wav"
            subprocess.run(["espeak-ng", "-w", wav, SENTENCES[0]], check=True, capture_output=True, timeout=60)
            rate, pcm = scipy.io.wavfile.read(wav)
        x = pcm.astype(np.float64) / 32768.0
        g = gcd(sr, rate)
        x = scipy.signal.resample_poly(x, sr // g, rate // g).astype(np.float32)
    if x is None:
        t = np.arange(3 * sr) / sr
        x = (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32)
    ex = AudioFeatureExtractor()
    a, b = ex.process(x[: 3 * sr], 0.0), ex.flush()
    return np.vstack([a.features, b.features]).astype(np.float32)


def _face_features(n: int) -> np.ndarray:
    """[n, D] face-mesh features of the astronaut, panned a few pixels per frame."""
    from skimage import data

    from sentistream.perception.face import FaceFeatureExtractor

    photo = data.astronaut()
    out = []
    with FaceFeatureExtractor() as ex:
        for k in range(n):
            frame = np.zeros((480, 640, 3), np.uint8)
            dx = k % 5
            frame[:, 64 + dx : 576 + dx] = photo[:480]
            out.append(ex.extract(frame).features)
    return np.stack(out).astype(np.float32)


@pytest.fixture(scope="module")
def encoder():
    from sentistream.perception.text import TextEncoder

    return TextEncoder()


@pytest.fixture(scope="module")
def windows() -> list[Window]:
    from sentistream.perception.face import FACE_FEATURE_DIM

    audio = _speech_features()
    faces = _face_features(8)
    vision = np.concatenate([faces] * 6)[:45]

    def words(text: str) -> list[Word]:
        return [Word(w, 0.1 * i, 0.1 * i + 0.08) for i, w in enumerate(text.split())]

    no_face = np.zeros((45, FACE_FEATURE_DIM), np.float32)
    return [
        Window(0.0, 3.0, vision, np.ones(45, bool), audio, context=words(SENTENCES[0])),  # all three
        Window(0.0, 3.0, no_face, np.zeros(45, bool), audio[:90], context=words(SENTENCES[1])),  # no face
        Window(0.0, 3.0, vision[:20], np.ones(20, bool), audio[:40]),  # no words yet
        Window(0.0, 3.0, vision, np.ones(45, bool), audio, context=words(SENTENCES[2])),  # long text
    ]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("backend-cache")


def _live(name: str, encoder, **cfg):
    from sentistream.engine.live_backend import live_backend
    from sentistream.models.live import LiveModel
    from sentistream.perception.audio_features import feature_dim
    from sentistream.perception.face import FACE_FEATURE_DIM

    fusion = FusionConfig(model=name, **cfg)
    return LiveModel(fusion, encoder, FACE_FEATURE_DIM, feature_dim(), backend_factory=live_backend(fusion))


@pytest.fixture(scope="module")
def live_models(encoder):
    return {name: _live(name, encoder, backend="eager") for name in MODELS}


@pytest.fixture(scope="module")
def inputs(live_models, windows):
    """Per model: the windows' inputs, one by one and collated into one batch."""
    out = {}
    for name, lm in live_models.items():
        items = [lm.inputs_for(w)[0] for w in windows]
        out[name] = items
    return out


def _close(a, b, tol: float) -> None:
    assert a.score.shape == b.score.shape and a.contributions.shape == b.contributions.shape
    ds = (a.score.cpu() - b.score.cpu()).abs().max().item()
    dc = (a.contributions.cpu() - b.contributions.cpu()).abs().max().item()
    assert ds <= tol and dc <= tol, f"score diff {ds:.2e}, contributions diff {dc:.2e} > {tol}"


def test_real_inputs_cover_buckets_and_missing_modalities(inputs):
    items = inputs["almt"]
    text_lengths = [x.text.shape[1] for x in items]
    assert text_lengths[2] == 1 and not items[2].text_mask.any()  # no words: an absent modality
    assert not items[1].vision_mask.any()  # no face
    assert max(text_lengths) > 64  # the long transcript lands in the 128 bucket
    plan = BackendOptions.from_config(FusionConfig()).plan()
    assert len({plan.seq_shape([x.shape[1] for x in it.sequences()]) for it in items}) >= 3


@pytest.mark.parametrize("name", MODELS)
def test_onnxruntime_matches_eager(name, live_models, inputs, cache_dir):
    model = live_models[name].model
    plan = BackendOptions.from_config(FusionConfig()).plan()
    backend = OnnxRuntimeBackend(model, plan, threads=1, cache_dir=cache_dir, prebuild="none")
    eager = EagerBackend(model)
    for x in inputs[name]:
        _close(backend(x), eager(x), TOL)
    batch = collate(inputs[name], plan)  # what the fusion server runs: mixed lengths, one batch
    _close(backend(batch), eager(batch), TOL)
    assert backend.exported >= 2
    # a second backend on the same weights reuses the exported graphs
    again = OnnxRuntimeBackend(model, plan, threads=1, cache_dir=cache_dir, prebuild="none")
    _close(again(inputs[name][0]), eager(inputs[name][0]), TOL)
    assert again.exported == 0


@pytest.mark.parametrize("name", MODELS)
def test_compile_padding_and_batch_buckets_match_eager(name, live_models, inputs):
    """The compile backend's padding, batch buckets and graph capture (dynamo's eager backend:
    no code generation, which the slow test below covers)."""
    model = live_models[name].model
    plan = ShapePlan((128,), (60,), (45,), max_batch=8)  # one text bucket: two graphs (batch 1, 4)
    backend = CompileBackend(model, plan, "cpu", dynamo_backend="eager")
    eager = EagerBackend(model)
    for x in inputs[name]:
        _close(backend(x), eager(x), TOL)
    batch = collate(inputs[name], plan)  # 4 windows -> batch bucket 4
    _close(backend(batch), eager(batch), TOL)
    three = collate(inputs[name][:3], plan)  # 3 windows padded to 4, sliced back
    out = backend(three)
    assert out.score.shape == (3,)
    _close(out, eager(three), TOL)
    assert backend.compiled_shapes == {((128, 60, 45), 1), ((128, 60, 45), 4)}


@pytest.mark.slow
def test_compile_inductor_matches_eager(live_models, inputs):
    """Real inductor code generation on the live model (mode "default": max-autotune only changes
    kernel choice, and its CPU autotuning takes minutes)."""
    model = live_models["almt"].model
    plan = ShapePlan((32,), (60,), (45,), max_batch=2)
    x = inputs["almt"][0]
    backend = CompileBackend(model, plan, "cpu", mode="default")
    _close(backend(x), EagerBackend(model)(x), TOL)


def test_live_model_routes_through_the_backend(encoder, windows, cache_dir, caplog):
    caplog.set_level(logging.INFO, logger="sentistream.backends")
    ref = _live("almt", encoder, backend="eager")
    lm = _live("almt", encoder, backend="onnxruntime", cache_dir=str(cache_dir))
    for w in windows[:3]:
        a, b = lm.predict(w), ref.predict(w)
        assert abs(a.score - b.score) <= TOL
        for k in ("text", "audio", "vision"):
            assert abs(a.contributions[k] - b.contributions[k]) <= TOL
    assert lm.describe()["backend"] == "onnxruntime"
    assert ref.describe()["backend"] == "eager"
    assert lm.backend.wait_ready(600)  # the live stage exports the other buckets in the background
    assert len(lm.backend.sessions) == len(BackendOptions.from_config(lm.cfg).plan().combos())
    assert "fusion backend: onnxruntime" in caplog.text


def test_background_export_runs_unready_buckets_eagerly(live_models, inputs, tmp_path):
    model = live_models["tfn"].model
    plan = ShapePlan((16, 32, 128), (60,), (45,))
    x_long = inputs["tfn"][3]
    backend = OnnxRuntimeBackend(model, plan, cache_dir=tmp_path, prebuild="background", first=(16, 60, 45))
    out = backend(x_long)  # its bucket may not be exported yet: eager meanwhile, same numbers
    _close(out, EagerBackend(model)(x_long), TOL)
    assert backend.wait_ready(600)
    assert set(backend.sessions) == set(plan.combos())
    _close(backend(x_long), EagerBackend(model)(x_long), TOL)


# ------------------------------------------------------------------------------ selection
def test_auto_on_cpu_measures_and_logs(live_models, cache_dir, caplog):
    caplog.set_level(logging.INFO, logger="sentistream.backends")
    opts = BackendOptions(
        backend="auto", device="cpu", cache_dir=str(cache_dir), select_budget_s=0.2, onnx_prebuild="none"
    )
    backend = select_backend(opts, live_models["almt"].model)
    assert backend.name in ("onnxruntime", "eager")
    assert "auto on CPU" in backend.reason and "ms vs" in backend.reason
    assert f"fusion backend: {backend.name}" in caplog.text
    assert set(backend.measured_ms) == {"onnxruntime", "eager"}


def test_tensorrt_missing_falls_back_with_a_clear_line(live_models, cache_dir, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # import torch_tensorrt -> ImportError
    caplog.set_level(logging.INFO, logger="sentistream.backends")
    opts = BackendOptions(backend="tensorrt", cache_dir=str(cache_dir), select_budget_s=0.1, onnx_prebuild="none")
    backend = select_backend(opts, live_models["almt"].model)
    assert backend.name in ("onnxruntime", "eager")
    assert "torch_tensorrt is not installed" in caplog.text
    assert "pip install 'sentistream[tensorrt]'" in caplog.text
    assert "tensorrt unavailable" in backend.reason
    with pytest.raises(BackendUnavailable, match="torch_tensorrt is not installed"):
        B.load_torch_tensorrt()


def test_torch_tensorrt_is_never_imported_by_the_engine():
    code = (
        "import sys; import sentistream.engine.backends, sentistream.engine.fusion_server, "
        "sentistream.models.live; assert 'torch_tensorrt' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_tensorrt_needs_cuda(live_models, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_tensorrt", types.ModuleType("torch_tensorrt"))
    plan = ShapePlan((16,), (60,), (45,))
    with pytest.raises(BackendUnavailable, match="CUDA"):
        B.TensorRTBackend(live_models["almt"].model, plan, "cpu")


class _FakeInput:
    def __init__(self, min_shape, opt_shape, max_shape, dtype):
        self.min_shape, self.opt_shape, self.max_shape, self.dtype = min_shape, opt_shape, max_shape, dtype


def _fake_trt(calls: dict):
    """A stand-in for torch_tensorrt: 'compiles' to the module itself, 'saves' a marker file."""
    trt = types.ModuleType("torch_tensorrt")
    trt.__version__ = "0.0-fake"
    trt.Input = _FakeInput

    def compile(module, ir="dynamo", inputs=(), min_block_size=5, enabled_precisions=None, **kw):
        calls.setdefault("compile", []).append(
            {"ir": ir, "inputs": inputs, "precisions": enabled_precisions, "min_block_size": min_block_size, **kw}
        )
        return module

    def save(module, path, arg_inputs=None, **kw):
        calls.setdefault("save", []).append(path)
        with open(path, "w") as fh:
            fh.write("engine")

    trt.compile = compile
    trt.save = save
    trt.dynamo = types.SimpleNamespace(compile=lambda exported_program, inputs=None, *, enabled_precisions=None: None)
    return trt


def test_tensorrt_configuration_and_engine_cache(live_models, inputs, tmp_path, monkeypatch):
    """The TensorRT code path end to end with a fake torch_tensorrt on the CPU: fp16, a dynamic
    batch profile 1..max_batch per bucket, engines cached under model hash + shapes + GPU name."""
    calls: dict = {}
    trt = _fake_trt(calls)
    monkeypatch.setattr(B, "_cuda_ok", lambda device: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU 80GB")
    model = live_models["almt"].model
    plan = ShapePlan((16, 32), (60,), (45,), max_batch=16)
    backend = B.TensorRTBackend(model, plan, "cpu", cache_dir=tmp_path, importer=lambda name: trt)
    assert len(calls["compile"]) == 2 and len(calls["save"]) == 2
    first = calls["compile"][0]
    assert first["ir"] == "dynamo" and first["min_block_size"] == 1
    assert first["precisions"] == {torch.float16, torch.float32}
    text_spec, mask_spec = first["inputs"][0], first["inputs"][3]
    assert text_spec.min_shape == (1, 16, 384) and text_spec.max_shape == (16, 16, 384)
    assert text_spec.opt_shape == (8, 16, 384) and mask_spec.max_shape == (16, 16)
    assert all(spec.dtype == torch.float32 for spec in first["inputs"])  # float masks, not bool
    path = backend.engine_path((16, 60, 45))
    assert path.is_file() and B.model_fingerprint(model) in path.name and "fake-gpu-80gb" in path.name
    x = inputs["almt"][1]
    _close(backend(x), EagerBackend(model)(x), TOL)
    # a second start finds both engines in the cache: nothing is compiled again
    monkeypatch.setattr(
        torch.export, "load", lambda p: types.SimpleNamespace(module=lambda: B.ExportWrapper(model, bool_masks=False))
    )
    again = B.TensorRTBackend(model, plan, "cpu", cache_dir=tmp_path, importer=lambda name: trt)
    assert again.cache_hits == 2 and len(calls["compile"]) == 2
    # another GPU or another batch profile is another engine
    assert B.tensorrt_cache_key("f", (16, 60, 45), (384, 59, 100), 16, "GPU A", "v") != B.tensorrt_cache_key(
        "f", (16, 60, 45), (384, 59, 100), 16, "GPU B", "v"
    )
    assert B.tensorrt_cache_key("f", (16, 60, 45), (384, 59, 100), 16, "GPU A", "v") != B.tensorrt_cache_key(
        "f", (16, 60, 45), (384, 59, 100), 32, "GPU A", "v"
    )


def test_tensorrt_precision_follows_the_installed_api():
    new = types.SimpleNamespace(
        dynamo=types.SimpleNamespace(
            compile=lambda ep, *, use_explicit_typing=True, enable_autocast=False, low_precision_type=None: None
        )
    )
    kw = B.tensorrt_precision_kwargs(new)
    assert kw == {"use_explicit_typing": True, "enable_autocast": True, "low_precision_type": torch.float16}
    old = types.SimpleNamespace(dynamo=types.SimpleNamespace(compile=lambda ep, *, enabled_precisions=None: None))
    assert B.tensorrt_precision_kwargs(old) == {"enabled_precisions": {torch.float16, torch.float32}}


# ------------------------------------------------------------------------------ GPU
def _has_trt() -> bool:
    try:
        import torch_tensorrt  # noqa: F401  # pyright: ignore[reportMissingImports]
    except Exception:
        return False
    return True


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compile_cuda_graphs_matches_eager(live_models, inputs):
    import copy

    model = copy.deepcopy(live_models["almt"].model).cuda().eval()
    plan = BackendOptions.from_config(FusionConfig(max_batch=8)).plan()
    backend = CompileBackend(model, plan, "cuda")
    assert backend.mode == "reduce-overhead"
    for x in inputs["almt"]:
        _close(backend(x.to("cuda")), EagerBackend(model, "cuda")(x.to("cuda")), TOL)


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and _has_trt()), reason="needs CUDA and torch_tensorrt")
def test_tensorrt_matches_eager(live_models, inputs, tmp_path):
    import copy

    model = copy.deepcopy(live_models["almt"].model).cuda().eval()
    plan = BackendOptions.from_config(FusionConfig(max_batch=8)).plan()
    backend = B.TensorRTBackend(model, plan, "cuda", cache_dir=tmp_path)
    for x in inputs["almt"]:
        _close(backend(x.to("cuda")), EagerBackend(model, "cuda")(x.to("cuda")), B.TOLERANCE["tensorrt"])


# ------------------------------------------------------------------------------ shapes, config
def test_shape_plan_buckets():
    plan = ShapePlan((64, 16, 32), (60,), (45,), max_batch=64)
    assert plan.text == (16, 32, 64)
    assert plan.seq_shape([1, 60, 45]) == (16, 60, 45)
    assert plan.seq_shape([17, 3, 45]) == (32, 60, 45)
    assert plan.seq_shape([65, 61, 90]) == (128, 120, 90)  # beyond the largest: multiples of it
    assert [plan.batch_bucket(b) for b in (1, 2, 3, 5, 64, 65)] == [1, 2, 4, 8, 64, 65]
    with pytest.raises(ValueError):
        ShapePlan((0,), (1,), (1,))


def test_fusion_config_keys():
    cfg = config_from_dict(
        {
            "fusion": {
                "backend": "onnxruntime",
                "text_buckets": [8, 24],
                "max_batch": 32,
                "server": "tcp://127.0.0.1:5560",
            }
        }
    )
    opts = BackendOptions.from_config(cfg.fusion)
    assert opts.backend == "onnxruntime" and opts.text_buckets == (8, 24) and opts.max_batch == 32
    assert opts.audio_buckets == (cfg.fusion.max_audio_frames,)
    for bad, needle in [
        ({"backend": "trt"}, "fusion.backend"),
        ({"text_buckets": [0]}, "fusion.text_buckets"),
        ({"server": "http://x"}, "fusion.server"),
        ({"max_batch": 0}, "fusion.max_batch"),
    ]:
        with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
            config_from_dict({"fusion": bad})
