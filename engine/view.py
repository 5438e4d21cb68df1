"""Terminal output for `sentistream run`: a rich live view on a TTY, plain lines otherwise."""

from __future__ import annotations

import sys
from collections import deque
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

LABEL_STYLE = {"positive": "bold green", "negative": "bold red", "neutral": "yellow"}


def _bar(value: float, width: int = 20) -> str:
    filled = int(round(max(0.0, min(1.0, value)) * width))
    return "█" * filled + "·" * (width - filled)


class EventView:
    def __init__(self, mode: str = "auto", events_address: str = "") -> None:
        if mode == "auto":
            mode = "live" if sys.stdout.isatty() else "lines"
        self.mode = mode
        self.events_address = events_address
        self.console = Console()
        self.last: dict[str, Any] | None = None
        self.history: deque[float] = deque(maxlen=60)
        self.transcript: deque[str] = deque(maxlen=30)
        self._last_t1_words = -1.0
        self.count = 0
        self.stage_state: dict[str, str] = {}
        self.live: Live | None = None

    def __enter__(self) -> EventView:
        if self.mode == "live":
            self.live = Live(self._render(), console=self.console, refresh_per_second=8, transient=False)
            self.live.__enter__()
        elif self.mode == "lines":
            print(f"events on {self.events_address}", flush=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.__exit__(*exc)

    def on_event(self, event: dict[str, Any]) -> None:
        self.count += 1
        self.last = event
        self.history.append(float(event.get("score", 0.0)))
        for w in event.get("new_words", []):
            self.transcript.append(w.get("text", ""))
        if self.mode == "lines":
            win = event.get("window", {})
            lat = event.get("latency_ms", {}).get("capture_to_emit", 0.0)
            print(
                f"[{win.get('t0', 0):7.2f}-{win.get('t1', 0):7.2f}] {event.get('label', ''):8s} "
                f'{event.get("score", 0):+.2f}  latency {lat:6.1f} ms  "{event.get("transcript", "")}"'
                + (f"  +[{' '.join(w['text'] for w in event.get('new_words', []))}]" if event.get("new_words") else ""),
                flush=True,
            )
        elif self.live is not None:
            self.live.update(self._render())

    def on_status(self, stages) -> None:
        state = {}
        for name, sp in stages.items():
            if sp.proc is None:
                state[name] = "restarting" if sp.restart_due else ("done" if sp.done else "stopped")
            else:
                state[name] = "running" if sp.ready else "starting"
        if state != self.stage_state:
            self.stage_state = state
            if self.live is not None:
                self.live.update(self._render())

    def _render(self):
        table = Table(show_header=False, box=None, expand=False)
        ev = self.last
        if ev is None:
            table.add_row("status", "starting stages: " + ", ".join(f"{k}={v}" for k, v in self.stage_state.items()))
        else:
            label = ev.get("label", "")
            score = float(ev.get("score", 0.0))
            win = ev.get("window", {})
            table.add_row("window", f"{win.get('t0', 0):.2f} – {win.get('t1', 0):.2f} s   (event {self.count})")
            table.add_row(
                "sentiment",
                Text(
                    f"{label:9s} {score:+.2f}   confidence {ev.get('confidence', 0):.2f}",
                    style=LABEL_STYLE.get(label, ""),
                ),
            )
            spark = "".join(" ▁▂▃▄▅▆▇█"[min(8, max(0, int((s + 3) / 6 * 8.99)))] for s in self.history)
            table.add_row("last 15 s", spark)
            attributions = ev.get("attributions")  # score points this modality changed (occlusion)
            if attributions:
                for k, v in attributions.items():
                    table.add_row(f"  {k}", f"{_bar(min(1.0, abs(v) / 3.0))} {v:+.2f}")
            else:
                for k, v in ev.get("contributions", {}).items():
                    table.add_row(f"  {k}", f"{_bar(v)} {v:.2f}")
            table.add_row(
                "transcript",
                ev.get("transcript", "") + (f" [dim]{ev.get('partial', '')}[/dim]" if ev.get("partial") else ""),
            )
            lat = ev.get("latency_ms", {})
            table.add_row(
                "latency", f"capture→emit {lat.get('capture_to_emit', 0):.1f} ms, model {lat.get('model', 0):.1f} ms"
            )
            model = ev.get("model", {})
            table.add_row(
                "model", f"{model.get('name')}" + (" (UNTRAINED PLACEHOLDER)" if model.get("placeholder") else "")
            )
            table.add_row("stages", ", ".join(f"{k}={v}" for k, v in self.stage_state.items()))
        said = Text(" ".join(self.transcript)[-300:], style="cyan")
        return Group(Panel(table, title="sentistream", subtitle=self.events_address), Panel(said, title="said"))

    def summary(self, result) -> None:
        drops = {
            f"{stage}:{stream}": n
            for stage, c in result.stats.items()
            for stream, n in (c.get("dropped") or {}).items()
            if n
        }
        malformed = {s: c.get("malformed", 0) for s, c in result.stats.items() if c.get("malformed")}
        restarts = {s: n for s, n in result.restarts.items() if n}
        print(
            f"{result.events} events; restarts: {restarts or 'none'}; dropped: {drops or 'none'}; "
            f"malformed: {malformed or 'none'}",
            file=sys.stderr,
        )
        if getattr(result, "stage_log", ""):
            print(f"stage output (native libraries included): {result.stage_log}", file=sys.stderr)
