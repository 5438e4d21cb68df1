"""The live dashboard: a local web page fed from ZeroMQ through a WebSocket bridge.

`sentistream run --dashboard [HOST:PORT]` starts a `DashboardBridge` in a background
thread of the supervisor process. The bridge runs one asyncio loop that

  * subscribes to the events topic (the fusion stage's public PUB address) and to the
    "video" stream of the camera / media stage (only while a page is connected),
  * downscales the newest frame to 320 px wide and encodes it as JPEG (at most 4 fps),
  * receives each stage's health from the supervisor's on_status callback,
  * serves the page (engine/static/) over HTTP and pushes everything over a WebSocket
    on the same port: JSON text messages {"type": "hello" | "event" | "health", ...}
    and binary messages, each one JPEG frame.

It binds 127.0.0.1 unless a host is given explicitly. WebSocket connections from a
page of another origin, and requests with a foreign Host header (DNS rebinding), are
refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import zmq
import zmq.asyncio

from .messages import MessageError, decode, now_ns

log = logging.getLogger("sentistream.dashboard")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
PREVIEW_WIDTH = 320
PREVIEW_FPS = 4.0
JPEG_QUALITY = 70
CHART_SECONDS = 60.0
HEALTH_INTERVAL_S = 1.0
MAX_WRITE_BUFFER = 512 * 1024  # a client this far behind skips video frames
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "[::1]"}


def parse_listen(value: str | None) -> tuple[str, int]:
    """'--dashboard' value -> (host, port). '' / None -> 127.0.0.1:8765; 'PORT' or ':PORT' ->
    loopback; any other interface only when named explicitly ('0.0.0.0:8765')."""
    text = (value or "").strip()
    if not text:
        return DEFAULT_HOST, DEFAULT_PORT
    host, sep, port_text = text.rpartition(":")
    if not sep:  # just a port
        host, port_text = "", text
    host = host.strip("[]") or DEFAULT_HOST
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"--dashboard {value!r}: expected HOST:PORT, :PORT or PORT (e.g. 127.0.0.1:8765)")
    return host, int(port_text)


def video_address(supervisor: Any) -> str | None:
    """The PUB address of the stage that publishes the "video" stream, if any."""
    for sp in supervisor.stages.values():
        if "video" in tuple(getattr(sp.definition, "outputs", ())) and sp.spec.output_address:
            return sp.spec.output_address
    return None


def stage_health(stages: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Supervisor StageProcess objects -> JSON-able health, one entry per stage."""
    out: dict[str, dict[str, Any]] = {}
    for name, sp in stages.items():
        if sp.proc is None:
            state = "restarting" if sp.restart_due else ("done" if sp.done else "stopped")
        else:
            state = "running" if sp.ready else "starting"
        counters = dict(sp.last_stats.get("counters", {})) if isinstance(sp.last_stats, dict) else {}
        out[name] = {
            "state": state,
            "pid": sp.proc.pid if sp.proc is not None else None,
            "restarts": int(sp.restarts),
            "kind": getattr(sp.definition, "kind", ""),
            "received": int(counters.get("received", 0) or 0),
            "published": int(counters.get("published", 0) or 0),
            "malformed": int(counters.get("malformed", 0) or 0),
            "errors": int(counters.get("errors", 0) or 0),
            "dropped": sum(int(v or 0) for v in (counters.get("dropped") or {}).values()),
            "skipped_video": int(counters.get("skipped_video", 0) or 0),
        }
    return out


def _write_buffer(ws: Any) -> int:
    transport = getattr(ws, "transport", None)
    try:
        return int(transport.get_write_buffer_size()) if transport is not None else 0
    except Exception:
        return 0


def _static(name: str) -> bytes:
    return resources.files("sentistream.engine").joinpath("static", name).read_bytes()


