"""MLDFA: multi-level dynamic fusion with adaptive attention, alignment, gating and a modality graph.

Built from the description in issue 4 (equation numbers refer to the MLDFA paper):

* eq. 10, encoders: each modality is projected to one width ``d`` (``hidden`` = 512): Linear ->
  LayerNorm -> GELU -> dropout, plus learned positions, giving ``H_m`` [B, L_m, d].
* eqs. 15-19, cross-modal adaptive attention over modality tokens: ``e_m`` = masked mean of ``H_m``;
  multi-head attention among the three tokens (absent modalities masked as keys) gives ``e'_m``; a
  sigmoid gate ``g_m = sigma(W_g [e_m ; e'_m])`` mixes it in: ``c_m = LN(e_m + g_m * e'_m)``.
* eqs. 21-23, global-local alignment: ``z_m = alpha_m * pool(H_m) + (1 - alpha_m) * pool(SA_m(H_m))``
  with a learnable ``alpha_m = sigmoid(theta_m)`` per modality (init 0.5) and pre-LN multi-head
  self-attention with a residual, ``SA_m(H) = H + MHA(LN(H))``.
* eqs. 24-25, attention-weighted temporal alignment: every modality's steps are weighted by their
  scaled dot-product similarity to a query made from the *text* global vector ``z_t`` and summed:
  ``a_m = sum_t softmax_t(q(z_t) . k(h_{m,t}) / sqrt(d)) h_{m,t}`` (time alignment to language).
* eqs. 26-27, gated fusion: ``l_m = z_m + a_m``; ``gamma_m = sigma(W_f [c_m ; l_m])``;
  ``r_m = gamma_m * c_m + (1 - gamma_m) * l_m``.
* eqs. 28-29, modality graph: nodes ``r_m``, edge weights ``relu(cos(r_i, r_j))`` (self-loops = 1),
  absent modalities disconnected, row-normalised adjacency ``A``; one graph convolution with residual
  ``R' = R + GELU(A R W)``.
* eq. 30: ``LayerNorm(concat(R'_t, R'_a, R'_v))`` -> MLP (3d -> d -> 1).

Choices where the description is silent:

* Positions are learned (``max_len`` steps); attention uses ``heads`` = 8 heads of ``d/heads``.
* The temporal-alignment query has no bias, so with text missing the weights become uniform (plain
  masked mean) instead of depending on a learned constant.
* An absent modality's graph node is zeroed before the head.
* No auxiliary loss: the issue describes none for MLDFA (the alignments are architectural).
* ``contributions``: ``||W1[:, block_m] x_m||`` on the head's first layer (``x`` = the normalised
  concatenation) -- each modality's share of the first pre-activation. The 3x3 modality-token
  attention is returned in ``aux["modality_attention"]``; the alignment gates in ``aux``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import FusionInputs, FusionModel, FusionOutput, ModalityDims, block_norm_contributions, masked_mean
from .layers import LearnedPositions, MultiHeadAttention, masked_softmax
from .registry import register


class ModalityEncoder(nn.Module):
    def __init__(self, in_dim: int, d: int, dropout: float, max_len: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, d), nn.LayerNorm(d), nn.GELU(), nn.Dropout(dropout))
        self.pos = LearnedPositions(max_len, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.pos(self.net(x))


@register("mldfa")
class MLDFA(FusionModel):
    def __init__(self, dims: ModalityDims, hidden: int = 512, heads: int = 8, dropout: float = 0.1, max_len: int = 512):
        super().__init__(dims)
        d = hidden
        self.scale = d**-0.5
        self.encoders = nn.ModuleList([ModalityEncoder(i, d, dropout, max_len) for i in dims])
        # eqs. 15-19
        self.token_attn = MultiHeadAttention(d, heads, d // heads, dropout)
        self.token_gate = nn.Linear(2 * d, d)
        self.token_norm = nn.LayerNorm(d)
        # eqs. 21-23
        self.self_attn = nn.ModuleList([MultiHeadAttention(d, heads, d // heads, dropout) for _ in range(3)])
        self.sa_norm = nn.ModuleList([nn.LayerNorm(d) for _ in range(3)])
        self.alpha_logit = nn.Parameter(torch.zeros(3))
        # eqs. 24-25
        self.align_q = nn.Linear(d, d, bias=False)
        self.align_k = nn.ModuleList([nn.Linear(d, d) for _ in range(3)])
        # eqs. 26-27
        self.fuse_gate = nn.ModuleList([nn.Linear(2 * d, d) for _ in range(3)])
        # eqs. 28-29
        self.gcn = nn.Linear(d, d)
        self.gcn_drop = nn.Dropout(dropout)
        # eq. 30
        self.out_norm = nn.LayerNorm(3 * d)
        self.head = nn.Sequential(nn.Linear(3 * d, d), nn.GELU(), nn.Dropout(dropout), nn.Linear(d, 1))

    def forward(self, inputs: FusionInputs) -> FusionOutput:
        masks = inputs.masks()
        present = inputs.present()
        pf = present.to(inputs.text.dtype)
        hs = [enc(x) for enc, x in zip(self.encoders, inputs.sequences())]

        # eqs. 15-19: adaptive attention over the three modality tokens
        tokens = torch.stack([masked_mean(h, m) for h, m in zip(hs, masks)], dim=1)  # [B, 3, d]
        att, token_w = self.token_attn(tokens, tokens, tokens, present)
        g = torch.sigmoid(self.token_gate(torch.cat([tokens, att], dim=-1)))
        c = self.token_norm(tokens + g * att)

        # eqs. 21-23: global-local alignment
        alpha = torch.sigmoid(self.alpha_logit)
        zs = []
        for m in range(3):
            hn = self.sa_norm[m](hs[m])
            sa = self.self_attn[m](hn, hn, hn, masks[m])[0] + hs[m]
            zs.append(alpha[m] * masked_mean(hs[m], masks[m]) + (1 - alpha[m]) * masked_mean(sa, masks[m]))

        # eqs. 24-25: text-guided attention-weighted temporal alignment
        q = self.align_q(zs[0])  # [B, d]
        aligned = []
        for m in range(3):
            k = self.align_k[m](hs[m])  # [B, L, d]
            w = masked_softmax(torch.einsum("bd,bld->bl", q, k) * self.scale, masks[m])
            aligned.append(torch.einsum("bl,bld->bd", w, hs[m]))

        # eqs. 26-27: gated fusion of the cross-modal and the aligned representation
        rs = []
        gates = []
        for m in range(3):
            local = zs[m] + aligned[m]
            gam = torch.sigmoid(self.fuse_gate[m](torch.cat([c[:, m], local], dim=-1)))
            rs.append(gam * c[:, m] + (1 - gam) * local)
            gates.append(gam.mean(dim=-1))
        r = torch.stack(rs, dim=1)  # [B, 3, d]

        # eqs. 28-29: modality graph with cosine edge weights
        rn = F.normalize(r, dim=-1, eps=1e-6)
        adj = F.relu(rn @ rn.transpose(1, 2))
        eye = torch.eye(3, device=r.device, dtype=r.dtype).unsqueeze(0)
        adj = adj * (1 - eye) + eye
        adj = adj * (pf.unsqueeze(2) * pf.unsqueeze(1))
        adj = adj / adj.sum(dim=-1, keepdim=True).clamp_min(1e-6)
        r2 = (r + self.gcn_drop(F.gelu(self.gcn(adj @ r)))) * pf.unsqueeze(-1)

        # eq. 30
        x = self.out_norm(r2.reshape(r2.shape[0], -1))
        score = self.head(x).squeeze(-1)
        d = r2.shape[-1]
        parts = [x[:, i * d : (i + 1) * d] for i in range(3)]
        contributions = block_norm_contributions(self.head[0].weight, parts, present)
        aux = {
            "modality_attention": token_w.mean(dim=1),
            "fusion_gate": torch.stack(gates, -1),
            "adjacency": adj,
            "alpha": alpha,
        }
        return FusionOutput(score, contributions, aux)
