from datetime import timedelta

import pytest

from pam.config import ConfigError, load_config, settings_hash


def test_example_config_is_the_defaults():
    from pathlib import Path

    conf = load_config(Path(__file__).parents[1] / "configs" / "detect.yaml")
    assert conf == load_config(None)


def test_errors_name_key_and_allowed_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("detect:\n  hop_s: 0\n  device: gpu\n  bogus: 1\nscan:\n  site_from: folder\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    lines = str(e.value).splitlines()
    assert len(lines) == 4
    assert any("detect.hop_s" in l and "greater than 0" in l for l in lines)
    assert any("detect.device" in l and "'gpu'" in l and "'cuda'" in l for l in lines)
    assert any("detect.bogus: unknown key" in l for l in lines)
    assert any("scan.site_from" in l and "'prefix'" in l for l in lines)
    assert all(l.startswith(str(p)) for l in lines)


def test_errors_say_the_command_line_fold_unions_and_suggest_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("detect:\n  hop: 1.0\n  channel: left\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, {"detect.device": "gpu", "detect.batch_size": None})
    lines = str(e.value).splitlines()
    assert len(lines) == 3  # the union (a channel name or an index) is one line, not two
    assert f"{p}: detect.hop: unknown key (did you mean detect.hop_s?)" in lines
    assert any(l.startswith(f"{p}: detect.channel: got 'left'") and "'mix'" in l and "integer" in l for l in lines)
    assert any(l.startswith("command line: detect.device: got 'gpu'") for l in lines)


def test_train_overrides_are_blamed_on_the_command_line():
    from pathlib import Path

    from pam.train.config import load_train_config

    with pytest.raises(ConfigError) as e:
        load_train_config(Path(__file__).parents[1] / "configs" / "train.yaml", ["train.epoch=2"])
    assert str(e.value) == "command line: train.epoch: unknown key (did you mean train.epochs?)"


@pytest.mark.parametrize("text, message", [
    ("detect: [1, 2\n", r"not valid YAML \(line"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("sites:\n  A: {timezone: Mars/Olympus}\n", "unknown time zone"),
    ("sites:\n  A: {utc_offset: 'five'}\n", "utc_offset"),
    ("sites:\n  A: {timezone: Europe/Berlin, utc_offset: '+01:00'}\n", "timezone or utc_offset, not both"),
    ("scan: {site_from: regex}\n", "site_regex is not set"),
    ("scan: {site_from: regex, site_regex: '(unclosed'}\n", "does not compile"),
    ("scan: {site_from: regex, site_regex: '[^/]+'}\n", "named group"),
    ("detect: {thresholds: {a: 2}}\n", "between 0 and 1"),
])
def test_broken_configs(tmp_path, text, message):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(p)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_site_clocks(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("sites:\n  A: {utc_offset: '-05:30'}\n  B: {timezone: Europe/London}\n")
    conf = load_config(p)
    assert conf.site_tz("A").utcoffset(None) == timedelta(hours=-5, minutes=-30)
    assert str(conf.site_tz("B")) == "Europe/London"
    assert conf.site_tz("unlisted").utcoffset(None) == timedelta(0)


def test_overrides_and_settings_hash():
    conf = load_config(None, {"detect.batch_size": 8, "detect.device": None})
    assert conf.detect.batch_size == 8 and conf.detect.device == "auto"
    assert settings_hash({"a": 1, "b": 2}) == settings_hash({"b": 2, "a": 1})
    assert settings_hash({"a": 1}) != settings_hash({"a": 2})


def test_unknown_site_keys_get_a_suggestion_or_the_allowed_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("sites:\n  A:\n    timezon: Europe/London\n  B:\n    utc_offset: '+02:00'\n    latitude: 51.5\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).splitlines() == [
        f"{p}: sites.A.timezon: unknown key (did you mean sites.A.timezone?)",
        f"{p}: sites.B.latitude: unknown key (allowed here: timezone, utc_offset, lat, lon, species_list)",
    ]


def test_unknown_keys_in_a_list_of_sections_get_a_suggestion(tmp_path):
    from pam.train.config import load_train_config

    p = tmp_path / "train.yaml"
    p.write_text("data:\n  tables:\n    - pth: labels.csv\n")
    with pytest.raises(ConfigError) as e:
        load_train_config(p)
    assert f"{p}: data.tables.0.pth: unknown key (did you mean data.tables.0.path?)" in str(e.value).splitlines()