class DashboardBridge:
    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        events_address: str,
        video_address: str | None = None,
        title: str = "sentistream",
    ) -> None:
        self.host = host
        self.port = port  # the bound port once started (port 0 picks a free one)
        self.events_address = events_address
        self.video_address = video_address
        self.title = title
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._stop_event: asyncio.Event | None = None
        self._clients: set[Any] = set()
        self._video_sock: zmq.asyncio.Socket | None = None
        self._video_subscribed = False
        # state replayed to a page that connects mid-run
        self.points: deque[tuple[float, float]] = deque()  # (t1, score) over the last CHART_SECONDS
        self.transcript: deque[dict[str, Any]] = deque(maxlen=400)
        self.last_event: dict[str, Any] | None = None
        self.health: dict[str, dict[str, Any]] = {}
        self.counts = {"events": 0, "frames_sent": 0, "clients_total": 0, "malformed": 0}
        self._last_health_sent = 0.0
        self._last_health_check = 0.0
        self._last_health_json = ""

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    # ---- thread ------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> DashboardBridge:
        self._thread = threading.Thread(target=self._thread_main, name="sentistream-dashboard", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the dashboard did not start in time")
        if self._start_error is not None:
            raise self._start_error
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self.loop is not None and self._stop_event is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self._stop_event.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> DashboardBridge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by start() when it fails early
            if not self._ready.is_set():
                self._start_error = exc
                self._ready.set()
            else:
                log.exception("dashboard bridge stopped")

    # ---- supervisor hook (called from the supervisor's thread) -------------------------
    def on_status(self, stages: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self._last_health_check < 0.2:  # the supervisor calls this every loop turn
            return
        self._last_health_check = now
        try:
            health = stage_health(stages)
        except Exception:  # the dashboard must never disturb the supervisor
            log.debug("stage health unavailable", exc_info=True)
            return
        encoded = json.dumps(health, sort_keys=True)
        states_changed = {k: v["state"] for k, v in health.items()} != {k: v["state"] for k, v in self.health.items()}
        if not states_changed and (
            encoded == self._last_health_json or now - self._last_health_sent < HEALTH_INTERVAL_S
        ):
            return
        self._last_health_sent = now
        self._last_health_json = encoded
        self.health = health
        if self.loop is not None and self.loop.is_running():
            msg = json.dumps({"type": "health", "stages": health})
            self.loop.call_soon_threadsafe(self._broadcast, msg)

    def chain(self, other: Callable[[dict[str, Any]], None] | None) -> Callable[[dict[str, Any]], None]:
        """An on_status callback that calls `other` (e.g. the terminal view) and then the bridge."""

        def on_status(stages: dict[str, Any]) -> None:
            if other is not None:
                other(stages)
            self.on_status(stages)

        return on_status

    # ---- asyncio side ----------------------------------------------------------------
    async def _main(self) -> None:
        from websockets.asyncio.server import serve

        self.loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        ctx = zmq.asyncio.Context()
        events = ctx.socket(zmq.SUB)
        events.setsockopt(zmq.LINGER, 0)
        events.setsockopt(zmq.RCVHWM, 10_000)
        events.setsockopt(zmq.SUBSCRIBE, b"events")
        events.connect(self.events_address)
        tasks = [asyncio.create_task(self._events_loop(events))]
        if self.video_address:
            self._video_sock = ctx.socket(zmq.SUB)
            self._video_sock.setsockopt(zmq.LINGER, 0)
            self._video_sock.setsockopt(zmq.RCVHWM, 4)
            self._video_sock.connect(self.video_address)
            tasks.append(asyncio.create_task(self._video_loop(self._video_sock)))
        server = None
        try:
            server = await serve(
                self._ws_handler,
                self.host,
                self.port,
                process_request=self._process_request,
                server_header=None,
                compression=None,
                max_size=64 * 1024,
                close_timeout=1,
            )
            sock = next(iter(server.sockets))
            self.port = int(sock.getsockname()[1])
            self._ready.set()
            log.info("dashboard on %s", self.url)
            await self._stop_event.wait()
        finally:
            if server is not None:
                server.close()  # closes the pages' connections too
                try:
                    await asyncio.wait_for(server.wait_closed(), 2.0)
                except (TimeoutError, Exception):
                    pass
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            events.close(linger=0)
            if self._video_sock is not None:
                self._video_sock.close(linger=0)
            ctx.term()

    # HTTP: the page, its two files and a JSON snapshot; anything else on /ws is the socket.
    def _process_request(self, connection: Any, request: Any) -> Any:
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        def respond(status: HTTPStatus, body: bytes, ctype: str, extra: list[tuple[str, str]] | None = None) -> Any:
            headers = Headers(
                [
                    ("Content-Type", ctype),
                    ("Content-Length", str(len(body))),
                    ("Cache-Control", "no-store"),
                    ("X-Content-Type-Options", "nosniff"),
                    ("Connection", "close"),
                    *(extra or []),
                ]
            )
            return Response(int(status), status.phrase, headers, body)

        path = urlsplit(request.path).path
        host_header = request.headers.get("Host", "")
        if not self._host_allowed(host_header):
            return respond(HTTPStatus.FORBIDDEN, b"forbidden host\n", "text/plain; charset=utf-8")
        if path == "/ws":
            origin = request.headers.get("Origin")
            if origin is not None and urlsplit(origin).netloc.lower() != host_header.lower():
                log.warning("dashboard: WebSocket from foreign origin %r refused", origin)
                return respond(HTTPStatus.FORBIDDEN, b"foreign origin\n", "text/plain; charset=utf-8")
            return None  # go on with the WebSocket handshake
        if path in STATIC_FILES:
            name, ctype = STATIC_FILES[path]
            csp = (
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                f"connect-src 'self' ws://{host_header}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            )
            return respond(HTTPStatus.OK, _static(name), ctype, [("Content-Security-Policy", csp)])
        if path == "/state.json":
            body = json.dumps(self.snapshot()).encode()
            return respond(HTTPStatus.OK, body, "application/json")
        if path == "/favicon.ico":
            return respond(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        return respond(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    def _host_allowed(self, host_header: str) -> bool:
        if not host_header:
            return False
        host = urlsplit(f"//{host_header}").hostname or ""
        if self.host in ("0.0.0.0", "::", ""):
            return True  # bound to every interface on purpose: any name may reach it
        return host in LOOPBACK_NAMES or host == self.host.strip("[]")

    def snapshot(self) -> dict[str, Any]:
        return {
            "type": "hello",
            "title": self.title,
            "events_address": self.events_address,
            "video": bool(self.video_address),
            "chart_seconds": CHART_SECONDS,
            "points": list(self.points),
            "transcript": list(self.transcript),
            "last_event": self.last_event,
            "stages": self.health,
            "counts": dict(self.counts, clients=len(self._clients)),
        }

    async def _ws_handler(self, ws: Any) -> None:
        self._clients.add(ws)
        self.counts["clients_total"] += 1
        self._update_video_subscription()
        try:
            await ws.send(json.dumps(self.snapshot()))
            async for _ in ws:  # the page sends nothing that matters; just keep it open
                pass
        except Exception:
            pass
        finally:
            self._clients.discard(ws)
            self._update_video_subscription()

    def _update_video_subscription(self) -> None:
        sock = self._video_sock
        if sock is None:
            return
        want = bool(self._clients)
        if want and not self._video_subscribed:
            sock.setsockopt(zmq.SUBSCRIBE, b"video")
        elif not want and self._video_subscribed:
            sock.setsockopt(zmq.UNSUBSCRIBE, b"video")
        self._video_subscribed = want

    def _broadcast(self, message: str | bytes, droppable: bool = False) -> None:
        """Queue `message` on every open page, in order, without waiting (no backpressure:
        the data is small; video frames are skipped for a page that falls behind)."""
        from websockets.asyncio.server import broadcast

        clients = list(self._clients)
        if droppable:
            clients = [ws for ws in clients if _write_buffer(ws) <= MAX_WRITE_BUFFER]
        if clients:
            broadcast(clients, message, raise_exceptions=False)

    async def _events_loop(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames = await sock.recv_multipart()
            received_ns = now_ns()
            try:
                msg = decode(frames)
            except MessageError as exc:
                self.counts["malformed"] += 1
                log.debug("dashboard: malformed event dropped: %s", exc)
                continue
            if msg.kind == "eos":
                self._broadcast(json.dumps({"type": "eos", "t": msg.t_media_s}))
                continue
            if msg.kind != "event":
                continue
            ev = msg.meta
            try:
                self._record(ev)
            except (KeyError, TypeError, ValueError) as exc:
                self.counts["malformed"] += 1
                log.debug("dashboard: event without the expected fields: %s", exc)
                continue
            t_emit = ev.get("t_emit_ns")
            delivery_ms = round((received_ns - t_emit) / 1e6, 3) if isinstance(t_emit, int) else None
            self._broadcast(json.dumps({"type": "event", "event": ev, "delivery_ms": delivery_ms}))

    def _record(self, ev: dict[str, Any]) -> None:
        t1, score = float(ev["window"]["t1"]), float(ev["score"])
        if self.points and t1 < self.points[-1][0] - 1e-6:
            self.points.clear()  # a new session: the stream clock restarted
            self.transcript.clear()
        self.points.append((t1, score))
        while self.points and self.points[0][0] < t1 - CHART_SECONDS:
            self.points.popleft()
        for w in ev.get("new_words", []):
            self.transcript.append(
                {"text": str(w.get("text", "")), "start_s": w.get("start_s"), "end_s": w.get("end_s")}
            )
        self.last_event = ev
        self.counts["events"] += 1

    async def _video_loop(self, sock: zmq.asyncio.Socket) -> None:
        import cv2

        last_sent = 0.0
        while True:
            frames = await sock.recv_multipart(copy=False)
            # the newest frame wins: drain what is queued
            while True:
                try:
                    frames = await sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
            now = time.monotonic()
            if not self._clients or now - last_sent < 1.0 / PREVIEW_FPS:
                continue
            try:
                msg = decode(frames)
            except MessageError:
                continue
            if msg.kind != "video_frame" or not msg.arrays:
                continue
            rgb = msg.arrays[0]
            if rgb.ndim != 3 or rgb.shape[2] != 3:
                continue
            h, w = rgb.shape[:2]
            scale = PREVIEW_WIDTH / max(1, w)
            small = cv2.resize(rgb, (PREVIEW_WIDTH, max(2, int(round(h * scale)))), interpolation=cv2.INTER_AREA)
            ok, jpeg = cv2.imencode(
                ".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
            )
            if not ok:
                continue
            last_sent = now
            self.counts["frames_sent"] += 1
            self._broadcast(jpeg.tobytes(), droppable=True)


def start_dashboard(listen: str | None, supervisor: Any) -> DashboardBridge:
    """Start a bridge for `supervisor` on `listen` (HOST:PORT); raises ValueError / OSError."""
    host, port = parse_listen(listen)
    if host.strip("[]") not in LOOPBACK_NAMES:
        log.warning(
            "the dashboard listens on %s: anyone who can reach this address sees the video, the transcript "
            "and the sentiment (no authentication); prefer 127.0.0.1 and an SSH tunnel",
            host,
        )
    bridge = DashboardBridge(
        host,
        port,
        events_address=supervisor.events_address,
        video_address=video_address(supervisor),
        title=f"sentistream · {supervisor.config.source.kind}",
    )
    return bridge.start()
