"""Configuration: YAML files validated up front by pydantic.

Every key is documented in ``README.md`` and in the example ``configs/detect.yaml``.
A broken config stops the run before any work with one line per problem that names the
key and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import timedelta, timezone, tzinfo
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

OFFSET = re.compile(r"^(?:UTC)?(?P<sign>[+-])(?P<h>\d{1,2})(?::?(?P<m>\d{2}))?$")


class ConfigError(ValueError):
    """A config that cannot be used; the message has one line per problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SiteConfig(_Strict):
    """Where a site is and which clock it keeps."""

    timezone: str | None = Field(None, description="IANA name, e.g. America/Chicago")
    utc_offset: str | None = Field(None, description="fixed offset, e.g. -05:00 (used when no timezone)")
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {v!r}; use an IANA name such as 'Europe/London'") from None
        return v

    @field_validator("utc_offset")
    @classmethod
    def _offset(cls, v: str | None) -> str | None:
        if v is not None and not OFFSET.match(v.strip()):
            raise ValueError(f"utc_offset {v!r} is not like '+02:00' or '-5'")
        return v

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


class DetectConfig(_Strict):
    window_s: float | None = Field(None, gt=0, description="window length; default: the model's (3.0 s for the bundled model)")
    hop_s: float = Field(1.5, gt=0, description="step between window starts")
    channel: Literal["mix"] | int = Field("mix", description="'mix' averages channels; an integer picks one (0-based)")
    batch_size: int = Field(256, ge=1, le=65536)
    num_workers: int | None = Field(None, ge=0, le=64, description="DataLoader workers; default: CPU cores - 1, at most 8")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    min_score: float | None = Field(None, ge=0, le=1, description="one threshold for every class, overriding the model's")
    thresholds: dict[str, float] = Field(default_factory=dict, description="per-class threshold overrides")
    process_truncated: bool = Field(True, description="analyse the readable part of truncated files")
    flush_every: int = Field(200, ge=1, description="commit after this many finished recordings")
    lock_timeout_s: float = Field(600.0, ge=0, description="how long to wait for another run's commit")

    @field_validator("thresholds")
    @classmethod
    def _unit(cls, v: dict[str, float]) -> dict[str, float]:
        for k, t in v.items():
            if not 0 <= t <= 1:
                raise ValueError(f"threshold for {k!r} is {t}; must be between 0 and 1")
        return v


class SummariesConfig(_Strict):
    """Filters of the summary tables (``pam summarize``, the nightly run); CLI flags override them."""

    min_score: float | None = Field(None, ge=0, le=1, description="count only detections scoring at least this")
    model: str | None = Field(None, description="count only this model id's detections and effort")
    period_days: int = Field(1, ge=1, le=366, description="survey period of the occupancy detection histories")


class PamConfig(_Strict):
    model: str | None = Field(None, description="checkpoint path; default: the bundled model")
    scan: ScanConfig = Field(default_factory=ScanConfig)
    detect: DetectConfig = Field(default_factory=DetectConfig)
    sites: dict[str, SiteConfig] = Field(default_factory=dict)
    summaries: SummariesConfig = Field(default_factory=SummariesConfig)

    def site_tz(self, site: str | None) -> tzinfo:
        conf = self.sites.get(site or "")
        return conf.tz() if conf else timezone.utc


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "literal_error":
            msg = f"got {err.get('input')!r}; {msg.lower()}"
        lines.append(f"{source}: {key}: {msg}")
    return "\n".join(lines)


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> PamConfig:
    """Read and validate a YAML config; ``None`` gives the defaults."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read config: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise ConfigError(f"{source}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: top level must be a mapping of keys, got {type(data).__name__}")
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
        raise ConfigError(_format_errors(source, exc)) from None


def settings_hash(settings: dict) -> str:
    """Stable short hash of the settings that change what detection produces."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
