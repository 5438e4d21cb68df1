"""The wire protocol: the versioned JSON Schema, every event of a demo run validated against it,
and a subscriber that knows nothing but pyzmq and json."""

from __future__ import annotations

import ast
import copy
import json
import subprocess
import sys
import tomllib
from importlib import resources

import pytest
from conftest import REPO, read_jsonl, sentistream_cmd

from sentistream.engine.protocol import EVENT_SCHEMA, load_event_schema, validate_event
from sentistream.engine.supervisor import free_tcp_port

jsonschema = pytest.importorskip("jsonschema", reason="pip install -e '.[test]' (jsonschema is in the test extra)")

SCHEMA_FILE = REPO / "engine" / "schema" / "event-1.json"
RAW_SUBSCRIBER = REPO / "examples" / "raw_subscriber.py"
# Runs the example in a fresh interpreter and reports whether anything imported sentistream.
RUNNER = (
    "import runpy, sys\n"
    "sys.argv = sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
    "except SystemExit:\n"
    "    pass\n"
    "sys.stderr.write('SENTISTREAM_MODULES=%d\\n' % sum(m.split('.')[0] == 'sentistream' for m in sys.modules))\n"
)


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One full demo run publishing on a fixed port, with a raw subscriber listening from the start."""
    out = tmp_path_factory.mktemp("protocol") / "events.jsonl"
    port = free_tcp_port()
    address = f"tcp://127.0.0.1:{port}"
    sub = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(RAW_SUBSCRIBER), address, "--until-eos", "--timeout", "240"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
    )  # fmt: skip
    run = subprocess.run(
        sentistream_cmd("run", "--source", "demo", "--events", address, "--jsonl", str(out), "--view", "none"),
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    try:
        sub_out, sub_err = sub.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        sub.kill()
        sub_out, sub_err = sub.communicate()
    return {
        "run": run,
        "events": read_jsonl(out) if out.exists() else [],
        "raw": [json.loads(line) for line in sub_out.splitlines() if line.strip()],
        "raw_stderr": sub_err,
        "raw_code": sub.returncode,
    }


# ---- the schema itself -------------------------------------------------------------------------------


def test_schema_is_valid_versioned_and_packaged(validator):
    schema = load_event_schema()
    assert schema == json.loads(SCHEMA_FILE.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == EVENT_SCHEMA == "sentistream.event/1"
    assert schema["$id"].endswith(":1") and schema["properties"]["schema"]["const"] == EVENT_SCHEMA
    # consumers must ignore unknown fields: the schema allows them (the producer test below is strict)
    assert schema["additionalProperties"] is True
    assert set(schema["required"]) == set(schema["properties"]) - {"final", "ended", "readouts", "attributions"}
    packaged = resources.files("sentistream.engine").joinpath("schema", "event-1.json")
    assert json.loads(packaged.read_text()) == schema
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "schema/*.json" in pyproject["tool"]["setuptools"]["package-data"]["sentistream.engine"]
    assert any(dep.startswith("jsonschema") for dep in pyproject["project"]["optional-dependencies"]["test"])


def test_builtin_validator_agrees_with_jsonschema_on_broken_events(validator):
    good = {
        "schema": "sentistream.event/1", "seq": 0, "window": {"t0": 0.0, "t1": 0.25}, "score": 0.1,
        "label": "neutral", "confidence": 0.0, "contributions": {"text": 0.0, "audio": 0.5, "vision": 0.5},
        "modalities": {"text": False, "audio": True, "vision": True}, "transcript": "", "partial": "",
        "words": [], "new_words": [{"text": "hi", "start_s": 0.1, "end_s": 0.2}], "context": "",
        "model": {"name": "almt", "placeholder": True, "checkpoint": ""},
        "latency_ms": {"face": {"face": 1.0, "to_fusion": 0.1, "capture_to_emit": 2.0},
                       "text_encoder": 0.0, "model": 1.0, "fusion": 1.0, "capture_to_emit": 2.0},
        "t_emit_ns": 123,
    }  # fmt: skip
    assert validate_event(good, strict=True) == [] and validator.is_valid(good)
    mutations = [
        lambda e: e.pop("score"),
        lambda e: e.update(score=3.5),
        lambda e: e.update(score="1"),
        lambda e: e.update(seq=-1),
        lambda e: e.update(seq=True),
        lambda e: e.update(label="happy"),
        lambda e: e.update(confidence=1.5),
        lambda e: e.update(schema="sentistream.event/2"),
        lambda e: e["window"].pop("t1"),
        lambda e: e["contributions"].update(text=-0.1),
        lambda e: e["contributions"].pop("vision"),
        lambda e: e["modalities"].update(audio=1),
        lambda e: e.update(words=[{"text": "x"}]),
        lambda e: e["new_words"][0].update(start_s="0"),
        lambda e: e["model"].update(name=""),
        lambda e: e["model"].pop("placeholder"),
        lambda e: e["latency_ms"].update(face={"face": 1.0}),
        lambda e: e["latency_ms"].update(model=-1),
        lambda e: e["latency_ms"].update(extra="slow"),
        lambda e: e.update(final="yes"),
        lambda e: e.update(t_emit_ns=1.5),
        lambda e: e.update(transcript=None),
    ]
    for i, mutate in enumerate(mutations):
        bad = copy.deepcopy(good)
        mutate(bad)
        assert not validator.is_valid(bad), f"mutation {i}: jsonschema accepted it"
        assert validate_event(bad), f"mutation {i}: the built-in validator accepted it"
    # additions are fine for consumers, and flagged by the strict (producer) check
    grown = {**copy.deepcopy(good), "speaker": "A"}
    assert validator.is_valid(grown) and validate_event(grown) == []
    assert validate_event(grown, strict=True) == ["speaker: field not declared in the schema"]


# ---- a real demo run --------------------------------------------------------------------------------


def test_demo_run_completes(demo):
    run = demo["run"]
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(demo["events"]) >= 70  # a 20 s clip at a 0.25 s hop


def test_every_event_of_a_demo_run_validates(demo, validator):
    events = demo["events"]
    assert events
    for e in events:
        errors = sorted(validator.iter_errors(e), key=lambda err: list(err.path))
        assert not errors, (e.get("seq"), [f"{list(err.path)}: {err.message}" for err in errors[:5]])
        # the producer contract: every field the engine emits is declared in the schema
        assert validate_event(e, strict=True) == [], (e.get("seq"), validate_event(e, strict=True)[:5])
    # the run exercised the interesting parts of the schema
    assert any(e["new_words"] for e in events) and any(e["context"] for e in events)
    assert {"face", "audio_feat", "words"} <= set().union(*(e["latency_ms"] for e in events))
    assert events[-1].get("final") is True or all("final" not in e for e in events)
    assert all(e.get("final", True) is True for e in events)


def test_pyzmq_json_subscriber_decodes_every_event(demo):
    assert demo["raw_code"] == 0, demo["raw_stderr"][-2000:]
    assert "SENTISTREAM_MODULES=0" in demo["raw_stderr"], demo["raw_stderr"][-2000:]
    raw, events = demo["raw"], demo["events"]
    assert len(raw) >= 70
    # it saw exactly what the engine wrote to --jsonl (it subscribed before the engine started)
    assert [e["seq"] for e in raw] == [e["seq"] for e in events]
    assert raw == events


def test_raw_subscriber_uses_only_pyzmq_and_json():
    tree = ast.parse(RAW_SUBSCRIBER.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "argparse", "json", "sys", "zmq"}, imported


def test_protocol_page_documents_subscribing():
    doc = (REPO / "docs" / "protocol.md").read_text()
    for needle in ("SUB", "`events`", "frame", "event-1.json", "sentistream.event/2", "ignore fields",
                   "recv_multipart", "zeromq", "kind"):  # fmt: skip
        assert needle in doc, needle
