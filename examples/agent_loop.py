#!/usr/bin/env python3
"""A conversational agent loop that reads the user's current sentiment before it replies.

    sentistream run --source webcam:0 --mic default --events tcp://127.0.0.1:5557 &
    python examples/agent_loop.py --events tcp://127.0.0.1:5557          # type; Ctrl-D ends

    # without a keyboard (e.g. next to `sentistream run --source demo`): scripted turns
    python examples/agent_loop.py --events tcp://127.0.0.1:5557 --say "hi" --say "what did you think?"

The replies are rule-based (no language model needed): a real agent would put
`summary` and `latest` into its prompt instead. The point is the loop: before each
reply, ask the engine how the user feels *now* and how that has moved recently.
"""

from __future__ import annotations

import argparse
import sys
import time

from sentistream.client import SentimentClient, SentimentEvent, Summary

FRESH_S = 3.0  # an event older than this means the engine is not hearing / seeing the user


def compose_reply(user_text: str, summary: Summary, latest: SentimentEvent | None) -> str:
    """A rule-based reply that takes the user's current sentiment into account."""
    if latest is None or summary.events == 0:
        return "(I can't read your expression right now; is the engine running?) " + _echo(user_text)
    label, score = latest.label, latest.score
    caveat = " (note: the engine runs an untrained placeholder model)" if latest.model.placeholder else ""
    heard = " ".join(summary.words[-8:])
    if label == "negative" or (summary.mean_score or 0.0) < -0.5:
        if summary.trend_label == "falling":
            opener = "You seem to be getting more upset, and I'm sorry about that."
        else:
            opener = "That sounds frustrating."
        reply = f"{opener} Do you want to tell me what went wrong?"
    elif label == "positive" or (summary.mean_score or 0.0) > 0.5:
        opener = "You sound happier than a moment ago!" if summary.trend_label == "rising" else "Glad to hear it!"
        reply = f"{opener} What did you like most?"
    else:
        reply = "I see. Tell me more." if summary.trend_label != "falling" else "Is something bothering you?"
    if heard:
        reply += f' (I heard: "{heard}")'
    return (
        f"{reply}  [sentiment {label} {score:+.2f}, last {summary.seconds:.0f} s mean {summary.mean_score:+.2f}, "
        f"{summary.trend_label}]{caveat}"
    )


def _echo(text: str) -> str:
    return f"You said: {text!r}." if text else ""


def turn(client: SentimentClient, user_text: str, span_s: float) -> str:
    latest = client.latest(max_age_s=FRESH_S)  # None when the engine has gone quiet
    summary = client.summary(span_s)
    return compose_reply(user_text, summary, latest)


def main() -> int:
    p = argparse.ArgumentParser(description="a conversational loop that reads the user's sentiment first")
    p.add_argument("--events", default=None, help="the engine's events address (e.g. tcp://127.0.0.1:5557)")
    p.add_argument("--config", default=None, help="or a TOML config with transport.events_address")
    p.add_argument("--span", type=float, default=10.0, help="seconds of recent sentiment to summarise")
    p.add_argument("--say", action="append", default=[], help="scripted user turns (instead of the keyboard)")
    p.add_argument("--pause", type=float, default=2.0, help="seconds between scripted turns")
    p.add_argument("--wait", type=float, default=0.0, help="wait up to S seconds for the first event")
    args = p.parse_args()

    try:
        client = SentimentClient(args.events, config=args.config)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with client:
        if args.wait:
            client.latest(wait=args.wait)
        if args.say:
            for text in args.say:
                time.sleep(args.pause)
                print(f"user:  {text}")
                print(f"agent: {turn(client, text, args.span)}", flush=True)
        else:
            print("talk to me (Ctrl-D to stop)")
            for line in sys.stdin:
                print(f"agent: {turn(client, line.strip(), args.span)}", flush=True)
        st = client.stats
        print(f"[{st.events} events seen, {st.malformed} malformed, {st.restarts} restarts]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
