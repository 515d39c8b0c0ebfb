"""A detect run's models as its ``runs`` row records them.

``model_id`` and ``settings_hash`` hold one id and one hash for a one-model run, and the
ids and hashes of several models joined with ';' (in the same order) for a run of several;
``config_json`` keeps each model's settings (docs/store.md).
"""

from __future__ import annotations

import json


def run_model_keys(model_id: object, settings_hash: object) -> list[tuple[str, str]]:
    """(model id, settings hash) of each model of a run row; [] when the row has none."""
    if not isinstance(model_id, str) or not isinstance(settings_hash, str) or not model_id:
        return []
    return list(zip(model_id.split(";"), settings_hash.split(";")))


def run_model_settings(model_id: object, config_json: object) -> dict[str, dict]:
    """model id -> the detection settings (window_s, hop_s, channel, thresholds) it ran with."""
    if not isinstance(model_id, str) or not isinstance(config_json, str):
        return {}
    try:
        config = json.loads(config_json)
    except ValueError:
        return {}
    if not isinstance(config, dict):
        return {}
    out = {m["model_id"]: m["settings"] for m in config.get("models") or []
           if isinstance(m, dict) and isinstance(m.get("settings"), dict) and "model_id" in m}
    if not out and isinstance(config.get("settings"), dict):  # a one-model run
        out = {model_id.split(";")[0]: config["settings"]}
    return out


def window_lengths(store, model_id: str) -> dict[str, float]:
    """Settings hash -> window length in seconds of ``model_id``'s windows, from the runs that
    computed them (``store``: a ``pam.store.Store``)."""
    out: dict[str, float] = {}
    for r in store.read_runs().itertuples(index=False):
        settings = run_model_settings(r.model_id, r.config_json)
        for mid, key in run_model_keys(r.model_id, r.settings_hash):
            if mid == model_id and isinstance(settings.get(mid, {}).get("window_s"), (int, float)):
                out[key] = float(settings[mid]["window_s"])
    return out


def model_source(store, model_id: str) -> str | None:
    """How to load ``model_id`` again: the name or file its runs recorded (None when no run says)."""
    for r in store.read_runs().itertuples(index=False):
        try:
            config = json.loads(r.config_json) if isinstance(r.config_json, str) else {}
        except ValueError:
            continue
        for m in (config.get("models") or []) if isinstance(config, dict) else []:
            if isinstance(m, dict) and m.get("model_id") == model_id:
                return m.get("source") or m.get("name")
    return None
