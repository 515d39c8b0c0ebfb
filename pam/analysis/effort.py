"""Recording effort: how many hours of audio exist, and were scored, per site x local hour.

Effort is what tells "recorded, nothing detected" (a 0) from "not recorded" (missing). Two
measures are kept side by side:

* ``recorded_h``: usable audio in the manifest (status ``ok`` or ``truncated``);
* ``analysed_h``: audio the model actually scored, from the store's ``done`` rows (optionally
  of one model), placed in time through the manifest's start times.

Summaries treat a site-day as *surveyed* when it has analysed audio (or a detection): a
recording that was scanned but not yet scored is effort the model has not looked at. The
tables kept per model (``daily_counts``, ``diel``, ``occupancy``) take each model's own
scored audio (``analysed_by_model``), so one model's zeros never stand on another's effort.

A recording is split at every local hour boundary, so one that crosses local midnight puts
its hours on both days. Every real UTC offset is a whole number of quarter hours, so cutting
on the UTC quarter-hour grid and labelling each piece by its local hour is exact, including
across daylight-saving changes (the repeated autumn hour adds up under one ``local_hour``).
"""

from __future__ import annotations

from datetime import tzinfo

import numpy as np
import pandas as pd

from pam.config import PamConfig

USABLE = ("ok", "truncated")  # = pam.io.manifest.USABLE; not imported from there, it pulls in torch

QUARTER_US = 15 * 60 * 1_000_000
HOUR_US = 3600 * 1_000_000


