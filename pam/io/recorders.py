"""Recorder conventions: when a file started and which device made it.

Two families are understood:

* AudioMoth: files named ``YYYYMMDD_HHMMSS.WAV`` (UTC; older firmware wrote the Unix time
  as 8 hex digits) and a WAV comment ``Recorded at HH:MM:SS DD/MM/YYYY (UTC[+-H[:MM]]) by
  AudioMoth <id> ...``. The comment wins over the name because it states its own offset.
* Song Meter (Wildlife Acoustics): files named ``PREFIX_YYYYMMDD_HHMMSS.wav`` where the
  prefix is the recorder or site name the user set. The time is the recorder's clock, which
  is local time unless it was set to UTC, so it is read in the site's time zone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path

AUDIOMOTH_NAME = re.compile(r"^(?P<date>\d{8})_(?P<time>\d{6})$")
AUDIOMOTH_HEX_NAME = re.compile(r"^(?P<hex>[0-9A-Fa-f]{8})$")
SONGMETER_NAME = re.compile(
    r"^(?P<prefix>.+?)_(?:\d\+\d_)?(?P<date>\d{8})_(?P<time>\d{6})(?:_\d+)?$"
)
AUDIOMOTH_COMMENT = re.compile(
    r"Recorded at (?P<H>\d{2}):(?P<M>\d{2}):(?P<S>\d{2})(?:\.(?P<frac>\d{1,6}))?"
    r" (?P<d>\d{2})/(?P<m>\d{2})/(?P<Y>\d{4})"
    r" \(UTC(?:(?P<sign>[+-])(?P<oh>\d{1,2})(?::?(?P<om>\d{2}))?)?\)"
    r"(?: by AudioMoth (?P<id>[0-9A-Fa-f]{16}))?"
)
AUDIOMOTH_ARTIST = re.compile(r"AudioMoth (?P<id>[0-9A-Fa-f]{16})")


@dataclass(frozen=True)
class RecorderInfo:
    recorder: str  # audiomoth | songmeter | unknown
    start_time: datetime | None  # UTC, timezone-aware
    time_source: str  # comment | filename | none
    device: str | None
    prefix: str | None = None  # Song Meter prefix (recorder or site name)


def parse_audiomoth_comment(comment: str) -> tuple[datetime, str | None] | None:
    """Start time (UTC) and device id from an AudioMoth comment, or None."""
    m = AUDIOMOTH_COMMENT.search(comment or "")
    if not m:
        return None
    micro = int((m["frac"] or "0").ljust(6, "0"))
    local = datetime(
        int(m["Y"]), int(m["m"]), int(m["d"]), int(m["H"]), int(m["M"]), int(m["S"]), micro
    )
    offset = timedelta(0)
    if m["sign"]:
        offset = timedelta(hours=int(m["oh"]), minutes=int(m["om"] or 0))
        if m["sign"] == "-":
            offset = -offset
    start = local.replace(tzinfo=timezone(offset)).astimezone(timezone.utc)
    device = m["id"].upper() if m["id"] else None
    return start, device


def _stamp(date: str, time: str) -> datetime:
    return datetime.strptime(date + time, "%Y%m%d%H%M%S")


def parse_filename(path: str | Path, local_tz: tzinfo = timezone.utc) -> RecorderInfo:
    """Recorder family and start time from the file name alone."""
    stem = Path(path).stem
    if m := AUDIOMOTH_NAME.match(stem):
        try:
            start = _stamp(m["date"], m["time"]).replace(tzinfo=timezone.utc)
        except ValueError:
            return RecorderInfo("unknown", None, "none", None)
        return RecorderInfo("audiomoth", start, "filename", None)
    if m := SONGMETER_NAME.match(stem):
        try:
            naive = _stamp(m["date"], m["time"])
        except ValueError:
            return RecorderInfo("unknown", None, "none", None)
        start = naive.replace(tzinfo=local_tz).astimezone(timezone.utc)
        return RecorderInfo("songmeter", start, "filename", m["prefix"], prefix=m["prefix"])
    if m := AUDIOMOTH_HEX_NAME.match(stem):
        start = datetime.fromtimestamp(int(m["hex"], 16), tz=timezone.utc)
        return RecorderInfo("audiomoth", start, "filename", None)
    return RecorderInfo("unknown", None, "none", None)


def identify(
    path: str | Path, comment: str = "", artist: str = "", local_tz: tzinfo = timezone.utc
) -> RecorderInfo:
    """Combine name and header: the AudioMoth comment, when present, decides the time."""
    by_name = parse_filename(path, local_tz)
    parsed = parse_audiomoth_comment(comment)
    device = by_name.device
    if m := AUDIOMOTH_ARTIST.search(artist or ""):
        device = m["id"].upper()
    if parsed is not None:
        start, comment_device = parsed
        return RecorderInfo("audiomoth", start, "comment", comment_device or device)
    if device and by_name.recorder == "unknown":
        return RecorderInfo("audiomoth", None, "none", device)
    return RecorderInfo(by_name.recorder, by_name.start_time, by_name.time_source, device, by_name.prefix)
