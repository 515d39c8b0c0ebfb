"""The detection settings of a (recording, model) pair: what decides its detections, hashed
into the work key (recording fingerprint, model id, settings hash)."""

from __future__ import annotations

from dataclasses import dataclass

import pam.store.schemas as schemas
from pam.config import ConfigError, DetectConfig, SiteConfig, settings_hash
from pam.detect.contract import DetectionModel
from pam.detect.species_filter import filter_spec


@dataclass(frozen=True)
class DetectSettings:
    """What decides the detections of a (recording, model) pair; hashed into the work key."""

    window_s: float
    hop_s: float
    channel: int | None
    thresholds: dict[str, float]
    species_filter: dict | None = None  # pam.detect.species_filter.filter_spec; None: not filtered
    embeddings: bool = False  # keep each window's embedding (detect.embeddings, for a model that gives them)

    @classmethod
    def from_config(cls, conf: DetectConfig, model: DetectionModel, *,
                    other_classes: set[str] | frozenset[str] = frozenset(),
                    sites: dict[str, SiteConfig] | None = None) -> "DetectSettings":
        """``other_classes``: the classes of the run's other models, which ``detect.thresholds`` may name too;
        ``sites``: the config's sites, whose positions and species lists the species filter reads."""
        window_s = conf.window_s if conf.window_s is not None else model.window_s
        if abs(window_s - model.window_s) > 1e-9:
            raise ConfigError(
                f"detect.window_s is {window_s} s but model {model.describe()} "
                f"was trained on {model.window_s} s windows; leave window_s unset to use the model's"
            )
        unknown = set(conf.thresholds) - set(model.classes) - set(other_classes)
        if unknown:
            shown = sorted(unknown)[:5]
            classes = model.classes if len(model.classes) <= 10 else model.classes[:10] + ["..."]
            raise ConfigError(f"detect.thresholds: {shown} not among the model's classes {classes}")
        vec = model.threshold_vector(conf.thresholds, conf.min_score)
        if conf.embeddings and not model.embedding_size:
            raise ConfigError(f"detect.embeddings is on but model {model.describe()} gives no embeddings; "
                              "use a model that does (birdnet-v2.4, pam's own checkpoints) or set detect.embeddings: false")
        return cls(
            window_s=window_s,
            hop_s=conf.hop_s,
            channel=None if conf.channel == "mix" else int(conf.channel),
            thresholds=dict(zip(model.classes, vec.tolist())),
            species_filter=filter_spec(conf, sites, model),
            embeddings=bool(conf.embeddings),
        )

    def key(self) -> str:
        """The settings hash. A species filter adds what decides it (its lists by content, not by
        path); without one the hash is what it was before filters existed."""
        settings = {
            "window_s": self.window_s, "hop_s": self.hop_s, "channel": self.channel,
            "thresholds": self.thresholds, "schema": schemas.DETECTIONS_VERSION,
        }
        if self.species_filter:
            settings["species_filter"] = _without_paths(self.species_filter)
        if self.embeddings:  # a recording analysed without them is work again once they are asked for
            settings["embeddings"] = schemas.EMBEDDINGS_VERSION
        return settings_hash(settings)


def _without_paths(spec: dict) -> dict:
    """The filter with its lists known by their SHA-256 only: a list moved elsewhere is no new work."""
    out = dict(spec)
    if "list" in out:
        out["list"] = out["list"]["sha256"]
    if "site_lists" in out:
        out["site_lists"] = {site: e["sha256"] for site, e in out["site_lists"].items()}
    return out


def settings_of(conf: DetectConfig, models: list[DetectionModel],
                sites: dict[str, SiteConfig] | None = None) -> list[DetectSettings]:
    """Each model's settings; a ``detect.thresholds`` label must belong to at least one of them."""
    out = []
    for k, model in enumerate(models):
        others = {c for j, m in enumerate(models) if j != k for c in m.classes}
        out.append(DetectSettings.from_config(conf, model, other_classes=others, sites=sites))
    return out
