"""Times in the CSV files pam writes: one ISO 8601 format, with milliseconds and the UTC offset.

``2024-04-15T06:30:09.000+00:00`` and ``2024-04-15T06:30:52.500+00:00``, never a mix of
``06:30:09+00:00`` and ``06:30:52.500000+00:00`` in one column: every row has the same width,
sorts as text, and reads back with ``pd.to_datetime(column, utc=True)``, R's
``as.POSIXct(..., format = "%Y-%m-%dT%H:%M:%OS%z")`` or Excel alike. Used by the CSV export,
``review.csv``, and ``pam query`` / ``pam sql`` written to CSV.
"""

from __future__ import annotations

import pandas as pd


def iso_ms(times: pd.Series) -> pd.Series:
    """Timestamps as ISO 8601 text with milliseconds and their own UTC offset ('' where missing);
    a time zone without offset (naive) gets none."""
    times = pd.Series(times)
    if times.dtype == object:  # mixed zones or plain Timestamps: one at a time
        return times.map(lambda t: pd.Timestamp(t).isoformat(timespec="milliseconds") if pd.notna(t) else "")
    text = times.dt.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3]
    if times.dt.tz is not None:
        offset = times.dt.strftime("%z")
        text = text + offset.str[:3] + ":" + offset.str[3:]
    return text.where(times.notna(), "").astype(object)


def with_iso_times(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every date-time column as ``iso_ms`` text, ready for ``to_csv``."""
    columns = [c for c in frame.columns if pd.api.types.is_datetime64_any_dtype(frame[c])]
    return frame.assign(**{c: iso_ms(frame[c]) for c in columns}) if columns else frame
