"""KuDA: Knowledge-guided Dynamic modality Attention fusion.

Feng et al., "Knowledge-Guided Dynamic Modality Attention Fusion Framework for Multimodal Sentiment
Analysis", Findings of EMNLP 2024.

Structure:

* **Unimodal encoders** (one per modality): linear projection to ``enc_dim`` + learned positions +
  ``enc_layers`` post-LN Transformer layers. Their output ``LN(s_L)`` is the modality-specific
  knowledge.
* **Knowledge-inject adapters**: a chain over the encoder's hidden states
  ``a_1 = A_1(LN(s_0 + s_1))``, ``a_i = A_i(LN(a_{i-1} + s_i))``; each adapter is a bottleneck
  (down-projection to ``enc_dim/2``, ``adapter_layers`` Transformer layers, up-projection, residual).
  The unimodal representation is ``[LN(s_L) ; a_L]`` (width ``2*enc_dim``).
* **Decoders**: masked mean -> MLP ``2e -> e/2 -> e/4 -> e/8 -> 1`` (GELU) predicting a unimodal score.
* **Sentiment ratio**: ``w_m = exp(-k * (y_hat_m - y)^2)`` (y = multimodal label; the reference code's
  kernel with slope ``k`` = ``ratio_k``), normalised over the present modalities and rescaled so the
  ratios *average* 1; fixed to 1 in eval mode (and whenever no label is given).
* **Dynamic attention blocks** (``fusion_layers``): for each modality, cross-modal attention with the
  multimodal representation as Q and that modality as K/V (+ FFN, post-LN), a per-modality LayerNorm,
  scaled by its ratio; the three are summed (then LayerNorm), added to the input, followed by
  multi-head self-attention and an FFN (post-LN residuals).
* **Head**: masked mean of the multimodal sequence -> MLP ``hidden -> 64 -> 32 -> 1`` (GELU).
* **Correlation estimation (CPC/NCE)** between the pooled multimodal representation and each pooled
  unimodal one (cosine scores, in-batch negatives, as in the reference code), weight ``nce_weight``.

Training stages (:meth:`KuDA.set_stage`):

* ``1`` unimodal pre-training: encoders + adapters + decoders learn from the unimodal losses; the fusion
  and head are frozen and see detached unimodal features, so the task loss trains nothing.
  **MOSI/MOSEI have no unimodal labels: stage 1 uses the multimodal label for every modality.**
* ``2`` fusion: adapters and decoders frozen (``requires_grad=False``); loss = task + nce.
* ``0`` (default, for loops that ignore stages): everything trainable; loss = task +
  ``uni_weight`` * unimodal losses + nce.

Choices where the paper is silent or the product differs:

* Text arrives as precomputed token/sentence features (MiniLM), so the text branch uses the same
  Transformer encoder as audio/vision instead of BERT with adapters after layers 3/6/9/11.
* Length alignment: the reference code maps every sequence to the text length with a learned
  ``Linear`` over fixed lengths, impossible with variable lengths and per-utterance vectors. Here the
  multimodal sequence is ``[z_0 ; H_t + p_a + p_v]`` (``p_m`` = masked means, ``z_0`` = a learned token
  + ``p_t + p_a + p_v``), masked by ``[1 ; text_mask]``, so it exists even when text is missing.
* The ratio is computed from detached unimodal predictions (it is a weighting, not a target). The
  reference code's ratio sits inside scale-invariant LayerNorms and its eval path drops them; here the
  ratio scales the normalised branch outputs, with mean 1 so train and eval scales match. A missing
  modality gets ratio 0.
* ``dim_head = hidden / heads`` (reference code: 64). Unimodal losses are MSE, averaged over the
  samples where the modality is present.
* ``contributions``: mean L2 norm of each modality's cross-attention output (what it writes into the
  multimodal stream), averaged over valid query positions and blocks, times its ratio.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import FusionInputs, FusionModel, FusionOutput, ModalityDims, masked_mean, normalise_contributions
from .layers import FeedForward, LearnedPositions, MultiHeadAttention, PostNormTransformerLayer
from .registry import register


class KIAdapter(nn.Module):
    """Bottleneck adapter with Transformer layers in the bottleneck and a residual connection."""

    def __init__(self, dim: int, layers: int, heads: int, dropout: float):
        super().__init__()
        low = dim // 2
        self.down = nn.Linear(dim, low)
        self.layers = nn.ModuleList(
            [PostNormTransformerLayer(low, heads, max(low // 2, 1), dropout) for _ in range(layers)]
        )
        self.up = nn.Linear(low, dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.down(x)
        for layer in self.layers:
            h = layer(h, mask)
        return x + self.up(h)


class UnimodalEncoder(nn.Module):
    """Encoder + knowledge-inject adapters; returns [LN(s_L) ; adapter chain output] [B, L, 2e]."""

    def __init__(
        self,
        in_dim: int,
        enc_dim: int,
        layers: int,
        heads: int,
        dropout: float,
        adapter_layers: int,
        adapter_heads: int,
        adapter_dropout: float,
        max_len: int,
    ):
        super().__init__()
        self.proj = nn.Linear(in_dim, enc_dim)
        self.pos = LearnedPositions(max_len, enc_dim)
        self.layers = nn.ModuleList(
            [PostNormTransformerLayer(enc_dim, heads, enc_dim // 2, dropout) for _ in range(layers)]
        )
        self.adapters = nn.ModuleList(
            [KIAdapter(enc_dim, adapter_layers, adapter_heads, adapter_dropout) for _ in range(layers)]
        )
        self.norm = nn.LayerNorm(enc_dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.pos(self.proj(x))
        states = [h]
        for layer in self.layers:
            h = layer(h, mask)
            states.append(h)
        data = states[0]
        for i, adapter in enumerate(self.adapters):
            data = adapter(self.norm(data + states[i + 1]), mask)
        return torch.cat([self.norm(states[-1]), data], dim=-1)


class UnimodalDecoder(nn.Module):
    def __init__(self, in_dim: int, enc_dim: int, dropout: float):
        super().__init__()
        h = [max(enc_dim // 2, 1), max(enc_dim // 4, 1), max(enc_dim // 8, 1)]
        self.drop = nn.Dropout(dropout)
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, h[0]),
            nn.GELU(),
            nn.Linear(h[0], h[1]),
            nn.GELU(),
            nn.Linear(h[1], h[2]),
            nn.GELU(),
            nn.Linear(h[2], 1),
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.mlp(self.drop(masked_mean(x, mask))).squeeze(-1)


class CrossBlock(nn.Module):
    """Post-LN cross-attention (Q = multimodal, K/V = one modality) + FFN."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.attn = MultiHeadAttention(dim, heads, dim // heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn, dropout)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, target: Tensor, source: Tensor, source_mask: Tensor) -> tuple[Tensor, Tensor]:
        a, _ = self.attn(target, source, source, source_mask)
        t = self.norm1(target + a)
        return self.norm2(t + self.ffn(t)), a


class DynamicAttentionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.cross = nn.ModuleList([CrossBlock(dim, heads, ffn, dropout) for _ in range(3)])
        self.branch_norm = nn.ModuleList([nn.LayerNorm(dim) for _ in range(3)])
        self.sum_norm = nn.LayerNorm(dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mha = MultiHeadAttention(dim, heads, dim // heads, 0.0)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = FeedForward(dim, ffn, 0.0)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)

    def forward(
        self, source: Tensor, source_mask: Tensor, unis: list[Tensor], masks: list[Tensor], ratio: Tensor
    ) -> tuple[Tensor, Tensor]:
        fused = torch.zeros_like(source)
        sizes = []
        qm = source_mask.to(source.dtype)
        for m in range(3):
            c, a = self.cross[m](source, unis[m], masks[m])
            fused = fused + ratio[:, m].view(-1, 1, 1) * self.branch_norm[m](c)
            sizes.append((a.norm(dim=-1) * qm).sum(1) / qm.sum(1).clamp_min(1.0))
        source = self.norm1(source + self.sum_norm(fused))
        source = self.norm2(source + self.mha(source, source, source, source_mask)[0])
        source = self.norm3(source + self.ffn(source))
        return source, torch.stack(sizes, dim=-1)


@register("kuda")
class KuDA(FusionModel):
    def __init__(
        self,
        dims: ModalityDims,
        enc_dim: int = 128,
        enc_layers: int = 4,
        enc_heads: int = 8,
        enc_dropout: float = 0.2,
        adapter_layers: int = 2,
        adapter_heads: int = 4,
        adapter_dropout: float = 0.1,
        decoder_dropout: float = 0.0,
        hidden: int = 256,
        ffn: int = 512,
        heads: int = 8,
        fusion_layers: int = 2,
        fusion_dropout: float = 0.3,
        ratio_k: float = 2.0,
        nce_weight: float = 0.01,
        uni_weight: float = 1.0,
        max_len: int = 512,
    ):
        super().__init__(dims)
        self.ratio_k, self.nce_weight, self.uni_weight = ratio_k, nce_weight, uni_weight
        self.stage = 0
        enc = dict(
            enc_dim=enc_dim,
            layers=enc_layers,
            heads=enc_heads,
            dropout=enc_dropout,
            adapter_layers=adapter_layers,
            adapter_heads=adapter_heads,
            adapter_dropout=adapter_dropout,
            max_len=max_len,
        )
        self.encoders = nn.ModuleList([UnimodalEncoder(d, **enc) for d in dims])
        self.decoders = nn.ModuleList([UnimodalDecoder(2 * enc_dim, enc_dim, decoder_dropout) for _ in range(3)])
        self.dim_align = nn.ModuleList([nn.Linear(2 * enc_dim, hidden) for _ in range(3)])
        self.fusion_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.blocks = nn.ModuleList(
            [DynamicAttentionBlock(hidden, heads, ffn, fusion_dropout) for _ in range(fusion_layers)]
        )
        self.cls = nn.Sequential(nn.Linear(hidden, 64), nn.GELU(), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 1))

    # ------------------------------------------------------------------ stages
    def unimodal_modules(self) -> list[nn.Module]:
        return [*self.encoders, *self.decoders]

    def set_stage(self, stage: int) -> None:
        """0 = joint (default), 1 = unimodal pre-training, 2 = fusion with adapters/decoders frozen."""
        if stage not in (0, 1, 2):
            raise ValueError("stage must be 0, 1 or 2")
        self.stage = stage
        for p in self.parameters():
            p.requires_grad_(True)
        if stage == 1:
            uni = {id(p) for mod in self.unimodal_modules() for p in mod.parameters()}
            for p in self.parameters():
                if id(p) not in uni:
                    p.requires_grad_(False)
        elif stage == 2:
            for enc in self.encoders:
                enc.adapters.requires_grad_(False)
            self.decoders.requires_grad_(False)

    # ------------------------------------------------------------------ forward
    def _ratio(self, uni_pred: Tensor, present: Tensor, labels) -> Tensor:
        p = present.to(uni_pred.dtype)
        if not self.training or labels is None:
            return p
        y = labels.reshape(-1, 1).to(uni_pred.dtype)
        w = torch.exp(-self.ratio_k * (uni_pred.detach() - y) ** 2) * p
        n = p.sum(dim=-1, keepdim=True)
        return n * w / w.sum(dim=-1, keepdim=True).clamp_min(1e-12)

    def forward(self, inputs: FusionInputs) -> FusionOutput:
        masks = list(inputs.masks())
        present = inputs.present()
        feats = [enc(x, m) for enc, x, m in zip(self.encoders, inputs.sequences(), masks)]
        uni_pred = torch.stack([dec(f, m) for dec, f, m in zip(self.decoders, feats, masks)], dim=-1)
        if self.stage == 1:
            feats = [f.detach() for f in feats]
        unis = [align(f) for align, f in zip(self.dim_align, feats)]
        pooled = [masked_mean(u, m) for u, m in zip(unis, masks)]

        b = inputs.text.shape[0]
        z0 = self.fusion_token.expand(b, -1, -1) + (pooled[0] + pooled[1] + pooled[2]).unsqueeze(1)
        seq = unis[0] + (pooled[1] + pooled[2]).unsqueeze(1)
        source = torch.cat([z0, seq], dim=1)
        source_mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=source.device), masks[0]], dim=1)

        ratio = self._ratio(uni_pred, present, inputs.labels)
        sizes = torch.zeros_like(ratio)
        for block in self.blocks:
            source, s = block(source, source_mask, unis, masks, ratio)
            sizes = sizes + s
        fused = masked_mean(source, source_mask)
        score = self.cls(fused).squeeze(-1)
        contributions = normalise_contributions(sizes * ratio, present)
        aux = {"unimodal": uni_pred, "ratio": ratio, "fused": fused, "pooled_unimodal": torch.stack(pooled, dim=1)}
        return FusionOutput(score, contributions, aux)

    # ------------------------------------------------------------------ losses
    @staticmethod
    def nce(x: Tensor, y: Tensor, present: Tensor) -> Tensor:
        """CPC/NCE between pooled unimodal ``x`` [B, h] and multimodal ``y`` [B, h] (cosine scores)."""
        x = F.normalize(x, dim=-1, eps=1e-6)
        y = F.normalize(y, dim=-1, eps=1e-6)
        pos = (x * y).sum(dim=-1)
        neg = torch.logsumexp(x @ y.t(), dim=-1)
        p = present.to(x.dtype)
        return (-(pos - neg) * p).sum() / p.sum().clamp_min(1.0)

    def auxiliary_losses(self, inputs: FusionInputs, output: FusionOutput, labels: Tensor) -> dict[str, Tensor]:
        present = inputs.present().to(output.score.dtype)
        y = labels.reshape(-1, 1).to(output.score.dtype)
        losses: dict[str, Tensor] = {}
        if self.stage in (0, 1):
            err = (output.aux["unimodal"] - y) ** 2 * present
            uni = (err.sum(dim=0) / present.sum(dim=0).clamp_min(1.0)).sum()
            losses["unimodal"] = uni * (1.0 if self.stage == 1 else self.uni_weight)
        if self.stage in (0, 2):
            pooled = output.aux["pooled_unimodal"]
            fused = output.aux["fused"]
            nce = sum(self.nce(pooled[:, m], fused, present[:, m]) for m in range(3))
            losses["nce"] = self.nce_weight * nce
        return losses
