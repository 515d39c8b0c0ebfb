"""The training config (``pam train CONFIG``): one YAML file, validated before any work.

Every key is documented in ``configs/train.yaml`` and ``docs/training.md``. Unknown keys and
bad values stop the run with one line per problem naming the key and what is allowed (the
same formatting as the detection config, ``pam.config``). Relative paths in the file are
read relative to the file's own folder, so a config can live next to its data.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pam.config import ConfigError, checked_device, format_errors, read_yaml_mapping
from pam.store.location import store_uri


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Source(_Strict):
    """A labelled-data source; ``site`` fills in clips that carry no site of their own."""

    path: str
    site: str | None = None


def _sources(v: object) -> object:
    if isinstance(v, (str, os.PathLike)):
        v = [v]
    if isinstance(v, list):
        return [{"path": str(x)} if isinstance(x, (str, os.PathLike)) else x for x in v]
    return v


def _range(v: tuple[float, float], name: str) -> tuple[float, float]:
    if v[0] > v[1]:
        raise ValueError(f"{name} range {list(v)} is reversed (low first)")
    return v


class DataSection(_Strict):
    tables: list[Source] = Field(default_factory=list, description="clip tables (CSV/Parquet)")
    raven: list[Source] = Field(default_factory=list, description="folders of recordings with Raven selection tables")
    raven_label_column: str | None = Field(None, description="column of the class name; default: Species, "
                                                             "Annotation, Label or Class, the first present")
    raven_negatives: int = Field(20, ge=0, description="negative windows cut from the unannotated parts of "
                                                       "each Raven-annotated recording")
    class_folders: list[Source] = Field(default_factory=list, description="ROOT/<class>/*.wav layouts")
    classes: list[str] | None = Field(None, description="the model's classes, in order; default: every class "
                                                        "in the labels, sorted")
    backgrounds: list[str] = Field(default_factory=list, description="folders/files of real background "
                                                                     "soundscapes for overlay")
    negatives_as_background: bool = Field(True, description="also overlay the training split's own negative clips")
    max_background_s: float = Field(7200.0, gt=0, description="at most this much background audio is read")

    _tables = field_validator("tables", "raven", "class_folders", mode="before")(lambda v: _sources(v))

    @field_validator("backgrounds", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _some_data(self) -> "DataSection":
        if not (self.tables or self.raven or self.class_folders):
            raise ValueError("no labelled data: set at least one of data.tables, data.raven, data.class_folders")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must be distinct")
        return self


class SplitSection(_Strict):
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of recordings (or sites) for validation")
    test_fraction: float = Field(0.0, ge=0, lt=1, description="share of recordings (or sites) held out for test")
    by: Literal["recording", "site"] = Field("recording", description="unit kept whole on one side")
    stratify_site: bool = Field(True, description="by recording: stratify by site as well as by class")
    test_sites: list[str] = Field(default_factory=list, description="sites used only for test (cross-site)")
    seed: int = 0

    @model_validator(mode="after")
    def _fractions(self) -> "SplitSection":
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be below 1")
        if self.test_sites and self.test_fraction > 0:
            raise ValueError("give either test_sites or test_fraction, not both")
        return self


class OverlaySection(_Strict):
    p: float = Field(0.8, ge=0, le=1, description="chance that an example gets a background overlay")
    snr_db: tuple[float, float] = Field((0.0, 20.0), description="SNR range in dB (clip RMS / background RMS)")

    _snr = field_validator("snr_db")(lambda v: _range(v, "snr_db"))


class MixSection(_Strict):
    p: float = Field(0.0, ge=0, le=1, description="chance that an example is mixed with another (labels united)")


class SpecAugmentSection(_Strict):
    time_masks: int = Field(2, ge=0, le=10)
    time_width: int = Field(20, ge=0, description="frames (16 ms each at the default spectrogram)")
    freq_masks: int = Field(2, ge=0, le=10)
    freq_width: int = Field(6, ge=0, description="mel bands")


class AugmentSection(_Strict):
    overlay: OverlaySection = Field(default_factory=OverlaySection)
    mix: MixSection = Field(default_factory=MixSection)
    shift_s: float = Field(0.0, ge=0, description="circular time shift of each crop, up to this many seconds")
    gain_db: tuple[float, float] = Field((-12.0, 12.0), description="random gain range in dB")
    specaugment: SpecAugmentSection = Field(default_factory=SpecAugmentSection)

    _gain = field_validator("gain_db")(lambda v: _range(v, "gain_db"))


class SpectrogramSection(_Strict):
    sample_rate: int = Field(16000, ge=1000, le=384000)
    n_fft: int = Field(512, ge=16)
    hop_length: int = Field(256, ge=1)
    n_mels: int = Field(64, ge=4, le=512)
    f_min: float = Field(50.0, ge=0)
    f_max: float = Field(8000.0, gt=0)
    normalize: Literal["band_mean", "global", "pcen"] = "band_mean"

    @model_validator(mode="after")
    def _band(self) -> "SpectrogramSection":
        if self.f_min >= self.f_max:
            raise ValueError(f"f_min {self.f_min} must be below f_max {self.f_max}")
        if self.f_max > self.sample_rate / 2:
            raise ValueError(f"f_max {self.f_max} is above the Nyquist frequency {self.sample_rate / 2}")
        return self


class ModelSection(_Strict):
    name: str = Field("pam-model", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    window_s: float = Field(3.0, gt=0, le=60)
    width: int = Field(16, ge=1, le=256)
    stages: int = Field(3, ge=1, le=6)
    blocks_per_stage: int = Field(1, ge=1, le=8)
    dropout: float = Field(0.2, ge=0, lt=1)
    spectrogram: SpectrogramSection = Field(default_factory=SpectrogramSection)
    start_from: str | None = Field(None, description="checkpoint to fine-tune ('bundled' for pam's own model)")


class TrainSection(_Strict):
    epochs: int = Field(30, ge=1, le=10000)
    batch_size: int = Field(32, ge=2, le=4096)
    repeats: int = Field(4, ge=1, le=1000, description="draws of each training clip per epoch")
    lr: float = Field(3e-3, gt=0, le=1)
    weight_decay: float = Field(1e-2, ge=0)
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    warmup: float = Field(0.15, gt=0, lt=1, description="onecycle: share of steps warming up")
    keep: Literal["best", "last"] = Field("best", description="best: early stopping on validation loss; "
                                                               "last: all epochs, final averaged weights")
    patience: int = Field(8, ge=1)
    min_epochs: int = Field(0, ge=0)
    ema_decay: float = Field(0.9, ge=0, lt=1, description="moving average of the weights (0: off)")
    balanced: bool = False
    hop_s: float = Field(0.5, gt=0, description="window step when scoring validation/test clips")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    threads: int = Field(0, ge=0, le=256, description="CPU threads for torch (0: torch's default)")
    seed: int = 0

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return checked_device(v)


class CalibrateSection(_Strict):
    method: Literal["precision", "f1"] = Field("precision", description="precision: best recall at "
                                                                        "target_precision; f1: best F1")
    target_precision: float = Field(0.9, gt=0, le=1)
    placement: Literal["midpoint", "score"] = "midpoint"


class OutputSection(_Strict):
    dir: str = Field("runs", description="run folders go here")
    name: str | None = Field(None, description="run folder prefix; default: the config file's name")
    store: str | None = Field(None, description="register the model in this store's registry")
    export: str | None = Field(None, description="also copy the final model to this path")


class SearchSection(_Strict):
    space: dict[str, list] = Field(default_factory=dict, description="dotted key -> values to try")
    mode: Literal["grid", "random"] = "grid"
    trials: int = Field(8, ge=1, le=1000, description="random: settings drawn from the grid")
    metric: Literal["val_ap", "val_loss"] = "val_ap"
    max_parallel: int = Field(1, ge=1, le=64, description="trials at once (one per GPU when there are several)")
    seed: int = 0

    @field_validator("space")
    @classmethod
    def _values(cls, v: dict[str, list]) -> dict[str, list]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"search.space.{key} has no values")
            if key.split(".")[0] in ("output", "search", "data"):
                raise ValueError(f"search.space.{key}: only model, train, augment, split and calibrate keys "
                                 "can be searched")
        return v


class TrainConfig(_Strict):
    data: DataSection
    split: SplitSection = Field(default_factory=SplitSection)
    augment: AugmentSection = Field(default_factory=AugmentSection)
    model: ModelSection = Field(default_factory=ModelSection)
    train: TrainSection = Field(default_factory=TrainSection)
    calibrate: CalibrateSection = Field(default_factory=CalibrateSection)
    output: OutputSection = Field(default_factory=OutputSection)
    search: SearchSection = Field(default_factory=SearchSection)

    def plain(self) -> dict:
        return self.model_dump(mode="json")

    def fingerprint(self) -> str:
        """Hash of what decides the trained model (not where outputs go, the device or threads)."""
        d = self.plain()
        d.pop("output")
        d.pop("search")
        d["train"].pop("device")
        d["train"].pop("threads")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]

    def run_dir(self, default_name: str = "train") -> Path:
        """``<output.dir>/<name>-<fingerprint>``: the same config always lands in the same folder."""
        return Path(self.output.dir) / f"{self.output.name or default_name}-{self.fingerprint()}"


PATH_KEYS = ("model.start_from", "output.dir", "output.store", "output.export")


def _resolve(value: str | None, base: Path) -> str | None:
    if value is None or value == "bundled" or store_uri(value):  # an object-store URI is no path
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def resolve_paths(conf: TrainConfig, base: Path) -> TrainConfig:
    """Relative paths become absolute, read from ``base`` (the config file's folder)."""
    d = conf.model_dump()
    for key in ("tables", "raven", "class_folders"):
        for s in d["data"][key]:
            s["path"] = _resolve(s["path"], base)
    d["data"]["backgrounds"] = [_resolve(p, base) for p in d["data"]["backgrounds"]]
    for dotted in PATH_KEYS:
        section, key = dotted.split(".")
        d[section][key] = _resolve(d[section][key], base)
    return TrainConfig.model_validate(d)


def parse_override(text: str) -> tuple[str, object]:
    """``'train.lr=0.001'`` -> ``('train.lr', 0.001)``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.epochs=20")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML") from None


def set_dotted(data: dict, dotted: str, value: object) -> None:
    node = data
    *parents, last = dotted.split(".")
    for p in parents:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {p} is not a section")
        node = child
    node[last] = value


def validate(data: dict, source: str, base: Path, overridden: list[str] | None = None) -> TrainConfig:
    try:
        conf = TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(source, exc, overridden or [], TrainConfig)) from None
    return resolve_paths(conf, base)


def load_train_config(path: str | os.PathLike, overrides: list[str] | dict | None = None) -> TrainConfig:
    """Read, override (``['train.lr=0.001', ...]`` or ``{'train.lr': 0.001}``) and validate."""
    path = Path(path)
    data = read_yaml_mapping(path)
    items = list(overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides or []))
    for key, value in items:
        set_dotted(data, key, value)
    conf = validate(data, str(path), path.resolve().parent, [key for key, _ in items])
    if conf.output.name is None:
        conf = conf.model_copy(update={"output": conf.output.model_copy(update={"name": path.stem})})
    return conf


def search_settings(conf: TrainConfig) -> list[dict[str, object]]:
    """The settings a search tries: the whole grid, or ``trials`` of it drawn at random (seeded)."""
    import numpy as np

    keys = sorted(conf.search.space)
    grid = [dict(zip(keys, combo)) for combo in itertools.product(*(conf.search.space[k] for k in keys))]
    if conf.search.mode == "random" and conf.search.trials < len(grid):
        pick = np.random.default_rng(conf.search.seed).choice(len(grid), conf.search.trials, replace=False)
        grid = [grid[int(i)] for i in sorted(pick)]
    return grid


def with_settings(conf: TrainConfig, settings: dict[str, object], source: str = "search") -> TrainConfig:
    """The config with dotted ``settings`` applied (validated: a bad key is named)."""
    data = conf.model_dump(mode="json")
    for key, value in settings.items():
        set_dotted(data, key, value)
    data["search"] = {}
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(source, exc, model=TrainConfig)) from None
