"""Common interface of the fusion model zoo.

Every model takes one :class:`FusionInputs` (three padded sequences plus boolean masks) and returns a
:class:`FusionOutput` (a regression score, per-modality contributions, and named auxiliary tensors).
A single training loop can drive every model::

    out = model(inputs)                       # inputs.labels may carry the batch labels (see below)
    loss = task_loss(out.score, labels, kind) + model.auxiliary_loss(inputs, out, labels)

Conventions
-----------
* Shapes: ``text`` [B, Lt, Dt], ``audio`` [B, La, Da], ``vision`` [B, Lv, Dv] (float); masks [B, L] bool,
  ``True`` = valid step. Masks are right-padded prefixes (valid steps first, then padding), which is what
  :func:`lengths_to_mask` builds; models rely on that for "last valid step" reads and for LSTMs.
* A per-utterance vector is a sequence of length 1 (see :meth:`FusionInputs.from_vectors`).
* A whole missing modality is an all-``False`` mask row. Models must stay finite (no NaN) and give that
  modality a contribution of exactly 0 for that sample.
* ``score`` is unbounded (callers clip to [-3, 3]); ``contributions`` are non-negative, sum to 1 per
  sample, ordered text / audio / vision.
* Models avoid Python-side data-dependent control flow in ``forward`` (``if self.training`` and
  ``if x is None`` are static and fine) so that ``torch.compile`` / ONNX export can trace them.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MODALITIES: tuple[str, str, str] = ("text", "audio", "vision")


@dataclass(frozen=True)
class ModalityDims:
    """Feature width of each modality's input vectors."""

    text: int
    audio: int
    vision: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __iter__(self):  # (text, audio, vision)
        return iter((self.text, self.audio, self.vision))


#: The live engine's features: MiniLM sentence/token embeddings (384), audio 40, vision 100.
DEFAULT_DIMS = ModalityDims(text=384, audio=40, vision=100)


