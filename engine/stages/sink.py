"""Sink stage: writes every event as a JSON line and tells the supervisor when the stream ends."""

from __future__ import annotations

import json
from pathlib import Path

from ..messages import Message
from ..stage import Stage


class SinkStage(Stage):
    def setup(self) -> None:
        path = self.params.jsonl
        self.file = None
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # Append: a restarted sink must not erase what it already wrote.
            self.file = open(path, "a", encoding="utf-8")
        self.events = 0

    def on_message(self, msg: Message) -> None:
        if msg.kind != "event":
            return
        self.events += 1
        if self.file is not None:
            self.file.write(json.dumps(msg.meta, separators=(",", ":")) + "\n")
            self.file.flush()

    def on_eos(self, msg: Message) -> None:
        self.report("done", events=self.events)
        self.finish()

    def stats_extra(self) -> dict:
        return {"events": self.events}

    def teardown(self) -> None:
        if getattr(self, "file", None) is not None:
            self.file.close()
