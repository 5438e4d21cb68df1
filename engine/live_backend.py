"""How a live model's windows are scored: the backend ``[fusion]`` asks for, handed to
:class:`~sentistream.models.live.LiveModel` as its ``backend_factory`` (the model itself knows no
backend and no server).

* ``fusion.server`` empty (or ``local_only``): :func:`~sentistream.engine.backends.select_backend`
  (compiled, ONNX Runtime, TensorRT or eager, with its fall-back chain).
* ``fusion.server`` set: the fusion server at that address (``tcp://`` / ``ipc://``: ``sentistream
  serve``; ``ray://HOST:PORT/APP``: the deployment of ``sentistream serve --engine ray``,
  engine/ray_client.py), checked at start to serve the same weights and dims (a mismatch stops the graph: :class:`FatalStageError`); a window the server fails
  is scored by the local eager model, logged and counted, so a window is never lost to the network.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .backends import BackendOptions, EagerBackend, model_fingerprint, select_backend
from .fusion_client import RemoteFusion
from .fusion_wire import RemoteFusionError
from .ray_client import SCHEME as RAY_SCHEME
from .ray_client import RayFusion
from .stage import FatalStageError

log = logging.getLogger("sentistream.live_backend")


def live_backend(fusion_cfg: Any, local_only: bool = False) -> Callable[[Any], Any]:
    """A ``backend_factory`` for ``LiveModel``: reads ``fusion_cfg`` (a FusionConfig)."""

    def make(live: Any) -> Callable[[Any], Any]:
        server = "" if local_only else str(getattr(fusion_cfg, "server", "") or "")
        if server:
            return ServerWithLocalFallback(connect_checked(live, server, fusion_cfg), live)
        opts = BackendOptions.from_config(fusion_cfg)
        opts.onnx_prebuild = "background"  # a fast start: other buckets export while we run
        return select_backend(opts, live.model, device=live.device)

    return make


def connect_checked(live: Any, address: str, fusion_cfg: Any) -> RemoteFusion | RayFusion:
    """A client of the fusion server (or Ray Serve application) at ``address`` that serves
    ``live``'s weights and dims."""
    timeout_s = float(getattr(fusion_cfg, "server_timeout_s", 2.0))
    remote: RemoteFusion | RayFusion
    if address.startswith(RAY_SCHEME):
        remote = RayFusion(address, timeout_s=timeout_s)
        how = "sentistream serve --engine ray (docs/serving.md)"
    else:
        remote = RemoteFusion(address, timeout_s=timeout_s)
        how = f"sentistream serve --address {address}"
    try:
        info = remote.info(timeout_s=max(5.0, remote.timeout_s))
    except RemoteFusionError as exc:
        remote.close()
        raise FatalStageError(f"fusion.server: {exc}; start it with `{how}`") from None
    mine = model_fingerprint(live.model)
    if info.get("fingerprint") != mine or list(info.get("dims", [])) != list(live.dims):
        remote.close()
        raise FatalStageError(
            f"fusion.server {address} serves {info.get('model')} (weights {info.get('fingerprint')}, "
            f"dims {info.get('dims')}), but this engine is configured for {live.name} (weights {mine}, "
            f"dims {list(live.dims)}): give `sentistream serve` the same [fusion] model/checkpoint"
        )
    log.info(
        "fusion: windows go to the fusion server at %s (%s via %s)", address, info.get("model"), info.get("backend")
    )
    return remote


class ServerWithLocalFallback:
    """The fusion server's forward pass; a window it fails (an error, a timeout) is scored by the
    local eager model instead."""

    name = "remote"  # "local-fallback" while the window just scored was scored here

    def __init__(self, remote: RemoteFusion | RayFusion, live: Any) -> None:
        self.remote = remote
        self.live = live
        self.failures = 0
        self._local: EagerBackend | None = None

    @property
    def reason(self) -> str:
        return self.remote.reason

    def __call__(self, inputs: Any) -> Any:
        try:
            out = self.remote(inputs)
            self.name = "remote"
            return out
        except Exception as exc:  # RemoteFusionError, a timeout: score this window here
            self.failures += 1
            self.name = "local-fallback"  # the event of this window names it (model.backend)
            if self.failures in (1, 10, 100) or self.failures % 1000 == 0:
                log.warning("fusion server failed (%s); window scored locally (%d so far)", exc, self.failures)
            if self._local is None:
                self._local = EagerBackend(self.live.model, self.live.device)
            return self._local(inputs)

    def describe(self) -> dict[str, Any]:
        return {**self.remote.describe(), "local_fallbacks": self.failures}

    def close(self) -> None:
        self.remote.close()
