"""TFN: Tensor Fusion Network (Zadeh et al., EMNLP 2017).

* Modality embedding subnetworks: text -> LSTM over the sequence, hidden state at the last valid step,
  dropout, linear to ``text_out``; audio and vision -> masked mean over time, then a 3-layer ReLU MLP
  (``audio_hidden`` / ``vision_hidden`` units).
* Tensor fusion: ``z = [1; z_a] (x) [1; z_v] (x) [1; z_t]`` (outer product, flattened), so the unimodal,
  bimodal and trimodal interactions are all present.
* Sentiment inference subnetwork: dropout, two ReLU layers of ``post_fusion_dim`` units, linear output.

Choices where the paper is silent or the product differs:

* Sizes: text 64, audio 16, vision 32, post-fusion 128 (the paper's 128/32/32 makes a 140k-wide
  fusion layer, 18 M parameters; these sizes keep it at 4.7 M). The MMSA version uses BatchNorm in the
  audio/vision subnetworks; here LayerNorm (batch-size independent, identical train/eval behaviour).
* The score is the linear output (the MMSA version squashes it to [-3, 3] with a sigmoid).
* A missing modality gets ``z_m = 0``, i.e. its factor is ``[1; 0]`` and only the other modalities'
  terms remain.
* ``contributions`` (TFN has no weights over modalities): occlusion -- ``|s - s_{-m}|`` where
  ``s_{-m}`` is the score with ``z_m`` replaced by zeros (exactly the missing-modality input), normalised.
  Computed on detached embeddings in one batched pass; deterministic in eval mode.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import (
    FusionInputs,
    FusionModel,
    FusionOutput,
    ModalityDims,
    last_valid,
    masked_mean,
    normalise_contributions,
)
from .registry import register


class TextSubNet(nn.Module):
    """LSTM over the (right-padded) sequence; the output at the last valid step -> dropout -> linear."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float):
        super().__init__()
        self.lstm = nn.LSTM(in_dim, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        out, _ = self.lstm(x * mask.to(x.dtype).unsqueeze(-1))
        present = mask.any(dim=1).to(x.dtype).unsqueeze(-1)
        return self.linear(self.drop(last_valid(out, mask))) * present


class PooledSubNet(nn.Module):
    """Masked mean over time -> LayerNorm -> dropout -> 3 x (Linear, ReLU)."""

    def __init__(self, in_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(in_dim),
            nn.Dropout(dropout),
            nn.Linear(in_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        present = mask.any(dim=1).to(x.dtype).unsqueeze(-1)
        return self.net(masked_mean(x, mask)) * present


def embed_modalities(
    text_net: nn.Module, audio_net: nn.Module, vision_net: nn.Module, inputs: FusionInputs
) -> tuple[Tensor, Tensor, Tensor]:
    return (
        text_net(inputs.text, inputs.text_mask),
        audio_net(inputs.audio, inputs.audio_mask),
        vision_net(inputs.vision, inputs.vision_mask),
    )


def occlusion_contributions(fuse, z_t: Tensor, z_a: Tensor, z_v: Tensor, present: Tensor) -> Tensor:
    """``|f(z) - f(z with z_m = 0)|`` for each modality, normalised (one batched call of ``fuse``)."""
    b = z_t.shape[0]
    zt, za, zv = z_t.detach(), z_a.detach(), z_v.detach()
    st = torch.cat([zt, torch.zeros_like(zt), zt, zt], dim=0)
    sa = torch.cat([za, za, torch.zeros_like(za), za], dim=0)
    sv = torch.cat([zv, zv, zv, torch.zeros_like(zv)], dim=0)
    s = fuse(st, sa, sv).view(4, b)
    raw = (s[1:] - s[0:1]).abs().t()  # [B, 3]
    return normalise_contributions(raw, present)


@register("tfn")
class TFN(FusionModel):
    def __init__(
        self,
        dims: ModalityDims,
        text_hidden: int = 128,
        text_out: int = 64,
        audio_hidden: int = 16,
        vision_hidden: int = 32,
        post_fusion_dim: int = 128,
        dropout: float = 0.2,
        post_fusion_dropout: float = 0.2,
    ):
        super().__init__(dims)
        self.text_net = TextSubNet(dims.text, text_hidden, text_out, dropout)
        self.audio_net = PooledSubNet(dims.audio, audio_hidden, dropout)
        self.vision_net = PooledSubNet(dims.vision, vision_hidden, dropout)
        fusion_dim = (text_out + 1) * (audio_hidden + 1) * (vision_hidden + 1)
        self.post_fusion = nn.Sequential(
            nn.Dropout(post_fusion_dropout),
            nn.Linear(fusion_dim, post_fusion_dim),
            nn.ReLU(),
            nn.Linear(post_fusion_dim, post_fusion_dim),
            nn.ReLU(),
            nn.Linear(post_fusion_dim, 1),
        )

    def fuse(self, z_t: Tensor, z_a: Tensor, z_v: Tensor) -> Tensor:
        one = torch.ones(z_t.shape[0], 1, dtype=z_t.dtype, device=z_t.device)
        a = torch.cat([one, z_a], dim=-1)
        v = torch.cat([one, z_v], dim=-1)
        t = torch.cat([one, z_t], dim=-1)
        # explicit broadcasting (a 3-operand einsum makes torch.export specialise the batch size)
        z = (a[:, :, None, None] * v[:, None, :, None] * t[:, None, None, :]).reshape(a.shape[0], -1)
        return self.post_fusion(z).squeeze(-1)

    def forward(self, inputs: FusionInputs) -> FusionOutput:
        z_t, z_a, z_v = embed_modalities(self.text_net, self.audio_net, self.vision_net, inputs)
        score = self.fuse(z_t, z_a, z_v)
        contributions = occlusion_contributions(self.fuse, z_t, z_a, z_v, inputs.present())
        return FusionOutput(score, contributions, {"text": z_t, "audio": z_a, "vision": z_v})