@dataclass
class FusionInputs:
    """A padded multimodal batch.

    ``labels`` ([B] float, optional) is a *training-time* teacher signal for the few models whose
    forward pass conditions on the label during training (KuDA's sentiment ratio). Models must ignore
    it in eval mode; inference code leaves it ``None``.
    """

    text: Tensor
    audio: Tensor
    vision: Tensor
    text_mask: Tensor
    audio_mask: Tensor
    vision_mask: Tensor
    labels: Tensor | None = None

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_lengths(
        cls,
        text: Tensor,
        audio: Tensor,
        vision: Tensor,
        text_lengths: Tensor | None = None,
        audio_lengths: Tensor | None = None,
        vision_lengths: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> FusionInputs:
        """Build masks from lengths (``None`` = every step valid); a length of 0 = missing modality."""

        def mk(x: Tensor, lengths: Tensor | None) -> Tensor:
            if lengths is None:
                return torch.ones(x.shape[0], x.shape[1], dtype=torch.bool, device=x.device)
            return lengths_to_mask(lengths.to(x.device), x.shape[1])

        return cls(
            text, audio, vision, mk(text, text_lengths), mk(audio, audio_lengths), mk(vision, vision_lengths), labels
        )

    @classmethod
    def from_vectors(
        cls,
        text: Tensor,
        audio: Tensor,
        vision: Tensor,
        present: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> FusionInputs:
        """Per-utterance vectors [B, D] -> sequences of length 1.

        ``present`` ([B, 3] bool, text/audio/vision) marks which modalities exist; default all.
        """
        b = text.shape[0]
        if present is None:
            present = torch.ones(b, 3, dtype=torch.bool, device=text.device)
        present = present.to(torch.bool)
        return cls(
            text.unsqueeze(1),
            audio.unsqueeze(1),
            vision.unsqueeze(1),
            present[:, 0:1],
            present[:, 1:2],
            present[:, 2:3],
            labels,
        )

    # ----------------------------------------------------------------- accessors
    @property
    def batch_size(self) -> int:
        return self.text.shape[0]

    def sequences(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.text, self.audio, self.vision

    def masks(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.text_mask, self.audio_mask, self.vision_mask

    def present(self) -> Tensor:
        """[B, 3] bool: does the sample have at least one valid step of text / audio / vision."""
        return torch.stack([m.any(dim=1) for m in self.masks()], dim=1)

    def with_occlusions(self) -> FusionInputs:
        """A single sample [1, ...] -> the batch [4, ...] an occlusion attribution needs: row 0 as it
        is, rows 1-3 the same with text / audio / vision masked out (and zeroed, so a model that
        read masked steps would still see nothing). One forward pass of batch 4 instead of four."""
        if self.batch_size != 1:
            raise ValueError(f"with_occlusions takes one sample, not a batch of {self.batch_size}")
        seqs = [x.repeat(4, *([1] * (x.dim() - 1))) for x in self.sequences()]
        masks = [m.repeat(4, 1) for m in self.masks()]
        for i in range(3):
            seqs[i][i + 1] = 0
            masks[i][i + 1] = False
        return FusionInputs(*seqs, *masks)

    def lengths(self) -> Tensor:
        """[B, 3] long: valid lengths of text / audio / vision."""
        return torch.stack([m.sum(dim=1) for m in self.masks()], dim=1)

    def to(self, device) -> FusionInputs:
        kw = {
            f.name: (getattr(self, f.name).to(device) if getattr(self, f.name) is not None else None)
            for f in fields(self)
        }
        return FusionInputs(**kw)

    def validate(self, dims: ModalityDims | None = None) -> None:
        """Shape/dtype checks (for data loaders and tests; not called inside ``forward``)."""
        b = self.text.shape[0]
        for name, x, m, d in zip(
            MODALITIES, self.sequences(), self.masks(), dims if dims is not None else (None, None, None)
        ):
            if x.dim() != 3:
                raise ValueError(f"{name}: expected [B, L, D], got {tuple(x.shape)}")
            if m.dtype != torch.bool:
                raise ValueError(f"{name}_mask must be bool, got {m.dtype}")
            if tuple(m.shape) != (b, x.shape[1]) or x.shape[0] != b:
                raise ValueError(f"{name}: mask {tuple(m.shape)} does not match {tuple(x.shape)}")
            if d is not None and x.shape[2] != d:
                raise ValueError(f"{name}: feature width {x.shape[2]} != expected {d}")
        if self.labels is not None and self.labels.reshape(-1).shape[0] != b:
            raise ValueError("labels must have one value per sample")


@dataclass
class FusionOutput:
    """``score`` [B]; ``contributions`` [B, 3] (text/audio/vision, >= 0, rows sum to 1); ``aux``:
    model-specific tensors (unimodal predictions, pooled representations, ...) that
    :meth:`FusionModel.auxiliary_loss` and diagnostics use."""

    score: Tensor
    contributions: Tensor
    aux: dict[str, Tensor] = field(default_factory=dict)


class FusionModel(nn.Module, abc.ABC):
    """Abstract base of every zoo model.

    Subclasses are registered with :func:`sentistream.models.registry.register`, which sets
    :attr:`name`. Constructor signature: ``__init__(self, dims: ModalityDims, **hparams)`` with every
    hyper-parameter a keyword with a default; :func:`~sentistream.models.registry.build` records the
    effective hyper-parameters in :attr:`hparams` (used by checkpoints).
    """

    name: ClassVar[str] = "fusion"

    def __init__(self, dims: ModalityDims):
        super().__init__()
        self.dims = ModalityDims(int(dims.text), int(dims.audio), int(dims.vision))
        self.hparams: dict = {}

    @abc.abstractmethod
    def forward(self, inputs: FusionInputs) -> FusionOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def auxiliary_losses(self, inputs: FusionInputs, output: FusionOutput, labels: Tensor) -> dict[str, Tensor]:
        """Named, already *weighted* extra loss terms (for logging). Default: none."""
        return {}

    def auxiliary_loss(self, inputs: FusionInputs, output: FusionOutput, labels: Tensor) -> Tensor:
        """Sum of :meth:`auxiliary_losses` (a 0-dim tensor; 0 for models without extra losses)."""
        total = output.score.new_zeros(())
        for v in self.auxiliary_losses(inputs, output, labels).values():
            total = total + v
        return total

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------- helpers
def lengths_to_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """[B] lengths -> [B, max_len] bool mask, ``True`` for the first ``lengths[b]`` steps."""
    lengths = lengths.long()
    if max_len is None:
        max_len = int(lengths.max().item()) if lengths.numel() else 0
    steps = torch.arange(max_len, device=lengths.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


def masked_mean(x: Tensor, mask: Tensor, dim: int = 1) -> Tensor:
    """Mean of ``x`` [B, L, ...] over valid steps of ``mask`` [B, L]; all-invalid rows give 0."""
    m = mask.to(x.dtype)
    while m.dim() < x.dim():
        m = m.unsqueeze(-1)
    num = (x * m).sum(dim=dim)
    den = m.sum(dim=dim).clamp_min(1.0)
    return num / den


def last_valid(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` [B, L, D] at the last valid step of a right-padded ``mask``; all-invalid rows give 0."""
    lengths = mask.long().sum(dim=1)
    idx = (lengths - 1).clamp_min(0)
    out = x.gather(1, idx.view(-1, 1, 1).expand(-1, 1, x.shape[-1])).squeeze(1)
    return out * (lengths > 0).to(x.dtype).unsqueeze(-1)


def reverse_padded(x: Tensor, mask: Tensor) -> Tensor:
    """Reverse the valid prefix of each sequence (padding stays at the end). Self-inverse."""
    lengths = mask.long().sum(dim=1, keepdim=True)  # [B, 1]
    steps = torch.arange(x.shape[1], device=x.device).unsqueeze(0)  # [1, L]
    idx = torch.where(steps < lengths, lengths - 1 - steps, steps)  # [B, L]
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def normalise_contributions(raw: Tensor, present: Tensor) -> Tensor:
    """Non-negative [B, 3] scores -> rows summing to 1, absent modalities exactly 0.

    A row with no present modality (or all-zero scores) becomes uniform over the present ones
    (or over all three if none is present), so the output is always finite.
    """
    p = present.to(raw.dtype)
    w = raw.clamp_min(0.0) * p
    s = w.sum(dim=-1, keepdim=True)
    fallback_p = torch.where(p.sum(dim=-1, keepdim=True) > 0, p, torch.ones_like(p))
    fallback = fallback_p / fallback_p.sum(dim=-1, keepdim=True)
    return torch.where(s > 0, w / s.clamp_min(torch.finfo(raw.dtype).tiny), fallback)


def block_norm_contributions(weight: Tensor, parts: list[Tensor], present: Tensor) -> Tensor:
    """Contribution proxy for "concatenate then linear" heads.

    ``weight`` is the first head layer's weight [H, sum(d_m)], ``parts`` the three concatenated
    per-modality vectors [B, d_m]. The contribution of modality m is ``||W[:, block_m] @ z_m||``,
    i.e. the size of that modality's share of the first pre-activation, normalised over modalities.
    """
    outs = []
    start = 0
    for z in parts:
        d = z.shape[-1]
        outs.append(torch.linalg.vector_norm(z @ weight[:, start : start + d].t(), dim=-1))
        start += d
    return normalise_contributions(torch.stack(outs, dim=-1), present)


def task_loss(pred: Tensor, target: Tensor, kind: str = "l1") -> Tensor:
    """Regression task loss used by the training loop: ``l1`` (MMSA default), ``mse``, ``smooth_l1``."""
    pred = pred.reshape(-1)
    target = target.reshape(-1).to(pred.dtype)
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "mse":
        return F.mse_loss(pred, target)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target)
    raise ValueError(f"unknown task loss {kind!r} (l1, mse, smooth_l1)")
