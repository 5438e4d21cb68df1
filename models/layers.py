"""Shared, export-friendly building blocks (masked attention, Transformer layers, BiLSTM, GRL).

All attention here takes a *key* mask [B, Lk] (``True`` = valid). Rows whose keys are all invalid
(a missing modality) produce exactly zero attention output instead of NaN: scores are filled with a
large negative number, softmaxed, multiplied by the mask and renormalised. No data-dependent Python
branching, so ``torch.compile`` and ONNX export can trace every block.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import reverse_padded


def masked_softmax(scores: Tensor, key_mask: Tensor | None, dim: int = -1) -> Tensor:
    """Softmax over ``dim`` restricted to valid keys; all-invalid rows give all zeros.

    ``key_mask`` must broadcast to ``scores`` (e.g. [B, 1, 1, Lk] for [B, H, Lq, Lk]).
    """
    if key_mask is None:
        return torch.softmax(scores, dim=dim)
    neg = torch.finfo(scores.dtype).min
    w = torch.softmax(scores.masked_fill(~key_mask, neg), dim=dim)
    w = w * key_mask.to(w.dtype)
    return w / w.sum(dim=dim, keepdim=True).clamp_min(1e-12)


def multihead_attend(
    q: Tensor, k: Tensor, v: Tensor, heads: int, key_mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Attention on already-projected ``q`` [B, Lq, H*dh], ``k``/``v`` [B, Lk, H*dh].

    Returns (out [B, Lq, H*dh], weights [B, H, Lq, Lk]).
    """
    b, lq, inner = q.shape
    dh = inner // heads
    qh = q.view(b, lq, heads, dh).transpose(1, 2)
    kh = k.view(b, k.shape[1], heads, dh).transpose(1, 2)
    vh = v.view(b, v.shape[1], heads, dh).transpose(1, 2)
    scores = torch.matmul(qh, kh.transpose(-1, -2)) * (dh**-0.5)
    km = key_mask[:, None, None, :] if key_mask is not None else None
    attn = masked_softmax(scores, km)
    out = torch.matmul(attn, vh).transpose(1, 2).reshape(b, lq, inner)
    return out, attn


class MultiHeadAttention(nn.Module):
    """Scaled dot-product multi-head attention, ``inner = heads * dim_head``.

    ``forward(q, k, v, key_mask)`` -> (out [B, Lq, d_model], attn [B, H, Lq, Lk]).
    """

    def __init__(
        self,
        d_model: int,
        heads: int = 8,
        dim_head: int | None = None,
        dropout: float = 0.0,
        qkv_bias: bool = False,
        d_kv: int | None = None,
    ):
        super().__init__()
        dim_head = dim_head or d_model // heads
        inner = heads * dim_head
        d_kv = d_kv or d_model
        self.heads, self.dim_head = heads, dim_head
        self.scale = dim_head**-0.5
        self.to_q = nn.Linear(d_model, inner, bias=qkv_bias)
        self.to_k = nn.Linear(d_kv, inner, bias=qkv_bias)
        self.to_v = nn.Linear(d_kv, inner, bias=qkv_bias)
        self.to_out = nn.Linear(inner, d_model)
        self.attn_drop = nn.Dropout(dropout)
        self.out_drop = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.dim_head).transpose(1, 2)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Attention before the output projection: ([B, Lq, inner], weights [B, H, Lq, Lk])."""
        qh, kh, vh = self._split(self.to_q(q)), self._split(self.to_k(k)), self._split(self.to_v(v))
        scores = torch.matmul(qh, kh.transpose(-1, -2)) * self.scale
        km = key_mask[:, None, None, :] if key_mask is not None else None
        attn = masked_softmax(scores, km)
        out = torch.matmul(self.attn_drop(attn), vh)
        b, h, n, d = out.shape
        return out.transpose(1, 2).reshape(b, n, h * d), attn

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        out, attn = self.attend(q, k, v, key_mask)
        return self.out_drop(self.to_out(out)), attn


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, activation: str = "gelu"):
        super().__init__()
        act = {"gelu": nn.GELU(), "relu": nn.ReLU()}[activation]
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), act, nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class PreNormTransformerLayer(nn.Module):
    """Pre-LN layer: ``x += Attn(LN(x), LN'(ctx))``; ``x += FFN(LN(x))``.

    Build with ``cross=True`` and pass ``ctx`` for cross-attention; otherwise self-attention.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int | None,
        mlp_dim: int,
        dropout: float = 0.0,
        activation: str = "gelu",
        cross: bool = False,
    ):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim) if cross else None
        self.attn = MultiHeadAttention(dim, heads, dim_head, dropout)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, mlp_dim, dropout, activation)

    def forward(self, x: Tensor, key_mask: Tensor | None = None, ctx: Tensor | None = None) -> Tensor:
        q = self.norm_q(x)
        if ctx is None:
            kv = q
        else:
            kv = (self.norm_kv if self.norm_kv is not None else self.norm_q)(ctx)
        x = x + self.attn(q, kv, kv, key_mask)[0]
        return x + self.ff(self.norm_ff(x))

    def forward_first(self, x: Tensor, n: int, key_mask: Tensor | None = None) -> Tensor:
        """Self-attention layer output at the first ``n`` positions only: ``forward(x)[:, :n]``.

        A position's output depends on its own query and on every key / value, so when only a
        prefix is used (learned tokens read out after the last layer) its queries and FFN rows
        are all that must be computed: for ALMT at MOSI shapes (500 vision steps, 8 tokens) that
        is most of the model's arithmetic saved, with the same result.
        """
        q = self.norm_q(x)
        x = x[:, :n] + self.attn(q[:, :n], q, q, key_mask)[0]
        return x + self.ff(self.norm_ff(x))


