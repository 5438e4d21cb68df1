"""The fusion server's wire format, shared by the server (fusion_server) and its client
(fusion_client): a window's six arrays (text / audio / vision ``float32 [B, L, D]`` and their
``bool [B, L]`` masks) in the engine's multipart message, and the error a failed request raises."""

from __future__ import annotations

import numpy as np

DEFAULT_ADDRESS = "tcp://127.0.0.1:5560"


TOPIC = "fusion"


MAX_SEQ = 4096  # longest sequence a request may carry


ARRAY_NAMES = ("text", "audio", "vision", "text_mask", "audio_mask", "vision_mask")


class RemoteFusionError(RuntimeError):
    """The fusion server answered with an error, or did not answer in time."""


# --------------------------------------------------------------------------- wire helpers
def inputs_to_arrays(inputs) -> list[np.ndarray]:
    """FusionInputs -> the six request arrays (float32 sequences, bool masks), on the CPU."""
    out = []
    for name in ARRAY_NAMES:
        t = getattr(inputs, name).detach().cpu()
        out.append(t.numpy().astype(bool if name.endswith("_mask") else np.float32, copy=False))
    return out


def arrays_to_inputs(arrays: list[np.ndarray], dims: tuple[int, int, int], max_batch: int):
    """Validate the six request arrays and build FusionInputs; raises ValueError with the reason."""
    import torch

    from ..models.base import FusionInputs

    if len(arrays) != 6:
        raise ValueError(f"a request carries 6 arrays ({', '.join(ARRAY_NAMES)}), not {len(arrays)}")
    seqs, masks = arrays[:3], arrays[3:]
    b = seqs[0].shape[0] if seqs[0].ndim == 3 else -1
    if not 1 <= b <= max_batch:
        raise ValueError(f"batch must be 1..{max_batch}, got {b}")
    for name, x, m, d in zip(ARRAY_NAMES, seqs, masks, dims):
        if x.dtype != np.float32 or x.ndim != 3 or x.shape[0] != b or x.shape[2] != d:
            raise ValueError(f"{name}: expected float32 [{b}, L, {d}], got {x.dtype}{list(x.shape)}")
        if not 1 <= x.shape[1] <= MAX_SEQ:
            raise ValueError(f"{name}: length must be 1..{MAX_SEQ}, got {x.shape[1]}")
        if m.dtype != np.bool_ or m.shape != x.shape[:2]:
            raise ValueError(f"{name}_mask: expected bool {list(x.shape[:2])}, got {m.dtype}{list(m.shape)}")
    # np.frombuffer views are read-only; torch wants writable memory
    t = [torch.from_numpy(np.array(a, copy=True)) for a in arrays]
    return FusionInputs(*t)
