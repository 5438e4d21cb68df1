#!/usr/bin/env python3
"""Read a sentistream engine's events with nothing but pyzmq and json (no sentistream import).

    sentistream run --source demo --events tcp://127.0.0.1:5557 &
    python examples/raw_subscriber.py tcp://127.0.0.1:5557 --until-eos | jq -c '{t: .window.t1, label, score}'

Prints one JSON event per line on stdout (the same lines `sentistream run --jsonl` writes).
See docs/protocol.md for the frame layout and the versioning policy.
"""

from __future__ import annotations

import argparse
import json
import sys

import zmq

WIRE_VERSION = 1  # header frame layout
EVENT_MAJOR = "sentistream.event/1"  # the event schema this script understands


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("address", nargs="?", default="tcp://127.0.0.1:5557")
    p.add_argument("--until-eos", action="store_true", help="exit when the engine's stream ends")
    p.add_argument("--count", type=int, default=0, help="exit after N events")
    p.add_argument("--timeout", type=float, default=0.0, help="exit after S seconds without an event")
    args = p.parse_args()

    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"events")  # the topic: frame 0 of every event message
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(args.address)  # connect before or after the engine binds: ZeroMQ (re)connects by itself
    n = skipped = 0
    try:
        while True:
            if args.timeout and not sock.poll(int(args.timeout * 1000)):
                break
            frames = sock.recv_multipart()
            if len(frames) < 2:
                skipped += 1
                continue
            try:
                header = json.loads(frames[1])  # frame 1: the JSON header
            except ValueError:
                skipped += 1
                continue
            if not isinstance(header, dict) or header.get("v") != WIRE_VERSION:
                skipped += 1
                continue
            if header.get("kind") == "eos":  # the session ended
                if args.until_eos:
                    break
                continue
            event = header.get("meta")
            if header.get("kind") != "event" or not isinstance(event, dict) or event.get("schema") != EVENT_MAJOR:
                skipped += 1
                continue
            print(json.dumps(event, separators=(",", ":")), flush=True)
            n += 1
            if args.count and n >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        ctx.term()
    print(f"{n} events, {skipped} skipped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
