"""Summaries derived from the detection store.

Days are the site's local calendar days (time zone or UTC offset from the config's
``sites`` section; UTC when a site is not configured), because that is how field teams
think about "the morning of the 15th".
"""

from __future__ import annotations

from datetime import tzinfo

import numpy as np
import pandas as pd
import pyarrow as pa

from pam import schemas
from pam.config import PamConfig
from pam.store import Store, write_parquet_atomic


def local_times(frame: pd.DataFrame, config: PamConfig) -> pd.Series:
    """Each row's ``start_time`` in its site's local time (naive local wall clock)."""
    out = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns]")
    for site, idx in frame.groupby("site").groups.items():
        tz: tzinfo = config.site_tz(site)
        times = pd.to_datetime(frame.loc[idx, "start_time"], utc=True)
        out.loc[idx] = times.dt.tz_convert(tz).dt.tz_localize(None).astype("datetime64[ns]")
    return out


def daily_counts(store: Store, config: PamConfig | None = None, min_score: float | None = None,
                 model_id: str | None = None) -> pd.DataFrame:
    """Detections and detection-positive minutes per species x site x local day."""
    config = config or PamConfig()
    det = store.read_detections(columns=["site", "start_time", "label", "score", "model_id"])
    if min_score is not None:
        det = det[det["score"] >= min_score]
    if model_id is not None:
        det = det[det["model_id"] == model_id]
    det = det.dropna(subset=["start_time"])
    if det.empty:
        return schemas.DAILY_COUNTS.empty_table().to_pandas()
    local = local_times(det, config)
    det = det.assign(date=local.dt.strftime("%Y-%m-%d"), minute=local.dt.floor("min"))
    grouped = det.groupby(["site", "date", "label", "model_id"], sort=True)
    out = grouped.agg(detections=("score", "size"), positive_minutes=("minute", "nunique"),
                      max_score=("score", "max")).reset_index()
    out["max_score"] = out["max_score"].astype(np.float32)
    return out


def write_daily_counts(store: Store, config: PamConfig | None = None) -> pd.DataFrame:
    """Recompute the daily counts table and write it to ``summaries/daily_counts``."""
    frame = daily_counts(store, config)
    table = pa.Table.from_pandas(frame, schema=schemas.with_version("daily_counts"), preserve_index=False)
    write_parquet_atomic(table, store.summaries_dir / "daily_counts" / "daily_counts.parquet")
    return frame
