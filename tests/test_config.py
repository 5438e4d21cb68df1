"""Configuration: defaults load, unknown keys are refused by name, the CLI reports them."""

from __future__ import annotations

import subprocess

import pytest
from conftest import sentistream_cmd

from sentistream.engine.config import ConfigError, config_from_dict, load_config


def test_default_config_loads():
    cfg = load_config()
    assert cfg.window.length_s == 3.0 and cfg.window.hop_s == 0.25
    assert cfg.transport.bind_host == "127.0.0.1"
    assert cfg.asr.language == "en"


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"window": {"lenght_s": 2.0}}, "window.lenght_s"),
        ({"windw": {"length_s": 2.0}}, "windw"),
        ({"asr": {"beam": 3}}, "asr.beam"),
        ({"face": {"max_faces": 3}}, "face.max_faces"),
        ({"window": {"hop_s": "fast"}}, "window.hop_s"),
        ({"source": {"loop": 1}}, "source.loop"),
    ],
)
def test_bad_keys_and_types_are_named(data, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        config_from_dict(data)


def test_bad_values_refused():
    with pytest.raises(ConfigError):
        config_from_dict({"window": {"hop_s": 5.0, "length_s": 3.0}})
    with pytest.raises(ConfigError):
        config_from_dict({"transport": {"transport": "udp"}})
    with pytest.raises(ConfigError, match="window.trigger"):
        config_from_dict({"window": {"trigger": "every_frame"}})
    with pytest.raises(ConfigError, match="source.fast_lead_s"):
        config_from_dict({"source": {"fast_lead_s": 0.0}})


def test_bundled_profile_loads_by_name_and_layers_over_the_defaults():
    cfg = load_config("low_latency")
    assert cfg.window.trigger == "frame" and cfg.window.hop_s == 0.05
    assert cfg.window.length_s == 3.0  # not in the profile: the default's value
    with pytest.raises(ConfigError, match="not found"):
        load_config("no_such_profile")


def test_cli_refuses_unknown_key_with_its_name(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[window]\nlength_s = 3.0\nhop_ms = 250\n")
    proc = subprocess.run(sentistream_cmd("run", "--config", str(bad)), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "window.hop_ms" in proc.stderr