class PostNormTransformerLayer(nn.Module):
    """Post-LN layer (original Transformer / ``nn.TransformerEncoderLayer`` default)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_dim: int,
        dropout: float = 0.1,
        activation: str = "gelu",
        dim_head: int | None = None,
    ):
        super().__init__()
        self.attn = MultiHeadAttention(dim, heads, dim_head, dropout, qkv_bias=True)
        self.norm1 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, mlp_dim, dropout, activation)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, key_mask: Tensor | None = None, ctx: Tensor | None = None) -> Tensor:
        kv = x if ctx is None else ctx
        x = self.norm1(x + self.attn(x, kv, kv, key_mask)[0])
        return self.norm2(x + self.ff(x))


class LearnedPositions(nn.Module):
    """Learned absolute positions for up to ``max_len`` steps (slicing is static under tracing)."""

    def __init__(self, max_len: int, dim: int, std: float = 0.02):
        super().__init__()
        self.max_len = max_len
        self.pos = nn.Parameter(torch.randn(1, max_len, dim) * std)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.pos[:, : x.shape[1]]


def sinusoidal_positions(length: int, dim: int, device=None, dtype=torch.float32) -> Tensor:
    """[length, dim] sin/cos table (fairseq layout: sin half then cos half), positions from 1."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, device=device, dtype=torch.float32) * -(math.log(10000.0) / max(half - 1, 1)))
    pos = torch.arange(1, length + 1, device=device, dtype=torch.float32).unsqueeze(1)
    ang = pos * freq.unsqueeze(0)
    table = torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)
    if dim % 2:
        table = F.pad(table, (0, 1))
    return table.to(dtype)


class MaskedBiLSTM(nn.Module):
    """Bidirectional LSTM that is exact on right-padded batches without ``pack_padded_sequence``.

    The backward direction runs a forward LSTM over each sequence with its valid prefix reversed
    (gather-based, so it traces), which is the same computation as a packed BiLSTM. Returns the
    per-step outputs [B, L, 2H] (zeros at padding) and the final states [B, 2H] (forward state at
    the last valid step, backward state at the first step; zeros for an empty sequence).
    """

    def __init__(self, input_size: int, hidden: int, num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.fwd = nn.LSTM(
            input_size, hidden, num_layers=num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0
        )
        self.bwd = nn.LSTM(
            input_size, hidden, num_layers=num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0
        )

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        m = mask.to(x.dtype).unsqueeze(-1)
        x = x * m
        out_f, _ = self.fwd(x)
        out_b_rev, _ = self.bwd(reverse_padded(x, mask))
        out_b = reverse_padded(out_b_rev, mask)
        out = torch.cat([out_f, out_b], dim=-1) * m
        lengths = mask.long().sum(dim=1)
        idx = (lengths - 1).clamp_min(0).view(-1, 1, 1)
        h_f = out_f.gather(1, idx.expand(-1, 1, out_f.shape[-1])).squeeze(1)
        h_b = out_b_rev.gather(1, idx.expand(-1, 1, out_b_rev.shape[-1])).squeeze(1)
        final = torch.cat([h_f, h_b], dim=-1) * (lengths > 0).to(x.dtype).unsqueeze(-1)
        return out, final


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lambd: float) -> Tensor:
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return -ctx.lambd * grad, None


def grad_reverse(x: Tensor, lambd: float = 1.0) -> Tensor:
    """Identity forward, ``-lambd * grad`` backward (Ganin & Lempitsky's gradient-reversal layer)."""
    return _GradReverse.apply(x, lambd)
