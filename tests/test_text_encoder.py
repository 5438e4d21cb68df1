"""Text encoder: shapes, parity with sentence-transformers, empty text, cache."""

from __future__ import annotations

import os

import numpy as np
import pytest

from sentistream.perception.text import (
    TextEncoder,
    TextEncoderOptions,
    default_model_dir,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = [
    "I really love this new coffee shop downtown.",
    "This is the worst meeting I have ever sat through!",
    "okay",
    "The weather today is cold and rainy, so we stayed in and watched a movie together.",
]


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(TextEncoderOptions())


def test_shapes_and_norm(encoder):
    assert encoder.dim == 384
    emb = encoder.encode(TEXTS[0])
    n_tokens = len(encoder.tokenizer(TEXTS[0])["input_ids"])
    assert emb.tokens.shape == (n_tokens, 384) and emb.tokens.dtype == np.float32
    assert emb.pooled.shape == (384,) and emb.pooled.dtype == np.float32
    assert np.isclose(np.linalg.norm(emb.pooled), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb.pooled, emb.tokens.mean(0) / np.linalg.norm(emb.tokens.mean(0)), atol=1e-5)


def test_parity_with_sentence_transformers(encoder):
    st = pytest.importorskip("sentence_transformers")
    ref_model = st.SentenceTransformer(default_model_dir(), device="cpu", local_files_only=True)
    ref = ref_model.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=False)
    ours = np.stack([encoder.encode(t).pooled for t in TEXTS])
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    ref_tokens = ref_model.encode(TEXTS[1], output_value="token_embeddings").cpu().numpy()
    np.testing.assert_allclose(encoder.encode(TEXTS[1]).tokens, ref_tokens, atol=1e-4)


def test_unnormalized_pooling(encoder):
    raw = TextEncoder(TextEncoderOptions(normalize=False, cache_size=0))
    a, b = raw.encode(TEXTS[2]), encoder.encode(TEXTS[2])
    np.testing.assert_allclose(a.pooled, a.tokens.mean(0), atol=1e-6)
    np.testing.assert_allclose(a.pooled / np.linalg.norm(a.pooled), b.pooled, atol=1e-5)


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_text(encoder, text):
    emb = encoder.encode(text)
    assert emb.tokens.shape == (0, 384)
    assert emb.pooled.shape == (384,) and not emb.pooled.any()


def test_cache():
    enc = TextEncoder(TextEncoderOptions(cache_size=2))
    a = enc.encode("hello there")
    assert (enc.cache_hits, enc.cache_misses) == (0, 1)
    a.pooled[:] = 0.0  # the caller owns its arrays: the cached copy is untouched
    b = enc.encode("hello there")
    assert (enc.cache_hits, enc.cache_misses) == (1, 1)
    assert np.isclose(np.linalg.norm(b.pooled), 1.0, atol=1e-5)
    enc.encode("second")
    enc.encode("hello there")  # refreshes it: "second" is now the least recently used
    enc.encode("third")  # evicts "second"
    hits = enc.cache_hits
    enc.encode("hello there")
    assert enc.cache_hits == hits + 1
    enc.encode("second")
    assert enc.cache_misses == 4
    np.testing.assert_allclose(enc.encode("hello there").pooled, b.pooled, atol=1e-6)


def test_long_text_keeps_newest_tokens(encoder):
    long_text = " ".join(["filler"] * 300) + " the ending is wonderful"
    emb = encoder.encode(long_text)
    assert emb.tokens.shape == (128, 384)
    ids = encoder.tokenizer(long_text, truncation=True, max_length=128)["input_ids"]
    assert encoder.tokenizer.decode(ids, skip_special_tokens=True).endswith("the ending is wonderful")


def test_missing_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_dir"):
        TextEncoder(TextEncoderOptions(model_dir=str(tmp_path)))


def test_background_encoder_answers_at_once_with_the_newest_finished_text():
    from sentistream.perception.text import BackgroundTextEncoder

    plain = TextEncoder(TextEncoderOptions())
    bg = BackgroundTextEncoder(TextEncoder(TextEncoderOptions()))
    try:
        first = bg.encode("what a lovely day")  # nothing to fall back on: encoded in line
        assert first.text == "what a lovely day"
        np.testing.assert_allclose(first.tokens, plain.encode("what a lovely day").tokens, atol=1e-5)
        meanwhile = bg.encode("what a lovely day it was not")
        assert meanwhile.text == "what a lovely day"  # the earlier text, while the new one encodes
        np.testing.assert_array_equal(meanwhile.tokens, first.tokens)
        assert bg.stale_returns == 1
        assert bg.wait_idle(30.0)
        done = bg.encode("what a lovely day it was not")
        assert done.text == "what a lovely day it was not"
        np.testing.assert_allclose(done.tokens, plain.encode("what a lovely day it was not").tokens, atol=1e-5)
        # a burst is coalesced: the worker ends on the newest text asked for
        for k in range(5):
            bg.encode(f"sentence number {k}")
        assert bg.wait_idle(30.0)
        assert bg.encode("sentence number 4").text == "sentence number 4"
        assert bg.settle("the very last words", 30.0)
        assert bg.encode("the very last words").text == "the very last words"
    finally:
        bg.close()


def test_background_encoder_without_a_cache_does_not_re_encode_the_same_text():
    from sentistream.perception.text import BackgroundTextEncoder

    bg = BackgroundTextEncoder(TextEncoder(TextEncoderOptions(cache_size=0)))
    try:
        bg.encode("hello there")
        assert bg.encode("hello there").text == "hello there"
        assert bg.stale_returns == 0
    finally:
        bg.close()
