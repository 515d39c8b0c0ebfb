"""Scan a recorder dump into manifest rows: what each file is, when it started, and whether it
can be used.

A scan never writes into the dump and never stops on a bad file: every file ends up as a row
with a status and, when it is not ``ok``, a one-line reason. Files whose path, size and
modification time match the manifest are not opened again, so rescanning a big dump where
nothing changed costs one ``stat`` per file.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from pam.io import recorders
from pam.io.audio import AudioError, is_audio_name, probe
from pam.config import ConfigError, PamConfig, ScanConfig, nested_path
from pam.io.preflight import dump_folder_problem, store_inside_dump
from pam.store.store import Store

USABLE = ("ok", "truncated")
SYSTEM_DIRS = {"System Volume Information", "$RECYCLE.BIN", "__MACOSX", "lost+found"}
FINGERPRINT_BYTES = 64 * 1024


class ScanError(RuntimeError):
    """The dump as a whole cannot be scanned (missing, not a folder, unreadable).

    ``reason`` is the message without the dump's path, for tables and lists that show the path
    beside it."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


class StoreInsideDump(ScanError, ConfigError):
    """The store would be written into an input folder: refused before anything is written."""


@dataclass
class ScanResult:
    dump: Path
    rows: pd.DataFrame  # this dump's manifest rows
    reopened: int = 0  # files opened this time (new or changed)
    pending: list[str] = field(default_factory=list)  # still being copied: left for the next run
    folder_errors: list[tuple[str, str]] = field(default_factory=list)
    pending_reasons: dict[str, str] = field(default_factory=dict)  # path -> why it is left
    # recordings whose start time changed with the site clock in the config; their results were removed
    reclocked: list[str] = field(default_factory=list)
    # (file of this dump, another file with its site, recorder, start, rate and length): copies under another name
    repeated: list[tuple[str, str]] = field(default_factory=list)

    @property
    def problems(self) -> pd.DataFrame:
        return self.rows[~self.rows["status"].isin(USABLE)][["path", "status", "reason"]]


def fingerprint(path: Path, size: int) -> str:
    """Content id: file name, size, first and last 64 KiB. Survives moving the dump."""
    h = hashlib.sha1()
    h.update(path.name.encode())
    h.update(size.to_bytes(8, "little"))
    with open(path, "rb") as fh:
        h.update(fh.read(FINGERPRINT_BYTES))
        if size > 2 * FINGERPRINT_BYTES:
            fh.seek(size - FINGERPRINT_BYTES)
            h.update(fh.read(FINGERPRINT_BYTES))
    return h.hexdigest()[:20]


def site_for(rel: Path, dump: Path, prefix: str | None, rule: ScanConfig) -> str:
    """Which site a file belongs to, by the configured rule."""
    parent = rel.parent.name or dump.name
    if rule.site_from == "prefix" and prefix:
        return prefix
    if rule.site_from == "regex" and rule.site_regex:
        m = re.search(rule.site_regex, rel.as_posix())
        if m and m.group("site"):
            return m.group("site")
    return parent


def site_of(path: Path, dump: Path, config: PamConfig) -> str:
    """The site a file in ``dump`` belongs to, without opening it."""
    return site_for(path.relative_to(dump), dump, recorders.parse_filename(path).prefix, config.scan)


def check_dump_folder(dump: str | os.PathLike) -> Path:
    """The dump as an absolute path, or ScanError when it is missing, not a folder or unreadable."""
    dump = Path(dump).expanduser().resolve()
    problem = dump_folder_problem(dump)
    if problem:
        shown = str(dump) if _printable(dump) is not None else repr(str(dump))
        raise ScanError(f"{shown}: {problem}", reason=problem)
    return dump


def check_store_outside(store: Store, dump: str | os.PathLike) -> None:
    """pam never writes into an input folder: refuse a store that is the dump or inside it."""
    problem = None if store.remote else store_inside_dump(store.root, dump)
    if problem:
        raise StoreInsideDump(problem)


class OutputInsideDump(ConfigError):
    """An export or review folder would be written into an input folder: refused."""


def check_outside_dumps(store: Store, out: str | os.PathLike, what: str) -> None:
    """pam never writes into an input folder: refuse ``out`` inside any dump the store has scanned
    (a clip folder there would also be scanned as recordings by the next run)."""
    manifest = store.read_manifest()
    for dump in sorted({d for d in manifest["dump"] if isinstance(d, str) and d}):
        if nested_path(out, dump):
            raise OutputInsideDump(f"{Path(out).expanduser().resolve()}: the {what} must not be inside the dump "
                                   f"{dump} (pam never writes into input folders; the next run would scan it)")


