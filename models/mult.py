"""MulT: Multimodal Transformer (Tsai et al., ACL 2019).

* Temporal 1-D convolutions project each modality to ``d`` (kernel sizes ``kernel_t/a/v``, no bias).
* Six pairwise crossmodal Transformers (``layers`` each): for target modality ``m`` and source ``s``,
  queries come from ``m`` and keys/values from ``s`` (``text<-audio``, ``text<-vision``, ``audio<-text``,
  ...). Each target's two outputs are concatenated (width ``2d``) and passed through a self-attention
  "memory" Transformer (``mem_layers`` layers); its last element represents that target.
* ``[h_t ; h_a ; h_v]`` (6d) -> residual block (``proj2(dropout(relu(proj1(x)))) + x``) -> linear score.
* Transformer layers are MulT's: pre-LN on query and key/value, sinusoidal positions added to
  ``sqrt(d) * x``, ReLU FFN of ``4d``, separate attention / ReLU / residual / embedding dropouts, final LN.

Choices where the paper is silent or the product differs:

* Padding masks are honoured (the reference code attends over padding); "last element" = the last
  *valid* step of the target sequence, zeros for a missing modality. Positions are 1..L for every
  sequence (the reference derives them from non-zero first channels).
* Defaults follow the reference repository's MOSI settings (d = 30, 5 heads, 5 crossmodal layers,
  3 memory layers, attention dropout 0.1 for text / 0.0 audio & vision, relu/res dropout 0.1, embedding
  dropout 0.25, out dropout 0.0; Adam lr 1e-3, batch 24, L1 loss, grad clip 0.8).
* ``contributions`` (no weights over modalities): ``||W_proj1[:, block_m] h_m||`` for the three target
  blocks (each block also carries crossmodal information from the other two), normalised.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import FusionInputs, FusionModel, FusionOutput, ModalityDims, block_norm_contributions, last_valid
from .layers import MultiHeadAttention, sinusoidal_positions
from .registry import register


class MulTLayer(nn.Module):
    def __init__(self, d: int, heads: int, attn_dropout: float, relu_dropout: float, res_dropout: float, cross: bool):
        super().__init__()
        self.attn = MultiHeadAttention(d, heads, d // heads, attn_dropout, qkv_bias=True)
        self.attn.out_drop = nn.Identity()
        self.norm_q = nn.LayerNorm(d)
        self.norm_kv = nn.LayerNorm(d) if cross else None
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.norm_ff = nn.LayerNorm(d)
        self.relu_drop = nn.Dropout(relu_dropout)
        self.res_drop = nn.Dropout(res_dropout)

    def forward(self, x: Tensor, ctx: Tensor, key_mask: Tensor) -> Tensor:
        q = self.norm_q(x)
        kv = self.norm_kv(ctx) if self.norm_kv is not None else q
        x = x + self.res_drop(self.attn(q, kv, kv, key_mask)[0])
        h = self.fc2(self.relu_drop(F.relu(self.fc1(self.norm_ff(x)))))
        return x + self.res_drop(h)


class MulTEncoder(nn.Module):
    """MulT TransformerEncoder: scaled input + sinusoidal positions, pre-LN layers, final LN."""

    def __init__(
        self,
        d: int,
        heads: int,
        layers: int,
        attn_dropout: float,
        relu_dropout: float,
        res_dropout: float,
        embed_dropout: float,
        cross: bool,
    ):
        super().__init__()
        self.scale = math.sqrt(d)
        self.drop = nn.Dropout(embed_dropout)
        self.layers = nn.ModuleList(
            [MulTLayer(d, heads, attn_dropout, relu_dropout, res_dropout, cross) for _ in range(layers)]
        )
        self.norm = nn.LayerNorm(d)
        self.cross = cross

    def _embed(self, x: Tensor) -> Tensor:
        pos = sinusoidal_positions(x.shape[1], x.shape[2], device=x.device, dtype=x.dtype)
        return self.drop(self.scale * x + pos.unsqueeze(0))

    def forward(self, x: Tensor, x_mask: Tensor, ctx: Tensor = None, ctx_mask: Tensor = None) -> Tensor:
        x = self._embed(x)
        if self.cross:
            c, km = self._embed(ctx), ctx_mask
        else:
            c, km = x, x_mask
        for layer in self.layers:
            x = layer(x, c, km)
        return self.norm(x)


@register("mult")
class MulT(FusionModel):
    def __init__(
        self,
        dims: ModalityDims,
        d: int = 30,
        heads: int = 5,
        layers: int = 5,
        mem_layers: int = 3,
        kernel_t: int = 1,
        kernel_a: int = 1,
        kernel_v: int = 1,
        attn_dropout_t: float = 0.1,
        attn_dropout_a: float = 0.0,
        attn_dropout_v: float = 0.0,
        relu_dropout: float = 0.1,
        res_dropout: float = 0.1,
        embed_dropout: float = 0.25,
        out_dropout: float = 0.0,
    ):
        super().__init__(dims)
        self.embed_dropout = nn.Dropout(embed_dropout)
        self.convs = nn.ModuleList(
            [
                nn.Conv1d(dims.text, d, kernel_t, padding=(kernel_t - 1) // 2, bias=False),
                nn.Conv1d(dims.audio, d, kernel_a, padding=(kernel_a - 1) // 2, bias=False),
                nn.Conv1d(dims.vision, d, kernel_v, padding=(kernel_v - 1) // 2, bias=False),
            ]
        )
        attn_drop = (attn_dropout_t, attn_dropout_a, attn_dropout_v)
        common = dict(relu_dropout=relu_dropout, res_dropout=res_dropout, embed_dropout=embed_dropout)
        # cross[target][k]: target <- the k-th other modality (in text/audio/vision order)
        self.others = ((1, 2), (0, 2), (0, 1))
        self.cross = nn.ModuleList(
            [
                nn.ModuleList(
                    [MulTEncoder(d, heads, layers, attn_drop[s], cross=True, **common) for s in self.others[t]]
                )
                for t in range(3)
            ]
        )
        self.mem = nn.ModuleList(
            [MulTEncoder(2 * d, heads, max(mem_layers, 1), attn_drop[t], cross=False, **common) for t in range(3)]
        )
        self.proj1 = nn.Linear(6 * d, 6 * d)
        self.proj2 = nn.Linear(6 * d, 6 * d)
        self.out_drop = nn.Dropout(out_dropout)
        self.out = nn.Linear(6 * d, 1)

    def _project(self, conv: nn.Conv1d, x: Tensor, mask: Tensor) -> Tensor:
        x = x * mask.to(x.dtype).unsqueeze(-1)
        return conv(x.transpose(1, 2)).transpose(1, 2)

    def forward(self, inputs: FusionInputs) -> FusionOutput:
        masks = inputs.masks()
        xs = list(inputs.sequences())
        xs[0] = self.embed_dropout(xs[0])  # MulT drops out the (word-embedding) text input
        proj = [self._project(c, x, m) for c, x, m in zip(self.convs, xs, masks)]
        lasts = []
        for t in range(3):
            hs = [enc(proj[t], masks[t], proj[s], masks[s]) for enc, s in zip(self.cross[t], self.others[t])]
            h = self.mem[t](torch.cat(hs, dim=-1), masks[t])
            lasts.append(last_valid(h, masks[t]))
        x = torch.cat(lasts, dim=-1)
        hidden = self.proj2(self.out_drop(F.relu(self.proj1(x)))) + x
        score = self.out(hidden).squeeze(-1)
        contributions = block_norm_contributions(self.proj1.weight, lasts, inputs.present())
        return FusionOutput(score, contributions, {"last_hidden": x})
