"""Filtered reads of the detection store, and SQL over all of it.

``query_detections`` prunes in two steps so that a question about one site and one week
opens only that site's files of that week: first from the table's log (site partition, UTC
month partition and each file's first and last date, through ``Store.detection_files``),
then by a pyarrow dataset filter (species, score, model, exact time) that Parquet row-group
statistics can skip on.

``sql_connection`` gives a DuckDB connection with one view per table: ``detections``
(one version's files; site from the folder names), ``recordings`` (the manifest),
``done``, ``runs``, ``verified`` and every summary table.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from functools import partial
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence
from urllib.parse import unquote

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

import pam.store.schemas as schemas
from pam.store.failures import failure_files
from pam.store.species import UnknownSpecies, resolve_species, unknown_species_message
from pam.store.store import SUMMARY_TABLES, Store

DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
DETECTION_COLUMNS = schemas.DETECTIONS.names + ["site", "date"]


class QueryError(ValueError):
    """A query that cannot run as asked (bad date, missing store); the message says which."""


def parse_time(text: str | date | datetime | None, *, end: bool = False, what: str = "time") -> datetime | None:
    """An ISO date or date-time as an aware UTC datetime.

    A bare date means the whole UTC day: as a start, its midnight; as an end, the next
    midnight (so ``--end 2024-05-07`` includes all of the 7th). Times without an offset are UTC.
    """
    if text is None or text == "":
        return None
    if isinstance(text, datetime):
        value = text
    elif isinstance(text, date):
        value = datetime(text.year, text.month, text.day)
        value += timedelta(days=1) if end else timedelta(0)
    else:
        raw = str(text).strip()
        try:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise QueryError(f"{what} {raw!r} is not a date (YYYY-MM-DD) or date-time (YYYY-MM-DDTHH:MM)") from None
        if DATE_ONLY.match(raw) and end:
            value += timedelta(days=1)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


@dataclass
class QueryResult:
    """Rows found, and the part files that were read to find them."""

    rows: pd.DataFrame
    files: list[Path]
    notes: list[str] = field(default_factory=list)
    total: int = 0  # rows matching before --limit
    windows: int | None = None  # rows are events (pam.analysis.events): the detection windows of all matching events


def _as_list(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def score_threshold(min_score: float) -> pa.Scalar:
    """The threshold as float32, like the stored scores: ``--min-score 0.7`` keeps a score stored as 0.7."""
    return pa.scalar(min_score, type=pa.float32())


def detection_filter(species: Sequence[str] | None = None, start: datetime | None = None, end: datetime | None = None,
                     min_score: float | None = None, model_id: str | None = None) -> ds.Expression | None:
    """The row filter of a query, as a pyarrow dataset expression (None: every row).

    ``species`` are labels as stored; an empty list matches no row (None: every species).
    """
    parts = []
    if species is not None:
        parts.append(ds.field("label").isin(pa.array(list(species), type=pa.string())))
    if start is not None:
        parts.append(ds.field("start_time") >= pa.scalar(start, type=schemas.UTC_TS))
    if end is not None:
        parts.append(ds.field("start_time") < pa.scalar(end, type=schemas.UTC_TS))
    if min_score is not None:
        parts.append(ds.field("score") >= score_threshold(min_score))
    if model_id is not None:
        parts.append(ds.field("model_id") == model_id)
    flt = None
    for p in parts:
        flt = p if flt is None else flt & p
    return flt


def query_detections(store: Store, species: str | Sequence[str] | None = None, sites: str | Sequence[str] | None = None,
                     start: str | date | datetime | None = None, end: str | date | datetime | None = None,
                     min_score: float | None = None, model_id: str | None = None, limit: int | None = None,
                     columns: list[str] | None = None) -> QueryResult:
    """Detections matching every filter given, sorted by time; reads only the files that can match."""
    if not store.location.exists():
        raise QueryError(f"store {store.uri} does not exist")
    t0 = parse_time(start, what="--start")
    t1 = parse_time(end, end=True, what="--end")
    if t0 is not None and t1 is not None and t1 <= t0:
        raise QueryError(f"--end {end} is not after --start {start}")
    species_list, site_list = _as_list(species), _as_list(sites)
    last_day = (t1 - timedelta(microseconds=1)).date() if t1 is not None else None
    files = store.detection_files(sites=site_list, start=t0.date() if t0 else None, end=last_day)
    cols = columns or DETECTION_COLUMNS
    unknown = [c for c in cols if c not in DETECTION_COLUMNS]
    if unknown:
        raise QueryError(f"unknown column(s) {unknown}; detections have {DETECTION_COLUMNS}")
    labels = species_labels(store, species_list, files) if species_list else None
    flt = detection_filter(labels, t0, t1, min_score, model_id)
    need = list(dict.fromkeys(cols + [c for c in ("start_time", "site", "path", "start_s", "label") if c not in cols]))
    table = store.detections_dataset(files).to_table(columns=need, filter=flt)
    if table.num_rows:
        table = table.sort_by([("start_time", "ascending"), ("site", "ascending"), ("path", "ascending"),
                               ("start_s", "ascending"), ("label", "ascending")])
    total = table.num_rows
    if limit is not None:
        table = table.slice(0, max(0, limit))
    notes = []
    if total == 0:
        notes.append(_empty_note(store, species_list, site_list, len(files), model_id))
    return QueryResult(table.select(cols).to_pandas(), files, notes, total)


def stored_labels(store: Store, files: list[Path] | None = None) -> set[str]:
    """The distinct labels in ``files`` (default: every committed detection file)."""
    files = store.detection_files() if files is None else files
    if not files:
        return set()
    column = store.detections_dataset(files).to_table(columns=["label"]).column("label")
    return set(pc.unique(column).to_pylist())


def species_labels(store: Store, asked: Sequence[str], files: list[Path]) -> list[str]:
    """The stored labels that ``asked`` names, each by its label, scientific or common name, in any
    letter case (``pam.store.species``); several labels may share a name, and all are kept.

    Names are looked up among the labels of ``files`` (the files the query reads, so a site-week
    opens only its own files); a name found there is all the query needs. A name found nowhere
    in the store raises ``UnknownSpecies``, one line naming the closest known species.
    """
    found, missing = resolve_species(asked, stored_labels(store, files))
    if missing:
        everywhere = stored_labels(store)
        _elsewhere, unknown = resolve_species(missing, everywhere)
        if unknown and everywhere:
            raise UnknownSpecies(unknown_species_message(unknown, everywhere))
    return found


def _empty_note(store: Store, species: list[str] | None, sites: list[str] | None, n_files: int,
                model_id: str | None = None) -> str:
    """Why nothing matched, naming what the store does hold when a species, site or model is not in it."""
    if not store.detection_files():
        if store.pinned_version is not None:
            return f"the results table held no detections at version {store.pinned_version} (pam store history lists them)"
        return "the store has no committed detections yet"
    if sites:
        known_sites = {unquote(p.parent.parent.name.removeprefix("site=")) for p in store.detection_files()}
        missing = [s for s in sites if s not in known_sites]
        if missing:
            return (f"no detections at site(s) {', '.join(missing)} (sites are case-sensitive; sites with "
                    f"detections: {', '.join(sorted(known_sites))})")
    if model_id is not None:
        models = set(store.detections_dataset().to_table(columns=["model_id"]).column("model_id").unique().to_pylist())
        if model_id not in models:
            return f"no detections by model {model_id} (models in the store: {', '.join(sorted(models))})"
    if n_files == 0:
        return "no detection files for these sites and dates" + (f" (sites asked: {', '.join(sites)})" if sites else "")
    if species:
        return f"no detections of {', '.join(species)} match these filters"
    return "no detections match these filters"


def full_scan(store: Store, species: str | Sequence[str] | None = None, sites: str | Sequence[str] | None = None,
              start: str | None = None, end: str | None = None, min_score: float | None = None,
              model_id: str | None = None) -> pd.DataFrame:
    """Read every row of every committed file, then filter in memory: the baseline that
    ``query_detections`` (which skips files by the log and row groups by their statistics) is
    measured against. Strings are read as dictionaries and the filter runs on the Arrow table,
    so only the matching rows become Python objects."""
    t0, t1 = parse_time(start), parse_time(end, end=True)
    species, sites = _as_list(species), _as_list(sites)
    table = store.detections_dataset(dictionary_strings=True).to_table()  # every row decoded, nothing pruned
    if species:  # names resolved as query_detections does, among the labels just read
        held = {v for chunk in table.column("label").chunks for v in chunk.dictionary.to_pylist()}
        species, unknown = resolve_species(species, held)
        if unknown and held:
            raise UnknownSpecies(unknown_species_message(unknown, held))
    keep = detection_filter(species or None, t0, t1, min_score, model_id)
    if sites:
        site_match = ds.field("site").isin(list(sites))
        keep = site_match if keep is None else keep & site_match
    if keep is not None:
        table = table.filter(keep)
    plain = pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in table.schema])
    frame = table.cast(plain).to_pandas()
    return frame.sort_values(["start_time", "site", "path", "start_s", "label"], ignore_index=True)


# -- SQL ---------------------------------------------------------------------------------------
def sql_connection(store: Store, as_of: int | str | None = None):
    """A DuckDB connection with views: detections, recordings, done, runs, verified, failures, summaries.
    ``detections`` and ``done`` show one version of the results table (the latest, or ``as_of``)."""
    import duckdb

    if not store.location.exists():
        raise QueryError(f"store {store.uri} does not exist")
    con = duckdb.connect()
    snap = store.snapshot(as_of)  # one version of the results table for both views
    files = [str(f) for f in store.detection_files(snap=snap)]
    if files and store.remote:  # DuckDB scans the arrow dataset, which reads through pyarrow's S3 client
        con.register("_detections_data", store.detections_dataset(store.detection_files(snap=snap)))
        con.execute("CREATE VIEW detections AS SELECT * FROM _detections_data")
    elif files:
        # folder names percent-encode site names; SQL gets the names as written in the manifest
        con.execute(f"CREATE VIEW detections AS SELECT * EXCLUDE (kind, month, site, date), url_decode(site) AS site, "
                    f"date FROM read_parquet({_sql_list(files)}, hive_partitioning = true, "
                    "hive_types = {'kind': VARCHAR, 'site': VARCHAR, 'month': VARCHAR})")
    else:
        _empty_view(con, "detections", pa.schema(list(schemas.DETECTIONS) + list(schemas.DETECTION_PARTITIONS)))
    view = partial(_files_view, con, store)
    view("recordings", [store.manifest_path] if store.location.exists("manifest/manifest.parquet") else [],
         schemas.MANIFEST)
    view("done", store.done_files(snap=snap), schemas.DONE)
    view("runs", store.run_files(), schemas.RUNS)
    view("verified", store.verified_files(), schemas.VERIFIED)
    view("failures", failure_files(store), schemas.FAILURES)
    for name in SUMMARY_TABLES:
        view(name, [store.summary_path(name)] if store.has_summary(name) else [], schemas.TABLES[name][0])
    return con


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def _empty_view(con, name: str, schema: pa.Schema) -> None:
    con.register(f"_{name}_empty", schema.empty_table())
    con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM "_{name}_empty"')


def _files_view(con, store: Store, name: str, files: list, schema: pa.Schema) -> None:
    if not files:
        _empty_view(con, name, schema)
        return
    if store.remote:  # DuckDB scans the arrow dataset, which reads through pyarrow's S3 client
        con.register(f"_{name}_data", store.location.dataset([str(f) for f in files], schema))
        con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM "_{name}_data"')
        return
    con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM read_parquet({_sql_list([str(f) for f in files])}, '
                "union_by_name = true, hive_partitioning = false)")


def run_sql(store: Store, sql: str) -> pd.DataFrame:
    """Run one SQL statement over the store's views; returns its result as a DataFrame."""
    import duckdb

    con = sql_connection(store)
    try:
        return con.execute(sql).fetch_df()
    except duckdb.CatalogException as exc:
        raise QueryError(_catalog_message(con, str(exc))) from None
    except duckdb.Error as exc:
        raise QueryError(f"SQL error: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()


MISSING_TABLE = re.compile(r"Table with name (?P<name>\S+) does not exist")


def store_tables(con) -> list[str]:
    """The views ``sql_connection`` made, by name (DuckDB's own catalog tables left out)."""
    rows = con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal AND NOT temporary").fetchall()
    return sorted(name for (name,) in rows if not name.startswith("_"))


def _catalog_message(con, error: str) -> str:
    """A missing table names the store's tables and the nearest one (not DuckDB's system tables)."""
    first = error.splitlines()[0]
    m = MISSING_TABLE.search(first)
    if not m:
        return f"SQL error: {first}"
    tables = store_tables(con)
    near = difflib.get_close_matches(m["name"], tables, n=1, cutoff=0.6)
    hint = f" (did you mean {near[0]}?)" if near else ""
    return f"SQL error: no table {m['name']}{hint}; the store's tables: {', '.join(tables)}"
