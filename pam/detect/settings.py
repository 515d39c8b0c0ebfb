"""The detection settings of a (recording, model) pair: what decides its detections, hashed
into the work key (recording fingerprint, model id, settings hash)."""

from __future__ import annotations

from dataclasses import dataclass

import pam.store.schemas as schemas
from pam.config import ConfigError, DetectConfig, settings_hash
from pam.detect.checkpoint import LoadedModel


@dataclass(frozen=True)
class DetectSettings:
    """What decides the detections of a (recording, model) pair; hashed into the work key."""

    window_s: float
    hop_s: float
    channel: int | None
    thresholds: dict[str, float]

    @classmethod
    def from_config(cls, conf: DetectConfig, model: LoadedModel) -> "DetectSettings":
        card = model.card
        window_s = conf.window_s if conf.window_s is not None else card.window_s
        if abs(window_s - card.window_s) > 1e-9:
            raise ConfigError(
                f"detect.window_s is {window_s} s but model {card.name} ({model.model_id}) "
                f"was trained on {card.window_s} s windows; leave window_s unset to use the model's"
            )
        unknown = set(conf.thresholds) - set(card.classes)
        if unknown:
            raise ConfigError(f"detect.thresholds: {sorted(unknown)} not among the model's classes {card.classes}")
        vec = card.threshold_vector(conf.thresholds, conf.min_score)
        return cls(
            window_s=window_s,
            hop_s=conf.hop_s,
            channel=None if conf.channel == "mix" else int(conf.channel),
            thresholds={c: float(t) for c, t in zip(card.classes, vec.tolist())},
        )

    def key(self) -> str:
        return settings_hash({
            "window_s": self.window_s, "hop_s": self.hop_s, "channel": self.channel,
            "thresholds": self.thresholds, "schema": schemas.DETECTIONS_VERSION,
        })