def _printable(path: Path) -> str | None:
    """The path as text that Parquet can hold, or None when its name is not valid UTF-8."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text


def _walk(dump: Path, errors: list[tuple[str, str]]):
    def onerror(exc: OSError) -> None:
        errors.append((str(exc.filename), f"cannot list folder: {exc.strerror}"))

    for dirpath, dirnames, filenames in os.walk(dump, onerror=onerror):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SYSTEM_DIRS)
        for name in sorted(filenames):
            if is_audio_name(name):
                yield Path(dirpath) / name


def _row_for(path: Path, st: os.stat_result, dump: Path, config: PamConfig, now: datetime) -> dict:
    rel = path.relative_to(dump)
    by_name = recorders.parse_filename(path)
    site = site_for(rel, dump, by_name.prefix, config.scan)
    row: dict = {
        "path": str(path),
        "dump": str(dump),
        "size": int(st.st_size),
        "mtime": datetime.fromtimestamp(st.st_mtime, tz=timezone.utc),
        "site": site,
        "scanned_at": now,
        "status": "ok",
        "reason": None,
    }
    try:
        info = probe(path)
    except AudioError as exc:
        info = None
        row.update(status=exc.status, reason=exc.reason)
    except Exception as exc:  # noqa: BLE001 - a file the decoder chokes on is reported, never fatal
        info = None
        row.update(status="unreadable", reason=f"cannot decode: {type(exc).__name__}: {exc}".splitlines()[0])
    comment = info.comment if info else ""
    artist = info.artist if info else ""
    rec = recorders.identify(path, comment, artist, local_tz=config.site_tz(site))
    row.update(
        recorder=rec.recorder,
        device=rec.device,
        start_time=rec.start_time,
        time_source=rec.time_source,
    )
    if info is not None:
        row.update(
            sample_rate=info.sample_rate,
            channels=info.channels,
            frames=info.frames,
            duration_s=info.frames / info.sample_rate,
            format=info.format,
            status=info.status,
            reason=info.reason,
        )
    try:
        row["recording_id"] = fingerprint(path, st.st_size) if st.st_size else "empty-" + hashlib.sha1(
            str(path).encode()).hexdigest()[:14]
    except OSError as exc:
        row["recording_id"] = "unreadable-" + hashlib.sha1(str(path).encode()).hexdigest()[:10]
        if row["status"] in USABLE:
            row.update(status="unreadable", reason=f"cannot read: {exc.strerror}")
    return row


def scan(
    dump: str | os.PathLike,
    store: Store,
    config: PamConfig | None = None,
    now: datetime | None = None,
) -> ScanResult:
    """Scan one dump folder and merge its rows into the store's manifest."""
    config = config or PamConfig()
    now = now or datetime.now(timezone.utc)
    dump = check_dump_folder(dump)
    check_store_outside(store, dump)

    old = store.read_manifest()
    known = dict(zip(old["path"], old.to_dict("records"))) if len(old) else {}
    rows: list[dict] = []
    folder_errors: list[tuple[str, str]] = []
    pending: dict[str, str] = {}
    fresh: list[tuple[Path, os.stat_result]] = []  # new or changed: to be opened
    reclocked: list[str] = []
    for path in _walk(dump, folder_errors):
        text = _printable(path)
        if text is None:
            shown = str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            rows.append(_unreadable_row(Path(shown), dump, "file name is not valid UTF-8 (written by another "
                                        "system's encoding); copy it under a UTF-8 name to analyse it", now))
            continue
        try:
            st = path.stat()
        except OSError as exc:
            rows.append(_unreadable_row(path, dump, f"cannot stat: {exc.strerror}", now))
            continue
        mtime = datetime.fromtimestamp(st.st_mtime, tz=timezone.utc)
        if config.scan.min_age_s and (now - mtime).total_seconds() < config.scan.min_age_s:
            pending[text] = f"modified {max(0.0, (now - mtime).total_seconds()):.0f} s ago (scan.min_age_s " \
                            f"{config.scan.min_age_s:.0f}): still being copied?"
            continue
        prev = known.get(text)
        if prev is not None and prev["size"] == st.st_size and _same_time(prev["mtime"], mtime):
            row = {**prev, "scanned_at": now}
            if _clock_changed(row, config):
                reclocked.append(row["recording_id"])
            rows.append(row)
            continue
        fresh.append((path, st))
    if fresh and config.scan.settle_s:
        # One pause for all new files: a copy in progress grows (or is touched) meanwhile.
        time.sleep(config.scan.settle_s)
        settled = []
        for path, st in fresh:
            if _moved(path, st):
                pending[str(path)] = f"size or modification time changed within {config.scan.settle_s:g} s " \
                                     "(scan.settle_s): still being copied"
            else:
                settled.append((path, st))
        fresh = settled
    reopened = 0
    for path, st in fresh:
        reopened += 1
        row = _row_for(path, st, dump, config, now)
        if _moved(path, st):
            pending[str(path)] = "size or modification time changed while it was read: still being copied"
            continue
        rows.append(row)
    for folder, reason in folder_errors:
        rows.append(_unreadable_row(Path(folder), dump, reason, now))

    frame = pd.DataFrame(rows)
    with store.lock(what=f"scan {dump}"):
        current = store.read_manifest()
        seen = set(frame["path"]) if len(frame) else set()
        others = current[~current["path"].isin(seen)].copy()
        vanished = (others["dump"] == str(dump)) & (others["status"] != "missing") & ~others["path"].isin(pending)
        others.loc[vanished, "status"] = "missing"
        others.loc[vanished, "reason"] = "no longer in the dump at the last scan"
        merged = pd.concat([x for x in (others, frame) if len(x)], ignore_index=True) if len(others) or len(frame) else current
        written = _typed(merged)
        store.write_manifest(written)
    if reclocked:
        store.retire(reclocked)  # after the manifest lock: the retirement takes it again
    result_rows = _typed(frame) if len(frame) else written.iloc[0:0]
    return ScanResult(dump, result_rows, reopened, list(pending), folder_errors, pending_reasons=pending,
                      reclocked=reclocked, repeated=repeated_recordings(result_rows, written))


