"""Configuration: YAML files validated up front by pydantic.

Every key is documented in ``README.md`` and in the example ``configs/detect.yaml``.
A broken config stops the run before any work with one line per problem that names the
key and what is allowed.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from datetime import timedelta, timezone, tzinfo
from pathlib import Path
from typing import Iterable, Literal, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

OFFSET = re.compile(r"^(?:UTC)?(?P<sign>[+-])(?P<h>\d{1,2})(?::?(?P<m>\d{2}))?$")


def checked_device(v: str) -> str:
    """A device setting as pam's configs take it (detection and training alike), else ValueError."""
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", v):
        raise ValueError(f"got {v!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N' (N: a GPU's index)")
    return v


class ConfigError(ValueError):
    """A config that cannot be used; the message has one line per problem."""


def _check_zone(v: str | None) -> str | None:
    if v is not None:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}; use an IANA name such as 'Europe/London'") from None
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SiteConfig(_Strict):
    """Where a site is and which clock it keeps."""

    timezone: str | None = Field(None, description="IANA name, e.g. America/Chicago")
    utc_offset: str | None = Field(None, description="fixed offset, e.g. -05:00 (instead of a timezone)")
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    species_list: str | None = Field(None, description="CSV of the species to keep at this site (labels or scientific "
                                                       "names); replaces detect.species_filter's list and location filter")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str | None) -> str | None:
        return _check_zone(v)

    @field_validator("utc_offset")
    @classmethod
    def _offset(cls, v: str | None) -> str | None:
        if v is not None and not OFFSET.match(v.strip()):
            raise ValueError(f"utc_offset {v!r} is not like '+02:00' or '-5'")
        return v

    @model_validator(mode="after")
    def _one_clock(self) -> "SiteConfig":
        if self.timezone and self.utc_offset:
            raise ValueError("give timezone or utc_offset, not both (a timezone follows daylight saving, "
                             "an offset does not)")
        return self

    def tz(self) -> tzinfo:
        if self.timezone:
            return ZoneInfo(self.timezone)
        if self.utc_offset:
            m = OFFSET.match(self.utc_offset.strip())
            assert m is not None
            delta = timedelta(hours=int(m["h"]), minutes=int(m["m"] or 0))
            return timezone(-delta if m["sign"] == "-" else delta)
        return timezone.utc


class ScanConfig(_Strict):
    site_from: Literal["parent", "prefix", "regex"] = Field(
        "parent", description="parent: folder above the file; prefix: Song Meter file prefix; regex: site_regex"
    )
    site_regex: str | None = Field(None, description="regex with a named group 'site', matched against the path inside the dump")
    min_age_s: float = Field(0.0, ge=0, description="skip files modified less than this many seconds ago (still being copied)")
    settle_s: float = Field(0.0, ge=0, le=600, description="stat new or changed files again after this many seconds; "
                                                           "a file whose size or time moved is still being copied")

    @model_validator(mode="after")
    def _regex(self) -> "ScanConfig":
        if self.site_from == "regex":
            if not self.site_regex:
                raise ValueError("site_from is 'regex' but site_regex is not set")
            try:
                pattern = re.compile(self.site_regex)
            except re.error as exc:
                raise ValueError(f"site_regex does not compile: {exc}") from None
            if "site" not in pattern.groupindex:
                raise ValueError("site_regex needs a named group (?P<site>...)")
        return self


class SpeciesFilterConfig(_Strict):
    """Which species a model with scientific names (BirdNET) may report (docs/models.md#species-lists)."""

    location: bool = Field(True, description="keep the species BirdNET's metadata model expects at each site "
                                             "(sites.<site>.lat/lon) in each recording's week")
    threshold: float = Field(0.03, gt=0, lt=1, description="the metadata model's score a species needs "
                                                           "(BirdNET-Analyzer's --sf_thresh)")
    week: int | None = Field(None, ge=-1, le=48, description="one BirdNET week (1-48, -1: the whole year) for "
                                                             "every recording; default: each recording's date")
    list: str | None = Field(None, description="CSV of the species to keep at every site (BirdNET-Analyzer's "
                                               "--slist); replaces the location filter")

    @field_validator("week")
    @classmethod
    def _week(cls, v: int | None) -> int | None:
        if v == 0:
            raise ValueError("week 0 is not a BirdNET week; use 1-48 (4 per month) or -1 for the whole year")
        return v