def utc_micros(times: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(microseconds since the epoch, valid mask) for a column of UTC timestamps."""
    ts = pd.to_datetime(times, utc=True)
    valid = ts.notna().to_numpy()
    naive = ts.dt.tz_convert(None).to_numpy(dtype="datetime64[us]")
    return naive.astype(np.int64), valid


def local_micros(utc_us: np.ndarray, tz: tzinfo) -> np.ndarray:
    """The wall-clock reading in time zone ``tz`` of UTC instants, as microseconds since 1970-01-01."""
    index = pd.DatetimeIndex(np.asarray(utc_us, dtype=np.int64).astype("datetime64[us]")).tz_localize("UTC")
    return index.tz_convert(tz).tz_localize(None).to_numpy(dtype="datetime64[us]").astype(np.int64)


def local_clock(utc_us: np.ndarray, tz: tzinfo) -> tuple[np.ndarray, np.ndarray]:
    """Local (days since 1970-01-01, hour of day) of UTC instants in time zone ``tz``."""
    if len(utc_us) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int8)
    local_us = local_micros(utc_us, tz)
    days = np.floor_divide(local_us, 24 * HOUR_US)
    hours = (local_us - days * 24 * HOUR_US) // HOUR_US
    return days, hours.astype(np.int8)


def day_strings(days: np.ndarray) -> np.ndarray:
    """Days since the epoch -> ``YYYY-MM-DD`` strings (formats each distinct day once)."""
    uniq, inverse = np.unique(np.asarray(days, dtype=np.int64), return_inverse=True)
    names = np.datetime_as_string(uniq.astype("datetime64[D]"), unit="D").astype(object)
    return names[inverse]


def audio_pieces(sites: np.ndarray, start_us: np.ndarray, seconds: np.ndarray, config: PamConfig) -> pd.DataFrame:
    """Recordings [start, start + seconds) cut at every local hour boundary, one row per piece.

    Columns: ``site``, ``local_day`` (days since the epoch on the site's local calendar),
    ``local_hour``, ``start_us`` (UTC microseconds where the piece begins) and ``seconds``.
    """
    start_us = np.asarray(start_us, dtype=np.int64)
    end_us = start_us + np.round(np.asarray(seconds, dtype=np.float64) * 1e6).astype(np.int64)
    keep = end_us > start_us
    sites, start_us, end_us = np.asarray(sites, dtype=object)[keep], start_us[keep], end_us[keep]
    first = np.floor_divide(start_us, QUARTER_US)
    count = np.floor_divide(end_us - 1, QUARTER_US) - first + 1
    rec = np.repeat(np.arange(len(start_us)), count)
    k = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    grid = (first[rec] + k) * QUARTER_US
    piece_start = np.maximum(start_us[rec], grid)
    piece_s = (np.minimum(end_us[rec], grid + QUARTER_US) - piece_start) / 1e6
    piece_site = sites[rec]
    frames = []
    for site in pd.unique(piece_site):
        mask = piece_site == site
        days, hours = local_clock(piece_start[mask], config.site_tz(site))
        frames.append(pd.DataFrame({"site": site, "local_day": days, "local_hour": hours,
                                    "start_us": piece_start[mask], "seconds": piece_s[mask]}))
    if not frames:
        return pd.DataFrame({"site": pd.Series(dtype=object), "local_day": pd.Series(dtype=np.int64),
                             "local_hour": pd.Series(dtype=np.int8), "start_us": pd.Series(dtype=np.int64),
                             "seconds": pd.Series(dtype=np.float64)})
    return pd.concat(frames, ignore_index=True)


def split_by_local_hour(sites: np.ndarray, start_us: np.ndarray, seconds: np.ndarray,
                        config: PamConfig) -> pd.DataFrame:
    """Seconds of audio per (site, local_day, local_hour) for recordings [start, start + seconds).

    ``local_day`` is days since the epoch on the site's local calendar.
    """
    pieces = audio_pieces(sites, start_us, seconds, config)
    return pieces.groupby(["site", "local_day", "local_hour"], as_index=False, sort=True)["seconds"].sum()


def recorded_audio(manifest: pd.DataFrame) -> pd.DataFrame:
    """Usable recordings with a start time, one row per distinct recording (copies count once)."""
    usable = manifest[manifest["status"].isin(USABLE) & manifest["start_time"].notna()]
    usable = usable.drop_duplicates("recording_id")
    return pd.DataFrame({"site": usable["site"].fillna("unknown").astype(object).to_numpy(),
                         "start_time": usable["start_time"].to_numpy(),
                         "seconds": usable["duration_s"].fillna(0.0).to_numpy(dtype=np.float64)})


def analysed_audio(done: pd.DataFrame, manifest: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Scored audio placed in time via the manifest; returns (rows, recordings that could not be placed).

    A recording scored under several settings or models counts once (its audio was looked at).
    """
    scored = done.drop_duplicates("recording_id")[["recording_id", "site", "audio_s"]]
    times = manifest[manifest["start_time"].notna()].drop_duplicates("recording_id")[["recording_id", "start_time"]]
    placed = scored.merge(times, on="recording_id", how="inner")
    frame = pd.DataFrame({"site": placed["site"].fillna("unknown").astype(object).to_numpy(),
                          "start_time": placed["start_time"].to_numpy(),
                          "seconds": placed["audio_s"].fillna(0.0).to_numpy(dtype=np.float64)})
    return frame, len(scored) - len(placed)


def _placed_pieces(audio: pd.DataFrame, config: PamConfig) -> pd.DataFrame:
    start_us, valid = utc_micros(audio["start_time"]) if len(audio) else (np.zeros(0, np.int64), np.zeros(0, bool))
    return audio_pieces(audio["site"].to_numpy()[valid], start_us[valid], audio["seconds"].to_numpy()[valid], config)


def _hours(audio: pd.DataFrame, config: PamConfig, column: str) -> pd.DataFrame:
    pieces = _placed_pieces(audio, config)
    out = pieces.groupby(["site", "local_day", "local_hour"], as_index=False, sort=True)["seconds"].sum()
    return out.rename(columns={"seconds": column})


def effort_table(manifest: pd.DataFrame, done: pd.DataFrame, config: PamConfig) -> tuple[pd.DataFrame, list[str]]:
    """The ``effort`` summary (schemas.EFFORT) and notes about effort that could not be placed.

    ``done`` should already be restricted to the model the summaries are for.
    """
    notes: list[str] = []
    recorded = _hours(recorded_audio(manifest), config, "recorded_s")
    analysed_rows, unplaced = analysed_audio(done, manifest)
    if unplaced:
        notes.append(f"{unplaced} scored recording(s) have no start time in the manifest; "
                     "their audio is not counted as effort")
    analysed = _hours(analysed_rows, config, "analysed_s")
    keys = ["site", "local_day", "local_hour"]
    merged = recorded.merge(analysed, on=keys, how="outer").sort_values(keys, ignore_index=True)
    return pd.DataFrame({
        "site": merged["site"].astype(object),
        "local_date": day_strings(merged["local_day"].to_numpy()) if len(merged) else np.array([], dtype=object),
        "local_hour": merged["local_hour"].astype(np.int8),
        "recorded_h": merged["recorded_s"].fillna(0.0).to_numpy() / 3600.0,
        "analysed_h": merged["analysed_s"].fillna(0.0).to_numpy() / 3600.0,
    }), notes


def analysed_by_model(done: pd.DataFrame, manifest: pd.DataFrame, config: PamConfig) -> pd.DataFrame:
    """Audio each model scored, per model x site x local date x local hour.

    Columns: ``model_id``, ``site``, ``local_date``, ``local_hour``, ``analysed_h`` and
    ``first_us`` (UTC microseconds of the earliest scored audio in that hour). A model's zeros
    (it looked and found nothing) belong to these cells only, not to audio another model scored.
    """
    frames = []
    for model_id, group in done.groupby("model_id", sort=True):
        rows, _unplaced = analysed_audio(group, manifest)
        pieces = _placed_pieces(rows, config)
        cells = pieces.groupby(["site", "local_day", "local_hour"], as_index=False, sort=True).agg(
            seconds=("seconds", "sum"), first_us=("start_us", "min"))
        frames.append(pd.DataFrame({
            "model_id": model_id, "site": cells["site"].astype(object).to_numpy(),
            "local_date": day_strings(cells["local_day"].to_numpy()) if len(cells) else np.array([], dtype=object),
            "local_hour": cells["local_hour"].to_numpy(dtype=np.int8),
            "analysed_h": cells["seconds"].to_numpy(dtype=np.float64) / 3600.0,
            "first_us": cells["first_us"].to_numpy(dtype=np.int64)}))
    if not frames:
        return pd.DataFrame({"model_id": pd.Series(dtype=object), "site": pd.Series(dtype=object),
                             "local_date": pd.Series(dtype=object), "local_hour": pd.Series(dtype=np.int8),
                             "analysed_h": pd.Series(dtype=np.float64), "first_us": pd.Series(dtype=np.int64)})
    return pd.concat(frames, ignore_index=True)


def surveyed_by_model(model_hours: pd.DataFrame) -> pd.DataFrame:
    """(site, local_date, model_id) of every local day on which each model scored some audio.

    ``model_hours``: the output of ``analysed_by_model``.
    """
    days = model_hours.loc[model_hours["analysed_h"] > 0, ["site", "local_date", "model_id"]].drop_duplicates()
    return days.reset_index(drop=True)
