"""MSFN: multimodal shared-subspace fusion network with adversarial, triplet and reconstruction losses.

Built from the description in issue 4 (equation numbers refer to the MSFN paper):

* Encoders: audio and vision -> Bi-LSTM + dense; text -> Transformer encoder + dense. Each gives a
  sequence ``H_m`` [B, L_m, d].
* Generators ``G_m`` (eqs. 5-8) map ``H_m`` step-wise into a shared subspace ``S_m``; per-modality
  discriminators ``D_m`` tell whether a pooled shared vector came from modality ``m``. The adversarial
  game is trained with a gradient-reversal layer (GRL) between ``S_m`` and the discriminators, so one
  optimiser suffices: the discriminators minimise their BCE, the generators/encoders receive the
  reversed gradient and so make the three subspace distributions indistinguishable.
* Triplet loss (eqs. 9-10) within each modality on the pooled, L2-normalised shared vectors:
  positives share the sentiment class, negatives do not (batch-hard mining, margin ``margin``).
* Decoders ``R_m`` (eqs. 11-12) reconstruct each modality from its shared representation (MSE).
* Fusion (eqs. 13-15): per-modality scaled dot-product self-attention over ``S_m``, masked mean,
  concatenation, MLP -> score.
* Loss = task + ``alpha`` * adv + ``beta`` * triplet + ``gamma`` * recon (MOSI: d=128, alpha 0.2,
  beta 0.5, gamma 0.2, dropout 0.1, lr 1e-4, batch 64).

Choices where the description is silent:

* Bi-LSTM: one layer, ``d/2`` units per direction (exact on padded batches without packing, see
  :class:`~sentistream.models.layers.MaskedBiLSTM`); text: linear projection to ``d`` + learned
  positions + ``text_layers`` pre-LN Transformer layers (``heads`` heads), then dense.
* Generator: 2-layer MLP (d -> d -> d, GELU) applied per step. Discriminator: MLP d -> d/2 -> 1 on the
  masked mean of ``S_m``; ``D_m`` is trained to output 1 for modality ``m``'s vectors and 0 for the
  other two modalities' vectors (one-vs-rest, BCE). GRL coefficient ``grl_lambda`` = 1.
* Sentiment classes for the triplet loss: polarity of the label (negative < 0, neutral = 0,
  positive > 0); margin 0.2 on unit vectors; anchors without a valid positive and negative are skipped.
* Reconstruction target: the modality's *input* features (a fixed target, so the encoder cannot
  collapse it), predicted step-wise from ``S_m`` by a 2-layer MLP; MSE over valid steps.
* Self-attention in the fusion is single-head scaled dot-product with Q/K/V projections and a residual.
* Missing modalities are excluded from every auxiliary term. ``contributions`` (the model has no
  modality weights): ``||W1[:, block_m] z_m||`` -- the size of each modality's share of the fusion MLP's
  first pre-activation -- normalised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import FusionInputs, FusionModel, FusionOutput, ModalityDims, block_norm_contributions, masked_mean
from .layers import LearnedPositions, MaskedBiLSTM, PreNormTransformerLayer, grad_reverse, masked_softmax
from .registry import register


class LSTMEncoder(nn.Module):
    def __init__(self, in_dim: int, d: int, dropout: float):
        super().__init__()
        self.lstm = MaskedBiLSTM(in_dim, d // 2)
        self.dense = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * (d // 2), d), nn.GELU())

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        out, _ = self.lstm(x, mask)
        return self.dense(out)


class TextEncoder(nn.Module):
    def __init__(self, in_dim: int, d: int, layers: int, heads: int, dropout: float, max_len: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, d)
        self.pos = LearnedPositions(max_len, d)
        self.layers = nn.ModuleList(
            [PreNormTransformerLayer(d, heads, d // heads, 2 * d, dropout) for _ in range(layers)]
        )
        self.norm = nn.LayerNorm(d)
        self.dense = nn.Sequential(nn.Dropout(dropout), nn.Linear(d, d), nn.GELU())

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.pos(self.proj(x))
        for layer in self.layers:
            h = layer(h, mask)
        return self.dense(self.norm(h))


class SelfAttention(nn.Module):
    """Single-head scaled dot-product self-attention with a residual (eqs. 13-14)."""

    def __init__(self, d: int, dropout: float):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)
        self.scale = d**-0.5

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        s = torch.matmul(self.q(x), self.k(x).transpose(-1, -2)) * self.scale
        w = masked_softmax(s, mask.unsqueeze(1))
        return x + self.drop(torch.matmul(w, self.v(x)))


def _mlp(d_in: int, d_hidden: int, d_out: int, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_hidden, d_out))


@register("msfn")
class MSFN(FusionModel):
    def __init__(
        self,
        dims: ModalityDims,
        d: int = 128,
        text_layers: int = 1,
        heads: int = 8,
        dropout: float = 0.1,
        alpha: float = 0.2,
        beta: float = 0.5,
        gamma: float = 0.2,
        margin: float = 0.2,
        grl_lambda: float = 1.0,
        max_len: int = 512,
    ):
        super().__init__(dims)
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.margin, self.grl_lambda = margin, grl_lambda
        self.encoders = nn.ModuleList(
            [
                TextEncoder(dims.text, d, text_layers, heads, dropout, max_len),
                LSTMEncoder(dims.audio, d, dropout),
                LSTMEncoder(dims.vision, d, dropout),
            ]
        )
        self.generators = nn.ModuleList([_mlp(d, d, d) for _ in range(3)])
        self.discriminators = nn.ModuleList([_mlp(d, d // 2, 1) for _ in range(3)])
        self.decoders = nn.ModuleList([_mlp(d, d, in_dim) for in_dim in dims])
        self.attn = nn.ModuleList([SelfAttention(d, dropout) for _ in range(3)])
        self.fusion = nn.Sequential(nn.Linear(3 * d, d), nn.GELU(), nn.Dropout(dropout), nn.Linear(d, 1))

    def forward(self, inputs: FusionInputs) -> FusionOutput:
        masks = inputs.masks()
        shared, pooled_shared, pooled = [], [], []
        for m, (x, mask) in enumerate(zip(inputs.sequences(), masks)):
            h = self.encoders[m](x, mask)
            s = self.generators[m](h)
            shared.append(s)
            pooled_shared.append(masked_mean(s, mask))
            pooled.append(masked_mean(self.attn[m](s, mask), mask))
        z = torch.cat(pooled, dim=-1)
        score = self.fusion(z).squeeze(-1)
        contributions = block_norm_contributions(self.fusion[0].weight, pooled, inputs.present())
        aux = {"shared": torch.stack(pooled_shared, dim=1)}
        if self.training:
            # sequence-level shared features are only needed by the reconstruction loss
            for m in range(3):
                aux[f"shared_seq_{m}"] = shared[m]
        return FusionOutput(score, contributions, aux)

    # ------------------------------------------------------------------ losses
    def adversarial_loss(self, shared: Tensor, present: Tensor) -> Tensor:
        """Per-modality discriminators on GRL'd pooled shared vectors ``shared`` [B, 3, d]."""
        rev = grad_reverse(shared, self.grl_lambda)
        p = present.to(shared.dtype)  # [B, 3] (source modality present)
        total = shared.new_zeros(())
        for m in range(3):
            logits = self.discriminators[m](rev).squeeze(-1)  # [B, 3]: D_m on every source
            target = torch.zeros_like(logits)
            target[:, m] = 1.0
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            total = total + (bce * p).sum() / p.sum().clamp_min(1.0)
        return total / 3.0

    def triplet_loss(self, shared: Tensor, labels: Tensor, present: Tensor) -> Tensor:
        cls = torch.sign(labels.reshape(-1))
        same = cls.unsqueeze(0) == cls.unsqueeze(1)
        eye = torch.eye(cls.shape[0], dtype=torch.bool, device=cls.device)
        total = shared.new_zeros(())
        for m in range(3):
            e = F.normalize(shared[:, m], dim=-1, eps=1e-6)
            # unit vectors: ||a - b||^2 = 2 - 2 a.b ; clamp keeps sqrt's gradient finite at 0
            dist = (2.0 - 2.0 * (e @ e.t())).clamp_min(1e-8).sqrt()
            valid = present[:, m].unsqueeze(0) & present[:, m].unsqueeze(1)
            pos_mask = same & ~eye & valid
            neg_mask = ~same & valid
            d_ap = torch.where(pos_mask, dist, torch.full_like(dist, -1.0)).max(dim=1).values
            d_an = torch.where(neg_mask, dist, torch.full_like(dist, 1e4)).min(dim=1).values
            ok = (pos_mask.any(dim=1) & neg_mask.any(dim=1)).to(e.dtype)
            loss = F.relu(d_ap - d_an + self.margin) * ok
            total = total + loss.sum() / ok.sum().clamp_min(1.0)
        return total / 3.0

    def reconstruction_loss(self, inputs: FusionInputs, output: FusionOutput) -> Tensor:
        total = output.score.new_zeros(())
        for m, (x, mask) in enumerate(zip(inputs.sequences(), inputs.masks())):
            rec = self.decoders[m](output.aux[f"shared_seq_{m}"])
            err = ((rec - x) ** 2).mean(dim=-1)
            w = mask.to(err.dtype)
            total = total + (err * w).sum() / w.sum().clamp_min(1.0)
        return total / 3.0

    def auxiliary_losses(self, inputs: FusionInputs, output: FusionOutput, labels: Tensor) -> dict[str, Tensor]:
        present = inputs.present()
        shared = output.aux["shared"]
        losses = {
            "adversarial": self.alpha * self.adversarial_loss(shared, present),
            "triplet": self.beta * self.triplet_loss(shared, labels, present),
        }
        if "shared_seq_0" in output.aux:
            losses["reconstruction"] = self.gamma * self.reconstruction_loss(inputs, output)
        return losses
