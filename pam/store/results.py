"""The ``results`` Delta Lake table: detection rows and done rows in one table, one log.

One table carries both the rows and their completion, so that a commit of a group of
recordings (its detections, its done rows, and the removal of the rows it replaces) is one
Delta transaction: readers see all of it or none of it (docs/store.md#the-commit).

Rows are told apart by the partition column ``kind`` (``detection``, ``done`` or ``embedding``);
detection and embedding files are partitioned by ``site`` and UTC ``month`` too (``YYYY-MM``,
``unknown`` without a start time), and keep the UTC ``date`` of each row as a column, with
its first and last value in the add action's statistics so that a reader prunes files by
date from the log alone; done files are partitioned by ``site`` (``month`` null). Tables of
the earlier layout, partitioned by (kind, site, date), are refused (``OldLayoutError``) until
``pam store migrate`` converts them.
pam writes the Parquet files itself, each with only its own kind's columns and its schema
version in the metadata (``pam.schema``), and commits them with delta-rs; other engines read
the table as the union of both column sets (``kind`` says which columns apply).

Concurrency is optimistic: a commit is built against the snapshot it read and offered as the
next version with no automatic rebase (``max_commit_retries=0``); when another writer got
there first, the commit removes its files, rereads the snapshot, re-checks which recordings
are still to commit and tries again. Two writers can therefore never both commit one
recording, and a replacement never removes a file another commit has already replaced.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Callable, Iterable
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable, Field
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import AddAction, CommitProperties, RemoveAction

import pam.store.schemas as schemas

DETECTION, DONE, EMBEDDING = "detection", "done", "embedding"
KINDS = (DETECTION, DONE, EMBEDDING)
PARTITIONS = ["kind", "site", "month"]
OLD_PARTITIONS = ["kind", "site", "date"]  # the layout before month partitions (docs/store.md#layouts)
UNKNOWN = "unknown"
DATE = pa.field("date", pa.string())  # UTC date of the row's start_time (YYYY-MM-DD, or unknown)


def _file_schema(table: str, columns: pa.Schema) -> pa.Schema:
    return columns.with_metadata(schemas.with_version(table).metadata)


DETECTION_FILE = _file_schema("detections", schemas.DETECTIONS.append(DATE))
DONE_FILE = schemas.with_version("done")  # done files keep their site column (also the partition value)
EMBEDDING_FILE = _file_schema("embeddings", schemas.EMBEDDINGS.append(DATE))
FILE_SCHEMAS = {DETECTION: DETECTION_FILE, DONE: DONE_FILE, EMBEDDING: EMBEDDING_FILE}
# Rows per row group of a compacted file (sorted by time): a site-week read skips the others.
ROW_GROUP = 16_384


class OldLayoutError(RuntimeError):
    """A store of an earlier layout: it needs ``pam store migrate``."""


def table_schema() -> pa.Schema:
    """The Delta table's logical schema: every kind's columns (nullable), then the partitions."""
    fields: dict[str, pa.Field] = {}
    for f in list(DETECTION_FILE) + [f for f in schemas.DONE if f.name != "site"] + list(EMBEDDING_FILE):
        fields.setdefault(f.name, f.with_nullable(True))
    return pa.schema(list(fields.values()) + [pa.field(p, pa.string()) for p in PARTITIONS])


def month_of(day: str | None) -> str:
    """The month partition of a UTC date (``YYYY-MM``), ``unknown`` for an unknown date."""
    return day[:7] if isinstance(day, str) and len(day) == 10 and day[4] == "-" else UNKNOWN


class CommitConflict(RuntimeError):
    """Another writer committed first too many times in a row."""


@dataclass(frozen=True)
class ResultFile:
    """One live file of the table, as the snapshot lists it."""

    path: str  # relative to the table root
    kind: str
    site: str | None
    month: str | None  # partition YYYY-MM, or unknown (detections, embeddings); None for done files
    rows: int
    first: str | None = None  # first and last UTC date of its rows (the add action's statistics)
    last: str | None = None
    models: tuple[str, str] | None = None  # done files: first and last model id (statistics; None: not known)

    def may_hold(self, model_ids: list[str]) -> bool:
        """Whether the file may hold rows of one of ``model_ids`` (from the log's statistics)."""
        return self.models is None or any(self.models[0] <= m <= self.models[1] for m in model_ids)

    def days(self) -> tuple[str, str] | None:
        """(first, last) UTC date of its rows; None when unknown (no start time)."""
        if self.month in (None, UNKNOWN):
            return None
        first = self.first if self.first and self.first != UNKNOWN else f"{self.month}-01"
        last = self.last if self.last and self.last != UNKNOWN else f"{self.month}-31"
        return first, last


def file_dir(kind: str, site: str | None, month: str | None) -> str:
    site_part = quote(site, safe="") if isinstance(site, str) and site else UNKNOWN
    if kind == DONE:
        return f"kind={DONE}/site={site_part}"
    return f"kind={kind}/site={site_part}/month={month or UNKNOWN}"


class ResultsTable:
    """The Delta table at ``uri`` (a local folder or an object-store URI)."""

    def __init__(self, uri: str, storage_options: dict[str, str] | None = None):
        self.uri = uri.rstrip("/")
        self.storage_options = storage_options or None
        self.fs, self.base = pafs.FileSystem.from_uri(self.uri) if "://" in self.uri else (
            pafs.LocalFileSystem(), self.uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    # -- snapshots ---------------------------------------------------------------------
    def snapshot(self, version: int | str | datetime | None = None) -> DeltaTable | None:
        """The table at its latest version (or an earlier one); None when it does not exist yet."""
        try:
            dt = DeltaTable(self.uri, storage_options=self.storage_options)
        except TableNotFoundError:
            return None
        if version is not None:
            dt.load_as_version(version)
        self.check_layout(dt)
        return dt

    def check_layout(self, dt: DeltaTable) -> None:
        """Refuse a table of the (kind, site, date) layout with one line naming the fix."""
        if "date" in dt.metadata().partition_columns:
            store = self.uri[:-len("/results")] if self.uri.endswith("/results") else self.uri
            raise OldLayoutError(f"store {store} has the results table of pam before month partitions (kind, site, "
                                 f"date); convert it with `pam store migrate {store} NEW_FOLDER` (the old store is "
                                 "only read)")

    def snapshot_as_of(self, as_of: int | str | datetime) -> DeltaTable:
        """The table at a version number, or as it was at a time (an aware datetime, or ISO text; a
        time without an offset is UTC). ValueError with the versions there are when none fits."""
        dt = self.snapshot()
        if dt is None:
            raise ValueError(f"{self.uri} has no results table yet, so no version {as_of}")
        latest = dt.version()
        if isinstance(as_of, str) and as_of.strip().isdigit():
            as_of = int(as_of)
        if isinstance(as_of, str):
            try:
                as_of = datetime.fromisoformat(as_of.strip().replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"--as-of {as_of!r} is neither a version number nor a date-time "
                                 "(YYYY-MM-DDTHH:MM[:SS], UTC unless an offset is given)") from None
        if isinstance(as_of, datetime) and as_of.tzinfo is None:
            as_of = as_of.replace(tzinfo=timezone.utc)
        created = self.created_at()
        try:
            if isinstance(as_of, datetime) and created is not None and as_of < created:
                raise ValueError("before the table was created")
            dt.load_as_version(as_of)
        except OldLayoutError:
            raise
        except Exception:  # delta-rs: no such version (or its log was cleaned up)
            when = created.isoformat(timespec="seconds") if created else "unknown"
            raise ValueError(f"{self.uri} has no version {'at ' if isinstance(as_of, datetime) else ''}{as_of}: "
                             f"versions are 0 (created {when}) to {latest}") from None
        return dt

    def created_at(self) -> datetime | None:
        """When version 0 was written (its commitInfo), or None when its log file is gone."""
        try:
            with self.fs.open_input_stream(f"{self.base}/_delta_log/{0:020d}.json") as fh:
                for line in fh.read().decode().splitlines():
                    info = json.loads(line).get("commitInfo")
                    if info and "timestamp" in info:
                        return datetime.fromtimestamp(info["timestamp"] / 1000, timezone.utc)
        except (FileNotFoundError, OSError):
            pass
        return None

    def ensure(self) -> DeltaTable:
        dt = self.snapshot()
        if dt is None:
            try:
                DeltaTable.create(self.uri, schema=table_schema(), partition_by=PARTITIONS, name="results",
                                  mode="ignore", storage_options=self.storage_options,
                                  configuration={"delta.checkpointInterval": "50"})
            except Exception:  # a writer beside us created it first
                pass
            dt = self.snapshot()
        return dt

    def add_embedding_columns(self, dt: DeltaTable) -> bool:
        """Declare the embedding columns in the log of a table created before them (one version
        of its own); False when they are there already."""
        have = {f.name for f in dt.schema().fields}
        missing = [f for f in schemas.EMBEDDINGS if f.name not in have]
        if not missing:
            return False
        dt.alter.add_columns([Field(f.name, "binary" if f.name == "embedding" else _delta_type(f.type), nullable=True)
                              for f in missing])
        return True

    @staticmethod
    def files(dt: DeltaTable | None, kind: str) -> list[ResultFile]:
        if dt is None:
            return []
        actions = pa.table(dt.get_add_actions(flatten=True))
        actions = actions.filter(pc.equal(actions.column("partition.kind"), kind))
        n = actions.num_rows

        def column(name: str) -> list:
            return actions.column(name).to_pylist() if name in actions.column_names else [None] * n

        out = []
        for path, site, month, rows, first, last, lo, hi in zip(
                column("path"), column("partition.site"), column("partition.month"), column("num_records"),
                column("min.date"), column("max.date"), column("min.model_id"), column("max.model_id")):
            # the log holds paths URI-encoded (Delta protocol); files carry them decoded
            models = (lo, hi) if isinstance(lo, str) and isinstance(hi, str) else None
            out.append(ResultFile(unquote(path), kind, site, month, rows or 0, first, last, models))
        out.sort(key=lambda f: f.path)
        return out

    @staticmethod
    def pruned_files(dt: DeltaTable | None, kind: str, sites: Iterable[str] | None = None,
                     start: date | None = None, end: date | None = None) -> list[ResultFile]:
        """The live files of one kind in a snapshot, pruned by site and UTC date from the log
        alone (partition month, then each file's first and last date; no file is opened);
        files of an unknown date are kept."""
        wanted = set(sites) if sites is not None else None
        lo, hi = (start.isoformat() if start else None), (end.isoformat() if end else None)
        out = []
        for f in ResultsTable.files(dt, kind):
            if wanted is not None and f.site not in wanted:
                continue
            days = f.days() if (lo or hi) else None
            if days is not None and ((lo and days[1] < lo) or (hi and days[0] > hi)):
                continue
            out.append(f)
        return out

    def unnamed_files(self, dt: DeltaTable) -> list[tuple[str, float]]:
        """(file system path, mtime in seconds) of the data files under the table that no version
        in its log names (written by a writer that died before committing them)."""
        named = {f.path for kind in KINDS for f in self.files(dt, kind)}
        out = []
        for info in self.fs.get_file_info(pafs.FileSelector(self.base, recursive=True)):
            if info.type != pafs.FileType.File:
                continue
            rel = info.path[len(self.base) + 1:]
            if rel.startswith("_delta_log/"):
                if rel.endswith(".json"):
                    with self.fs.open_input_stream(info.path) as fh:
                        for line in fh.read().decode().splitlines():
                            action = json.loads(line) if line.strip() else {}
                            for kind in ("add", "remove"):
                                if kind in action:
                                    named.add(unquote(action[kind]["path"]))
                continue
            out.append((info.path, rel, info.mtime.timestamp() if info.mtime else 0.0))
        return [(path, mtime) for path, rel, mtime in out if rel not in named]

    def full_path(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def dataset(self, files: list[ResultFile], kind: str, dictionary_strings: bool = False) -> ds.Dataset:
        """The files as one pyarrow dataset with ``site`` from the table's log (``date`` is a
        column of detection and embedding files). With ``dictionary_strings`` the string
        columns of the files are read as dictionaries (the Parquet pages already are), which
        spares building millions of strings when a whole table is scanned."""
        if kind in (DETECTION, EMBEDDING):
            columns = schemas.DETECTIONS if kind == DETECTION else schemas.EMBEDDINGS
            schema = pa.schema(list(columns) + list(schemas.DETECTION_PARTITIONS))
            parts = [ds.field("site") == _scalar(f.site) for f in files]
        else:
            schema = schemas.DONE
            parts = [ds.scalar(True) for f in files]
        file_format = ds.ParquetFileFormat()
        if dictionary_strings:
            names = [f.name for f in schema if pa.types.is_string(f.type) and f.name != "site"]
            schema = pa.schema([f.with_type(pa.dictionary(pa.int32(), pa.string())) if f.name in names else f
                                for f in schema])
            file_format = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=names))
        return ds.FileSystemDataset.from_paths([self.full_path(f.path) for f in files], schema=schema,
                                               format=file_format, filesystem=self.fs, partitions=parts)

    # -- writing -----------------------------------------------------------------------
    def write_file(self, table: pa.Table, kind: str, site: str | None, stem: str,
                   data_change: bool = True, row_group_size: int | None = None) -> AddAction:
        """Write ``table`` (of ``kind``'s file schema: detection and embedding rows with their
        ``date``, all of one UTC month) as a new file of partition (kind, site, month); the add
        action that commits it, with the first and last date in its statistics (done files: the
        first and last model id, so that a reader of some models' done rows skips the others'
        files from the log alone)."""
        stats: dict = {"numRecords": table.num_rows}
        month = None
        if kind == DONE and table.num_rows and table.column("model_id").null_count == 0:
            models = table.column("model_id")
            stats.update(minValues={"model_id": pc.min(models).as_py()}, maxValues={"model_id": pc.max(models).as_py()},
                         nullCount={"model_id": 0})
        if kind != DONE:
            days = table.column("date").fill_null(UNKNOWN)
            if table.num_rows:
                first, last = pc.min(days).as_py(), pc.max(days).as_py()
                month = month_of(first)
                if month != month_of(last):
                    raise ValueError(f"one {kind} file holds rows of {first} and {last}: write one per month")
                stats.update(minValues={"date": first}, maxValues={"date": last}, nullCount={"date": 0})
                table = table.set_column(table.schema.get_field_index("date"), DATE, days)
            month = month or UNKNOWN
        rel = f"{file_dir(kind, site, month)}/{stem}-{uuid.uuid4().hex[:8]}.parquet"
        path = self.full_path(rel)
        # embedding vectors are stored uncompressed: zstd saves little on float16 features and
        # decompressing them would bound how fast pam apply-head reads the archive
        options = {"compression": {n: ("none" if n == "embedding" else "zstd") for n in table.column_names},
                   "use_dictionary": [n for n in table.column_names if n != "embedding"]} if kind == EMBEDDING \
            else {"compression": "zstd"}
        if row_group_size:
            options["row_group_size"] = row_group_size
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as fh:
                pq.write_table(table, fh, **options)
                fh.flush()
                os.fsync(fh.fileno())
            size = os.path.getsize(path)
        else:
            with self.fs.open_output_stream(path) as out:
                pq.write_table(table, out, **options)
            size = self.fs.get_file_info(path).size
        if kind != DONE:  # a missing site or date reads back as "unknown", as its folder says
            values = {"kind": kind, "site": site if isinstance(site, str) and site else UNKNOWN, "month": month}
        else:
            values = {"kind": kind, "site": site if isinstance(site, str) and site else None, "month": None}
        return AddAction(rel, size, values, int(time.time() * 1000), data_change, json.dumps(stats))

    def delete_files(self, adds: list[AddAction]) -> None:
        """Files of a commit that lost the race (never in the log, so nobody reads them)."""
        for a in adds:
            try:
                self.fs.delete_file(self.full_path(a.path))
            except (FileNotFoundError, OSError):
                pass

    def commit(self, dt: DeltaTable, adds: list[AddAction], removes: list[ResultFile], operation: str,
               data_change: bool = True, details: dict[str, str] | None = None) -> bool:
        """Offer the actions as the version after ``dt``; False when another writer took it.
        ``details`` go into the commit's metadata as ``pam.<name>`` (``pam store history`` shows them)."""
        now = int(time.time() * 1000)
        actions: list = list(adds) + [RemoveAction(path=f.path, deletion_timestamp=now, data_change=data_change,
                                                   partition_values={"kind": f.kind, "site": f.site,
                                                                     "month": f.month})
                                      for f in removes]
        try:
            dt.create_write_transaction(actions, "append", table_schema(), partition_by=PARTITIONS,
                                        commit_properties=CommitProperties(
                                            max_commit_retries=0, custom_metadata={"pam.operation": operation,
                                                                                **{f"pam.{k}": str(v) for k, v in
                                                                                   (details or {}).items()}}))
        except CommitFailedError:
            self.delete_files(adds)
            return False
        except BaseException:
            self.delete_files(adds)
            raise
        return True

    def transact(self, attempt: Callable[[DeltaTable], object], tries: int = 50, snap: DeltaTable | None = None):
        """Run ``attempt(snapshot)`` until it commits (returns non-None) or says there is nothing to do.

        Each attempt gets the table's latest version: opened afresh, or ``snap`` (a snapshot of
        this table the caller keeps across several transactions) brought up to date in place
        with ``update_incremental``, which reads only the log entries since its version instead
        of replaying the whole log. Either way a writer that commits after that point makes the
        attempt's commit fail (``commit``), and the next attempt sees its work."""
        for k in range(tries):
            if snap is not None:
                snap.update_incremental()
                self.check_layout(snap)
                dt = snap
            else:
                dt = self.ensure()
            result = attempt(dt)
            if result is not None:
                return result
            time.sleep(min(0.5, 0.01 * 2 ** k) * (0.5 + uuid.uuid4().int % 1000 / 1000))
        raise CommitConflict(f"{self.uri}: gave up after {tries} commit conflicts with other writers")


def _delta_type(t: pa.DataType) -> str:
    """The Delta primitive type name of an Arrow type used by the embedding columns."""
    if pa.types.is_timestamp(t):
        return "timestamp"
    return {pa.string(): "string", pa.int64(): "long", pa.float64(): "double"}[t]


def _scalar(value: str | None) -> pa.Scalar:
    return pa.scalar(value, type=pa.string())


def now_utc() -> datetime:
    return datetime.now(timezone.utc)
