"""LMF: Low-rank Multimodal Fusion (Liu et al., ACL 2018).

The TFN tensor ``W . ([1; z_a] (x) [1; z_v] (x) [1; z_t])`` is replaced by a rank-``rank`` decomposition
with modality-specific factors: ``h = sum_{i=1}^{r} lambda_i * prod_m ([1; z_m] W_m^{(i)}) + b``. The
embedding subnetworks are TFN's (LSTM for text, pooled MLPs for audio and vision).

Choices where the paper is silent or the product differs:

* Rank 4 (issue 4); sizes text 64, audio 16, vision 32; ``output_dim`` = 1 makes the fused vector
  the score itself (as in the reference implementation for regression); a larger ``output_dim`` adds a
  linear layer to 1. Factors and rank weights are Xavier-normal initialised, bias 0.
* LayerNorm instead of BatchNorm in the audio/vision subnetworks; a missing modality gets ``z_m = 0``.
* ``contributions``: occlusion, as for TFN (``|s - s_{-m}|`` with ``z_m`` zeroed), normalised.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import FusionInputs, FusionModel, FusionOutput, ModalityDims
from .registry import register
from .tfn import PooledSubNet, TextSubNet, embed_modalities, occlusion_contributions


@register("lmf")
class LMF(FusionModel):
    def __init__(
        self,
        dims: ModalityDims,
        text_hidden: int = 128,
        text_out: int = 64,
        audio_hidden: int = 16,
        vision_hidden: int = 32,
        rank: int = 4,
        output_dim: int = 1,
        dropout: float = 0.2,
        post_fusion_dropout: float = 0.2,
    ):
        super().__init__(dims)
        self.text_net = TextSubNet(dims.text, text_hidden, text_out, dropout)
        self.audio_net = PooledSubNet(dims.audio, audio_hidden, dropout)
        self.vision_net = PooledSubNet(dims.vision, vision_hidden, dropout)
        self.drop = nn.Dropout(post_fusion_dropout)
        self.text_factor = nn.Parameter(torch.empty(rank, text_out + 1, output_dim))
        self.audio_factor = nn.Parameter(torch.empty(rank, audio_hidden + 1, output_dim))
        self.vision_factor = nn.Parameter(torch.empty(rank, vision_hidden + 1, output_dim))
        self.fusion_weights = nn.Parameter(torch.empty(1, rank))
        self.fusion_bias = nn.Parameter(torch.zeros(1, output_dim))
        for p in (self.text_factor, self.audio_factor, self.vision_factor, self.fusion_weights):
            nn.init.xavier_normal_(p)
        self.out = nn.Linear(output_dim, 1) if output_dim != 1 else None

    def fuse(self, z_t: Tensor, z_a: Tensor, z_v: Tensor) -> Tensor:
        one = torch.ones(z_t.shape[0], 1, dtype=z_t.dtype, device=z_t.device)
        t = torch.cat([one, self.drop(z_t)], dim=-1)
        a = torch.cat([one, self.drop(z_a)], dim=-1)
        v = torch.cat([one, self.drop(z_v)], dim=-1)
        ft = torch.einsum("bi,rio->rbo", t, self.text_factor)
        fa = torch.einsum("bi,rio->rbo", a, self.audio_factor)
        fv = torch.einsum("bi,rio->rbo", v, self.vision_factor)
        h = torch.einsum("r,rbo->bo", self.fusion_weights[0], ft * fa * fv) + self.fusion_bias
        if self.out is not None:
            h = self.out(h)
        return h[:, 0]

    def forward(self, inputs: FusionInputs) -> FusionOutput:
        z_t, z_a, z_v = embed_modalities(self.text_net, self.audio_net, self.vision_net, inputs)
        score = self.fuse(z_t, z_a, z_v)
        contributions = occlusion_contributions(self.fuse, z_t, z_a, z_v, inputs.present())
        return FusionOutput(score, contributions, {"text": z_t, "audio": z_a, "vision": z_v})