class DetectConfig(_Strict):
    window_s: float | None = Field(None, gt=0, description="window length; default: the model's (3.0 s for the bundled model)")
    hop_s: float = Field(1.5, gt=0, description="step between window starts")
    channel: Literal["mix"] | int = Field("mix", description="'mix' averages channels; an integer picks one (0-based)")
    batch_size: int = Field(256, ge=1, le=65536)
    num_workers: int | None = Field(None, ge=0, le=64, description="DataLoader workers; default: on CUDA cores - 1 (at most 8), on the CPU cores // 8 (at most 4)")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda or cuda:N")
    devices: list[str] = Field(default_factory=list, description="two or more devices (cpu or cuda:N): one worker "
                               "process per device, each scoring its own shard of the recordings")
    data_path: Literal["auto", "windows", "spans"] = Field("auto", description="how audio reaches the model: 'windows' (loader workers cut float windows), 'spans' (reader threads send raw samples; the device resamples and cuts); auto: spans on CUDA, windows on the CPU")
    min_score: float | None = Field(None, ge=0, le=1, description="one threshold for every class, overriding the model's")
    thresholds: dict[str, float] = Field(default_factory=dict, description="per-class threshold overrides")
    process_truncated: bool = Field(True, description="analyse the readable part of truncated files")
    flush_every: int = Field(200, ge=1, description="commit after this many finished recordings")
    embeddings: bool = Field(False, description="keep every analysed window's embedding (float16) in the store, committed with its detections (docs/agile.md)")
    lock_timeout_s: float = Field(600.0, ge=0, description="how long to wait for another run's commit")
    species_filter: SpeciesFilterConfig = Field(default_factory=SpeciesFilterConfig)

    @field_validator("thresholds")
    @classmethod
    def _unit(cls, v: dict[str, float]) -> dict[str, float]:
        for k, t in v.items():
            if not 0 <= t <= 1:
                raise ValueError(f"threshold for {k!r} is {t}; must be between 0 and 1")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return checked_device(v)

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: list[str]) -> list[str]:
        if not v:
            return v
        if len(v) == 1:
            raise ValueError(f"devices lists one device; set device: {v[0]} for one, or list two or more")
        for d in v:
            if not re.fullmatch(r"cpu|cuda:[0-9]+", d):
                raise ValueError(f"device {d!r} in devices: name each cpu, or each GPU by its index (cuda:0, cuda:1)")
        twice = sorted({d for d in v if d != "cpu" and v.count(d) > 1})
        if twice:
            raise ValueError(f"devices lists {twice[0]} twice; one worker per GPU")
        return v


def _valid_cron(expr: str) -> str:
    """Validate with the schedule class ``pam serve`` uses, so that serve never rejects it later."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"cron {expr!r} needs 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}")
    from prefect.schedules import Cron  # what pam serve schedules with (nightly_deployment)

    try:
        Cron(expr)
    except ValueError:
        example = "e.g. '0 2 * * *' for 02:00 every day"
        raise ValueError(f"cron {expr!r} is not a valid cron expression, {example}") from None
    return expr


class ScheduleConfig(_Strict):
    """When the nightly deployment runs and on what (``pam serve``, ``prefect.yaml``)."""

    cron: str = Field("0 2 * * *", description="when the nightly run starts (5-field cron)")
    timezone: str | None = Field(None, description="IANA zone the cron is read in; default: this machine's zone")
    dumps: list[str] = Field(default_factory=list, description="watched dump folders, scanned on every run")
    store: str | None = Field(None, description="the store the nightly run writes to")
    name: str = Field("nightly", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="deployment name")

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        return _valid_cron(v.strip())

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        return _check_zone(v)


class RunnerConfig(_Strict):
    """How a run's recordings are spread over shards and where the shards execute."""

    kind: Literal["threads", "dask"] = Field("threads", description="threads: one machine; dask: a Dask cluster")
    shards: int = Field(1, ge=1, le=4096, description="split the recordings to do into this many shards")
    max_workers: int | None = Field(None, ge=1, le=256, description="threads: shards at once; default: shards")
    dask_address: str | None = Field(None, description="dask: scheduler address, e.g. tcp://10.0.0.5:8786; "
                                                       "unset: a local cluster")
    dask_workers: int = Field(2, ge=1, le=256, description="dask local cluster: worker processes")
    dask_threads_per_worker: int = Field(1, ge=1, le=64, description="dask local cluster: threads per worker")
    wait_s: float = Field(0.0, ge=0, description="wait this long for another run on the same store, then stop")

    @model_validator(mode="after")
    def _dask_only(self) -> "RunnerConfig":
        if self.kind != "dask" and self.dask_address:
            raise ValueError(f"dask_address is set but kind is {self.kind!r}; set kind: dask to use a Dask cluster")
        return self