def repeated_recordings(rows: pd.DataFrame, manifest: pd.DataFrame) -> list[tuple[str, str]]:
    """(path in ``rows``, path of another usable file in ``manifest``) for each usable file of
    ``rows`` with the same site, device, start time, sample rate and length as another file: a
    recording copied again under another name (its fingerprint includes the name, so both are
    analysed, and both counted). One pair per file of ``rows``, in path order."""
    key = ["site", "device", "start_time", "sample_rate", "frames"]

    def usable(frame: pd.DataFrame) -> pd.DataFrame:
        if not len(frame):
            return frame
        keep = frame["status"].isin(USABLE) & frame["start_time"].notna() & (frame["frames"] > 0)
        return frame.loc[keep, key + ["path", "recording_id"]].fillna({"site": "", "device": ""})

    mine, every = usable(rows), usable(manifest)
    if not len(mine) or not len(every):
        return []
    pairs = mine.merge(every, on=key, suffixes=("", "_other"))
    pairs = pairs[(pairs["path"] != pairs["path_other"]) & (pairs["recording_id"] != pairs["recording_id_other"])]
    pairs = pairs.sort_values(["path", "path_other"]).drop_duplicates("path")
    return list(zip(pairs["path"], pairs["path_other"]))


def _clock_changed(row: dict, config: PamConfig) -> bool:
    """Re-read a known Song Meter file's start time from its name (local time) with the site's
    clock as configured now; updates ``row`` and says whether the time moved. Names are all it
    takes, so no file is opened; AudioMoth times (UTC, or an offset in the header) never move."""
    if row.get("recorder") != "songmeter" or row.get("time_source") != "filename":
        return False
    now = recorders.parse_filename(row["path"], config.site_tz(row.get("site"))).start_time
    if now is None or _same_time(row.get("start_time"), now):
        return False
    row["start_time"] = now
    return True


def _moved(path: Path, st: os.stat_result) -> bool:
    """Whether a file's size or modification time differs from ``st`` (a vanished file has not
    moved: reading it already said so)."""
    try:
        now = path.stat()
    except OSError:
        return False
    return now.st_size != st.st_size or now.st_mtime_ns != st.st_mtime_ns


def recordings_in(store: Store, dumps: list[str]) -> pd.DataFrame:
    """Manifest rows of the given dumps (resolved paths), as the store has them now."""
    manifest = store.read_manifest()
    resolved = {str(Path(d).expanduser().resolve()) for d in dumps}
    return manifest[manifest["dump"].isin(resolved) & (manifest["status"] != "missing")].reset_index(drop=True)


def _unreadable_row(path: Path, dump: Path, reason: str, now: datetime) -> dict:
    return {
        "recording_id": "unreadable-" + hashlib.sha1(str(path).encode()).hexdigest()[:10],
        "path": str(path), "dump": str(dump), "site": path.parent.name, "status": "unreadable",
        "reason": reason, "scanned_at": now, "recorder": "unknown", "time_source": "none",
    }


def _same_time(a, b: datetime) -> bool:
    if a is None or pd.isna(a):
        return False
    return abs(pd.Timestamp(a).to_pydatetime() - b).total_seconds() < 1e-3


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns in schema order and types, so Parquet writes never guess."""
    from pam.store.schemas import MANIFEST

    out = pd.DataFrame(index=frame.index)
    for f in MANIFEST:
        col = frame[f.name] if f.name in frame else pd.Series([None] * len(frame), index=frame.index)
        if str(f.type).startswith("timestamp"):
            col = pd.to_datetime(col, utc=True)
        elif str(f.type).startswith("int"):
            col = pd.array(col.where(pd.notna(col), None), dtype="Int64")
        elif str(f.type) == "double":
            col = pd.to_numeric(col, errors="coerce").astype(np.float64)
        else:
            col = col.astype(object).where(pd.notna(col), None)
        out[f.name] = col
    return out.reset_index(drop=True)
