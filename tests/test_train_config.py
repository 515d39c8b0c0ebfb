"""The training config: example file valid, errors one line per problem, overrides, search settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from pam.config import ConfigError
from pam.train.config import TrainConfig, load_train_config, search_settings, with_settings

ROOT = Path(__file__).parents[1]


def test_example_config_is_valid_and_resolves_paths_from_its_folder() -> None:
    conf = load_train_config(ROOT / "configs" / "train.yaml")
    assert conf.data.tables[0].path == str((ROOT.parent / "shared" / "data" / "bobwhite" / "labels.csv").resolve())
    assert conf.output.dir == str((ROOT / "runs").resolve())
    assert conf.output.name == "train"
    assert conf.run_dir().parent == ROOT / "runs"
    # Every documented key of the example is a key of the schema (extra keys are refused anyway).
    assert set(TrainConfig.model_fields) == {"data", "split", "augment", "model", "train", "calibrate", "output",
                                             "search"}


def test_errors_name_key_and_allowed_values(tmp_path: Path) -> None:
    p = tmp_path / "t.yaml"
    p.write_text("data: {tables: [x.csv]}\n"
                 "train: {device: gpu, epochs: 0, bogus: 1}\n"
                 "augment: {overlay: {snr_db: [10, 0]}}\n"
                 "model: {spectrogram: {normalize: loud, f_max: 9000}}\n"
                 "calibrate: {method: recall}\n")
    with pytest.raises(ConfigError) as err:
        load_train_config(p)
    lines = str(err.value).splitlines()
    assert len(lines) == 6 and all(line.startswith(f"{p}: ") for line in lines)
    assert any("train.device: got 'gpu'; expected 'auto', 'cpu', 'cuda' or 'cuda:N' (N: a GPU's index)" in line for line in lines)
    assert any("train.epochs" in line and "greater than or equal to 1" in line for line in lines)
    assert any("train.bogus: unknown key" in line for line in lines)
    assert any("augment.overlay.snr_db" in line and "reversed" in line for line in lines)
    assert any("model.spectrogram.normalize: got 'loud'" in line and "'pcen'" in line for line in lines)
    assert any("calibrate.method: got 'recall'" in line and "'precision'" in line for line in lines)


@pytest.mark.parametrize("text, message", [
    ("split: {val_fraction: 0.2}\n", "data: Field required"),
    ("data: {}\n", "no labelled data"),
    ("data: {tables: [a.csv]}\nsplit: {val_fraction: 0.6, test_fraction: 0.5}\n", "must be below 1"),
    ("data: {tables: [a.csv]}\nsplit: {test_sites: [A], test_fraction: 0.2}\n", "either test_sites or test_fraction"),
    ("data: {tables: [a.csv]}\nmodel: {spectrogram: {sample_rate: 8000}}\n", "above the Nyquist"),
    ("data: {tables: [a.csv]}\nsearch: {space: {output.dir: [a]}}\n", "can be searched"),
    ("data: [a.csv\n", "not valid YAML"),
])
def test_broken_configs(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "t.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_train_config(p)


def test_overrides_and_run_folder_follow_the_settings(tmp_path: Path) -> None:
    p = tmp_path / "t.yaml"
    p.write_text("data: {tables: [labels.csv]}\n")
    base = load_train_config(p)
    other = load_train_config(p, ["train.lr=0.01", "split.test_sites=[S2]"])
    assert other.train.lr == 0.01 and other.split.test_sites == ["S2"]
    assert other.run_dir() != base.run_dir() and other.run_dir().parent == tmp_path / "runs"
    # Where the run goes and which device it uses do not change the model: same folder.
    assert load_train_config(p, ["train.device=cpu", "train.threads=1"]).run_dir() == base.run_dir()
    with pytest.raises(ConfigError, match="train.lrr: unknown key"):
        load_train_config(p, ["train.lrr=0.01"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_train_config(p, ["train.lr"])


def test_search_settings_grid_and_random(tmp_path: Path) -> None:
    p = tmp_path / "t.yaml"
    p.write_text("data: {tables: [labels.csv]}\n"
                 "search: {space: {train.lr: [0.001, 0.003, 0.01], model.width: [8, 16]}}\n")
    conf = load_train_config(p)
    grid = search_settings(conf)
    assert len(grid) == 6 and {"train.lr": 0.003, "model.width": 16} in grid
    picked = search_settings(conf.model_copy(update={"search": conf.search.model_copy(update={"mode": "random",
                                                                                             "trials": 3})}))
    assert len(picked) == 3 and all(s in grid for s in picked)
    assert with_settings(conf, grid[0]).train.lr == grid[0]["train.lr"]
    with pytest.raises(ConfigError, match="model.width"):
        with_settings(conf, {"model.width": 0})


def _leaves(d: dict, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in d.items():
        key = f"{prefix}{k}"
        out |= _leaves(v, key + ".") if isinstance(v, dict) and k != "space" else {key}
    return out


def test_example_config_and_docs_list_every_key() -> None:
    import yaml

    schema = _leaves(TrainConfig.model_validate({"data": {"tables": ["x.csv"]}}).model_dump())
    example = _leaves(yaml.safe_load((ROOT / "configs" / "train.yaml").read_text()))
    assert example == schema
    doc = (ROOT / "docs" / "training.md").read_text()
    for key in schema:
        parent, leaf = key.rsplit(".", 1)
        assert f"`{key}`" in doc or (f"`{parent}." in doc and f" `{leaf}`" in doc), key