class RetriesConfig(_Strict):
    """Transient errors (I/O, a lost worker) are retried; then the recording is marked failed."""

    count: int = Field(2, ge=0, le=100, description="retries after the first attempt")
    delay_s: float = Field(10.0, ge=0, le=3600, description="seconds between attempts")


def nested_path(inner: str | os.PathLike, outer: str | os.PathLike) -> bool:
    """True when ``inner`` is ``outer`` or lies inside it (after resolving links)."""
    a = Path(inner).expanduser().resolve()
    b = Path(outer).expanduser().resolve()
    return a == b or b in a.parents


class SummariesConfig(_Strict):
    """Filters of the summary tables (``pam summarize``, the nightly run); CLI flags override them."""

    min_score: float | None = Field(None, ge=0, le=1, description="count only detections scoring at least this")
    model: str | None = Field(None, description="count only this model id's detections and effort")
    period_days: int = Field(1, ge=1, le=366, description="survey period of the occupancy detection histories")


class StoreConfig(_Strict):
    """Upkeep of the store's results table, done by the nightly run after its summaries."""

    compact: bool = Field(True, description="rewrite each detection partition (site, UTC month) and each "
                          "site's done files holding several files as one file each")
    retention_days: float = Field(7.0, ge=0, le=3650, description="keep files that newer versions removed this many "
                                  "days (time travel reaches back that far), then delete them")


class AgileConfig(_Strict):
    """What the nightly run does with the stored embeddings after detection (docs/agile.md#nightly)."""

    heads: Literal["all"] | list[str] = Field(default_factory=list, description="registered heads (pam heads STORE) "
                                              "to apply to the new embeddings after detection: their ids, or 'all' "
                                              "(every registered head of this run's models)")
    similarity_index: bool = Field(False, description="bring the similarity index of each of this run's embedding "
                                                      "models (STORE/index/) up to date after detection")

    @field_validator("heads")
    @classmethod
    def _once(cls, v):
        if isinstance(v, list) and len(set(v)) < len(v):
            raise ValueError(f"heads lists {sorted({h for h in v if v.count(h) > 1})[0]!r} twice")
        return v


