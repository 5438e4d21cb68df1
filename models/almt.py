"""ALMT: Adaptive Language-guided Multimodal Transformer.

Zhang et al., "Learning Language-guided Adaptive Hyper-modality Representation for Multimodal
Sentiment Analysis", EMNLP 2023.

Pipeline (paper equation numbers):

* eq. 1, embedding: per modality, a linear projection to ``d`` and one Transformer layer over
  ``[T learned tokens ; projected sequence]`` (+ learned positions); the first ``T`` outputs are
  that modality's fixed-length representation ``H^0_m`` [B, T, d].
* eq. 2, language at three scales: two more Transformer layers over ``H^0_l`` (+ learned positions);
  ``H^1_l, H^2_l, H^3_l`` = their input and two outputs (``ahl_layers`` scales in general).
* eqs. 3-5, Adaptive Hyper-modality Learning (``ahl_layers`` layers):
  ``H^j_hyper = H^{j-1}_hyper + softmax(Q_l K_a^T/sqrt(d_k)) V_a + softmax(Q_l K_v^T/sqrt(d_k)) V_v``
  with ``Q_l`` from language scale ``j`` and multi-head (``heads`` x ``ahl_dim_head``) attention;
  the two attention results are summed, then go through one output projection (as in the
  reference code). ``H^0_hyper`` is a learned [T, d] tensor initialised to ones.
* eqs. 6-8, cross-modality fusion Transformer (``fusion_depth`` layers): language (last scale) is
  the query, the hyper-modality is key/value; both sequences are prefixed with a learned token and
  given learned positions; the query-side token's output is regressed (eq. 9) by one linear layer.

Choices where the paper is silent (or where the product differs):

* Padding masks are honoured everywhere (the reference code attends over padding). The learned
  tokens are always valid, so a missing modality reduces to its learned tokens (a learned "absent"
  embedding) and stays finite.
* The AHL residual is added to the *un-normalised* ``H^{j-1}_hyper`` exactly as eq. 3-5 is written
  (the reference code adds it to ``LayerNorm(H^{j-1})``); ``H_l``, ``H_a``, ``H_v`` are pre-normed.
* Every Transformer layer is pre-LN with a GELU FFN of width ``mlp_dim`` = 128 and 8 heads;
  ``dim_head`` = 16 (``heads * dim_head = d``) for all attention blocks (the reference code uses 64
  in the non-AHL layers). Learned positions are initialised N(0, 0.02) and cover ``max_len`` steps.
* ``contributions`` (the model has no single modality weight): text = mean token L2 norm of the last
  language scale entering the fusion; audio / vision = mean token L2 norm of the summed AHL updates
  each of them wrote into the hyper-modality (the part of ``to_out`` applied to that modality's
  attention result, bias excluded). Normalised over present modalities.
* Task loss MSE (reference code); AdamW, lr 1e-4, 10 % linear warm-up then cosine ([train] table).
* The embedder's last layer computes queries and FFN rows for the ``T`` token positions only (the
  sequence positions' outputs are never read): the same result as the full layer, ~3x less work
  at MOSI shapes (500 vision steps).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import FusionInputs, FusionModel, FusionOutput, ModalityDims, normalise_contributions
from .layers import LearnedPositions, PreNormTransformerLayer, multihead_attend
from .registry import register


class TokenEmbedder(nn.Module):
    """eq. 1: Linear -> Transformer over [T learned tokens; x]; returns the T token outputs."""

    def __init__(
        self,
        in_dim: int,
        d: int,
        tokens: int,
        depth: int,
        heads: int,
        dim_head: int,
        mlp_dim: int,
        dropout: float,
        max_len: int,
    ):
        super().__init__()
        self.tokens = tokens
        self.proj = nn.Linear(in_dim, d)
        self.extra = nn.Parameter(torch.zeros(1, tokens, d))
        self.pos = LearnedPositions(max_len + tokens, d)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            [PreNormTransformerLayer(d, heads, dim_head, mlp_dim, dropout) for _ in range(depth)]
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b = x.shape[0]
        h = torch.cat([self.extra.expand(b, -1, -1), self.proj(x)], dim=1)
        h = self.drop(self.pos(h))
        km = torch.cat([torch.ones(b, self.tokens, dtype=torch.bool, device=x.device), mask], dim=1)
        for layer in self.layers[:-1]:
            h = layer(h, km)
        return self.layers[-1].forward_first(h, self.tokens, km)  # only the token outputs are read


class AHLLayer(nn.Module):
    """eqs. 3-5: one Adaptive Hyper-modality Learning layer.

    Returns the hyper-modality update and, for the contribution proxy, the audio and vision parts of
    the (linear) output projection.
    """

    def __init__(self, d: int, heads: int, dim_head: int, dropout: float):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm_l, self.norm_a, self.norm_v = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.to_q = nn.Linear(d, inner, bias=False)
        self.to_k_a = nn.Linear(d, inner, bias=False)
        self.to_v_a = nn.Linear(d, inner, bias=False)
        self.to_k_v = nn.Linear(d, inner, bias=False)
        self.to_v_v = nn.Linear(d, inner, bias=False)
        self.to_out = nn.Linear(inner, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, h_l: Tensor, h_a: Tensor, h_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q = self.to_q(self.norm_l(h_l))
        a, v = self.norm_a(h_a), self.norm_v(h_v)
        out_a, _ = multihead_attend(q, self.to_k_a(a), self.to_v_a(a), self.heads)
        out_v, _ = multihead_attend(q, self.to_k_v(v), self.to_v_v(v), self.heads)
        shift = self.drop(self.to_out(out_a + out_v))
        return shift, out_a @ self.to_out.weight.t(), out_v @ self.to_out.weight.t()


class CrossFusionLayer(nn.Module):
    """eqs. 6-8: pre-LN cross-attention (language queries hyper-modality) + FFN."""

    def __init__(self, d: int, heads: int, dim_head: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.layer = PreNormTransformerLayer(d, heads, dim_head, mlp_dim, dropout, cross=True)

    def forward(self, target: Tensor, source: Tensor) -> Tensor:
        return self.layer(target, None, ctx=source)


@register("almt")
class ALMT(FusionModel):
    def __init__(
        self,
        dims: ModalityDims,
        d: int = 128,
        tokens: int = 8,
        heads: int = 8,
        dim_head: int = 16,
        ahl_dim_head: int = 16,
        ahl_layers: int = 3,
        embed_depth: int = 1,
        fusion_depth: int = 2,
        mlp_dim: int = 128,
        dropout: float = 0.1,
        ahl_dropout: float = 0.0,
        max_len: int = 512,
    ):
        super().__init__(dims)
        if ahl_layers < 1:
            raise ValueError("ahl_layers must be >= 1")
        self.tokens = tokens
        emb = dict(
            d=d,
            tokens=tokens,
            depth=embed_depth,
            heads=heads,
            dim_head=dim_head,
            mlp_dim=mlp_dim,
            dropout=dropout,
            max_len=max_len,
        )
        self.embed_l = TokenEmbedder(dims.text, **emb)
        self.embed_a = TokenEmbedder(dims.audio, **emb)
        self.embed_v = TokenEmbedder(dims.vision, **emb)
        # eq. 2: language encoder producing ahl_layers scales (input + ahl_layers - 1 outputs)
        self.l_pos = LearnedPositions(tokens, d)
        self.l_encoder = nn.ModuleList(
            [PreNormTransformerLayer(d, heads, dim_head, mlp_dim, dropout) for _ in range(ahl_layers - 1)]
        )
        self.h_hyper = nn.Parameter(torch.ones(1, tokens, d))
        self.ahl = nn.ModuleList([AHLLayer(d, heads, ahl_dim_head, ahl_dropout) for _ in range(ahl_layers)])
        # eqs. 6-8
        self.fusion_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_s = LearnedPositions(tokens + 1, d)
        self.pos_t = LearnedPositions(tokens + 1, d)
        self.fusion_drop = nn.Dropout(dropout)
        self.fusion = nn.ModuleList(
            [CrossFusionLayer(d, heads, dim_head, mlp_dim, dropout) for _ in range(fusion_depth)]
        )
        self.head = nn.Linear(d, 1)  # eq. 9

    def forward(self, inputs: FusionInputs) -> FusionOutput:
        b = inputs.text.shape[0]
        h_l = self.embed_l(inputs.text, inputs.text_mask)
        h_a = self.embed_a(inputs.audio, inputs.audio_mask)
        h_v = self.embed_v(inputs.vision, inputs.vision_mask)

        x = self.l_pos(h_l)
        scales = [x]
        for layer in self.l_encoder:
            x = layer(x)
            scales.append(x)

        hyper = self.h_hyper.expand(b, -1, -1)
        acc_a = torch.zeros_like(hyper)
        acc_v = torch.zeros_like(hyper)
        for j, layer in enumerate(self.ahl):
            shift, part_a, part_v = layer(scales[j], h_a, h_v)
            hyper = hyper + shift
            acc_a = acc_a + part_a
            acc_v = acc_v + part_v

        tok = self.fusion_token.expand(b, -1, -1)
        source = self.fusion_drop(self.pos_s(torch.cat([tok, hyper], dim=1)))
        target = self.fusion_drop(self.pos_t(torch.cat([tok, scales[-1]], dim=1)))
        for layer in self.fusion:
            target = layer(target, source)
        feat = target[:, 0]
        score = self.head(feat).squeeze(-1)

        raw = torch.stack(
            [scales[-1].norm(dim=-1).mean(dim=1), acc_a.norm(dim=-1).mean(dim=1), acc_v.norm(dim=-1).mean(dim=1)],
            dim=-1,
        )
        contributions = normalise_contributions(raw, inputs.present())
        return FusionOutput(score, contributions, {"feature": feat, "hyper": hyper})