class PamConfig(_Strict):
    model: str | None = Field(None, description="a checkpoint, an ONNX file with its card, or a model's short name "
                                                "(docs/models.md); default: the bundled model")
    models: list[str] = Field(default_factory=list, description="several models for one night (each as `model`); "
                                                                "recordings are decoded once per sample rate")
    scan: ScanConfig = Field(default_factory=ScanConfig)
    detect: DetectConfig = Field(default_factory=DetectConfig)
    sites: dict[str, SiteConfig] = Field(default_factory=dict)
    summaries: SummariesConfig = Field(default_factory=SummariesConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    retries: RetriesConfig = Field(default_factory=RetriesConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    agile: AgileConfig = Field(default_factory=AgileConfig)

    @model_validator(mode="after")
    def _one_model_key(self) -> "PamConfig":
        if self.model and self.models:
            raise ValueError("set either model (one) or models (a list), not both")
        twice = sorted({m for m in self.models if self.models.count(m) > 1})
        if twice:
            raise ValueError(f"models lists {twice[0]!r} twice")
        if (self.agile.heads or self.agile.similarity_index) and not self.detect.embeddings:
            raise ValueError("agile.heads and agile.similarity_index work on the stored embeddings: set "
                             "detect.embeddings: true")
        return self

    @model_validator(mode="after")
    def _one_shard_per_device(self) -> "PamConfig":
        devices = self.detect.devices
        if not devices:
            return self
        if self.runner.kind == "dask":
            raise ValueError("detect.devices starts one worker process per device on this machine; with runner.kind: "
                             "dask the Dask workers do that: set one or the other")
        if self.runner.shards not in (1, len(devices)):
            raise ValueError(f"runner.shards is {self.runner.shards} but detect.devices lists {len(devices)}: "
                             "with devices, each device takes one shard; leave runner.shards unset")
        self.runner.shards = len(devices)
        return self

    def model_specs(self) -> list[str | None]:
        """The models of a run, as given (None: the bundled model)."""
        return list(self.models) if self.models else [self.model]

    @model_validator(mode="after")
    def _store_outside_dumps(self) -> "PamConfig":
        store = self.schedule.store
        remote = bool(store and re.match(r"^[a-z][a-z0-9+.-]+://", store))  # an object-store URI is in no folder
        for dump in self.schedule.dumps if store and not remote else []:
            if nested_path(store, dump):
                raise ValueError(f"schedule.store {store!r} is inside the watched dump {dump!r}; "
                                 "pam never writes into input folders")
        return self

    def site_tz(self, site: str | None) -> tzinfo:
        conf = self.sites.get(site or "")
        return conf.tz() if conf else timezone.utc


_UNION_TAGS = {"int", "float", "str", "bool", "none", "list", "dict"}


def _is_union_tag(part: object) -> bool:
    """pydantic names the branch of a union in the error location (``literal['mix']``, ``int``)."""
    return isinstance(part, str) and ("[" in part or part in _UNION_TAGS)


def _section_keys(model: type | None, loc: tuple) -> list[str]:
    """The keys allowed in the section ``loc`` leads to (empty when it is not a section).

    The walk steps through mappings and lists of sections too: in ``sites.<site>.<key>`` the
    site's name leads into ``SiteConfig``, in ``data.tables.0.<key>`` the index into ``Source``.
    """
    node: object = model
    parts = list(loc)
    while parts:
        if get_origin(node) in (dict, list):
            node = get_args(node)[-1] if get_args(node) else None
            parts.pop(0)  # the mapping's key or the list's index
            continue
        field = getattr(node, "model_fields", {}).get(parts.pop(0))
        node = field.annotation if field else None
        if node is None:
            return []
    return list(getattr(node, "model_fields", {}))


def _unknown_key_hint(model: type | None, loc: tuple) -> str:
    """`` (did you mean sites.A.timezone?)``, or the keys the section takes when none is close."""
    if not loc:
        return ""
    keys = _section_keys(model, loc[:-1])
    near = difflib.get_close_matches(str(loc[-1]), keys, n=1, cutoff=0.6)
    if near:
        return f" (did you mean {'.'.join(map(str, loc[:-1] + (near[0],)))}?)"
    return f" (allowed here: {', '.join(keys)})" if keys else ""


def format_errors(source: str, exc: ValidationError, overridden: Iterable[str] = (),
                   model: type | None = None) -> str:
    """One line per problem, naming where the bad value came from: the file, or the command line
    for keys given there (``overridden``: dotted keys). Union branches fold into one line."""
    overridden = set(overridden)
    merged: dict[str, tuple[str, list[str]]] = {}
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not _is_union_tag(p))
        key = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + _unknown_key_hint(model, loc)
        elif err["type"] == "literal_error":
            msg = f"got {err.get('input')!r}; {msg.lower()}"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        elif len(loc) < len(err["loc"]):  # another branch of a union: say what it accepts
            msg = msg[:1].lower() + msg[1:]
        where = "command line" if any(key == k or key.startswith(k + ".") for k in overridden) else source
        prefix = f"{where}: {key}" if err["loc"] else where
        if prefix in merged:
            merged[prefix][1].append(msg)
        else:
            merged[prefix] = (prefix, [msg])
    return "\n".join(f"{prefix}: {' or '.join(msgs)}" for prefix, msgs in merged.values())


def read_yaml_mapping(path: str | os.PathLike) -> dict:
    """A config file's top-level mapping; unreadable files and bad YAML become one-line ConfigErrors."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None,
                defaults: dict | None = None) -> PamConfig:
    """Read and validate a YAML config; ``None`` gives the defaults, or ``defaults`` (a mapping of
    config sections, e.g. the store's remembered sites) when given."""
    data: dict = json.loads(json.dumps(defaults)) if defaults and path is None else {}
    source = "defaults"
    if path is not None:
        source = str(path)
        data = read_yaml_mapping(path)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    try:
        return PamConfig.model_validate(data)
    except ValidationError as exc:
        given = [k for k, v in (overrides or {}).items() if v is not None]
        raise ConfigError(format_errors(source, exc, given, PamConfig)) from None


def settings_hash(settings: dict) -> str:
    """Stable short hash of the settings that change what detection produces."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
