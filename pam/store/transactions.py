"""The store's write transactions on the ``results`` table: commit a flush, retire recordings.

Each is one Delta transaction built against one snapshot (``ResultsTable.transact``): it adds
the new detection and done files and removes every file that holds a row it replaces,
writing that file again without those rows. Nothing is visible until the log's next version
names it, so a process killed at any point leaves either the old table or the new one, plus
at most some files no version names (``Store.recover`` deletes them once they are old).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable

import pam.store.schemas as schemas
from pam.store.results import DETECTION, DONE, EMBEDDING, FILE_SCHEMAS, ResultFile, ResultsTable

KEY = ["recording_id", "model_id", "settings_hash", "run_id"]
# File names in the results table: a flush's files carry its run and commit number.
PART_NAME = re.compile(r"^part-(?P<run>[^-]+-[0-9a-f]+)-(?P<seq>\d+)-[0-9a-f]{8}\.parquet$")
DONE_NAME = re.compile(r"^done-(?P<run>[^-]+-[0-9a-f]+)-(?P<seq>\d+)-[0-9a-f]{8}\.parquet$")


@dataclass(frozen=True)
class Flush:
    """One commit's worth of work: detection rows (with site and date), done rows, and the
    windows' embeddings (with site and date) when the run keeps them."""

    detections: pa.Table  # schemas.DETECTIONS plus string columns site, date
    done: pa.Table  # schemas.DONE
    embeddings: pa.Table | None = None  # schemas.EMBEDDINGS plus string columns site, date


@dataclass(frozen=True)
class Committed:
    """What a commit made visible, and how many earlier analyses it made out of date."""

    done: pa.Table  # the done rows committed (recordings another run had committed are left out)
    superseded: int  # older done rows replaced: same recording under other settings, or the path's old content


def keys_not_in(table: pa.Table, keys: set[tuple[str, str, str]]) -> list[bool]:
    """Per row of ``table``: its (recording_id, model_id, settings_hash) is not among ``keys``."""
    return [k not in keys for k in zip(table.column("recording_id").to_pylist(), table.column("model_id").to_pylist(),
                                       table.column("settings_hash").to_pylist())]


def out_of_date(existing: pd.DataFrame, done: pa.Table) -> pd.DataFrame:
    """Done rows of ``existing`` that ``done`` replaces: for the same model, the same recording
    under other settings, or another recording (an earlier content) at the same path."""
    model = done.column("model_id").to_pylist()
    settings = dict(zip(zip(done.column("recording_id").to_pylist(), model), done.column("settings_hash").to_pylist()))
    current = {(p, m): r for r, p, m in zip(done.column("recording_id").to_pylist(), done.column("path").to_pylist(),
                                          model) if p}
    stale = []
    for r, m, k, p in zip(existing["recording_id"], existing["model_id"], existing["settings_hash"], existing["path"]):
        other_settings = (r, m) in settings and settings[(r, m)] != k
        other_content = (p, m) in current and current[(p, m)] != r
        stale.append(other_settings or other_content)
    return existing.loc[pd.Series(stale, index=existing.index, dtype=bool)]


def done_rows(table: ResultsTable, dt: DeltaTable | None, flt: ds.Expression | None = None,
              columns: list[str] | None = None, models: list[str] | None = None) -> pd.DataFrame:
    """The done rows of a snapshot that pass ``flt``; with ``models`` (which ``flt`` must also
    require), the done files of other models are left out from the log alone, not opened."""
    files = ResultsTable.files(dt, DONE)
    if models is not None:
        files = [f for f in files if f.may_hold(models)]
    if not files:
        empty = schemas.DONE.empty_table()
        return (empty.select(columns) if columns else empty).to_pandas()
    return table.dataset(files, DONE).to_table(filter=flt, columns=columns).to_pandas()


class DoneFiles:
    """The done rows of some models, per done file, for a caller that reads them again and again
    (``pam apply-head``: its plan, then each of its commits): a file's rows never change (a
    commit adds new files and removes old ones; names are unique), so each done file is read
    once for a model, not at every commit. What a commit checks is still the rows of every file
    live in the snapshot it is built on: the files another writer added meanwhile are read
    then, the ones it removed are left out."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], pd.DataFrame] = {}  # (file, model) -> its done rows

    def rows(self, table: ResultsTable, dt: DeltaTable | None, models: list[str],
             columns: list[str] | None = None) -> pd.DataFrame:
        """The ``columns`` (default all) of the rows of ``models`` in the live done files of ``dt``."""
        models = sorted(set(models))
        files = ResultsTable.files(dt, DONE)
        missing = sorted({m for f in files for m in models if (f.path, m) not in self._rows})
        new = [f for f in files if any((f.path, m) not in self._rows for m in missing)]
        empty = schemas.DONE.empty_table().to_pandas()
        for f in [f for f in new if not f.may_hold(missing)]:  # other models' files, from the log: not opened
            for m in missing:
                self._rows[(f.path, m)] = empty
        new = [f for f in new if f.may_hold(missing)]
        if new:
            flt = ds.field("model_id").isin(missing) if len(missing) != 1 else \
                ds.field("model_id") == missing[0]  # other models' files skipped from their statistics
            read = table.dataset(new, DONE).to_table(filter=flt, columns=schemas.DONE.names + ["__filename"])
            read = read.to_pandas()
            groups = dict(tuple(read.groupby(["__filename", "model_id"], sort=False))) if len(read) else {}
            empty = read.iloc[0:0].drop(columns="__filename")
            for f in new:
                for m in missing:
                    part = groups.get((table.full_path(f.path), m))
                    self._rows[(f.path, m)] = part.drop(columns="__filename") if part is not None else empty
        live = {f.path for f in files}
        for key in [k for k in self._rows if k[0] not in live]:
            del self._rows[key]  # removed from the table: never live again
        parts = [self._rows[(f.path, m)] for f in files for m in models]
        parts = [p for p in parts if len(p)]
        if not parts:
            out = schemas.DONE.empty_table().to_pandas()
        else:
            out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
        return out[columns] if columns is not None else out


def committed_flushes(table: ResultsTable, dt: DeltaTable | None) -> dict[tuple[str, int], int]:
    """(run, commit number) -> done rows of every flush live in a snapshot: from the names of
    the flushes' own done files (and their row counts in the log), and from the ``run_id`` and
    ``commit_seq`` columns of the files compaction or a replacement wrote (-1: not known)."""
    out: Counter = Counter()
    others = []
    for f in ResultsTable.files(dt, DONE):
        if m := DONE_NAME.match(f.path.rsplit("/", 1)[-1]):
            out[(m["run"], int(m["seq"]))] += f.rows
        else:
            others.append(f)
    if others:
        rows = table.dataset(others, DONE).to_table(columns=["run_id", "commit_seq"])
        for run, seq in zip(rows.column("run_id").to_pylist(), rows.column("commit_seq").to_pylist()):
            out[(run, -1 if seq is None else seq)] += 1
    return dict(out)


def _rewrites(table: ResultsTable, dt: DeltaTable, keys: set[tuple], sites: set) -> tuple[list, list[ResultFile]]:
    """Files holding rows of ``keys`` (recording, model, settings, run): each written again
    without them (adds) and removed (removes). Detection files are searched in ``sites`` only."""
    adds, removes = [], []
    if not keys:
        return adds, removes
    ids = sorted({k[0] for k in keys})
    for kind in (DONE, DETECTION, EMBEDDING):
        files = ResultsTable.files(dt, kind)
        if kind != DONE:
            files = [f for f in files if f.site in sites]
        if not files:
            continue
        dataset = table.dataset(files, kind)
        flt = ds.field("recording_id").isin(ids)
        for f, fragment in zip(files, dataset.get_fragments()):
            if not fragment.to_table(columns=["recording_id"], filter=flt).num_rows:
                continue
            data = fragment.to_table(schema=fragment.physical_schema)
            mask = [tuple(k) not in keys for k in zip(*(data.column(c).to_pylist() for c in KEY))]
            if all(mask):
                continue
            kept = data.filter(pa.array(mask))
            removes.append(f)
            if kept.num_rows:
                schema = FILE_SCHEMAS[kind]
                adds.append(table.write_file(kept.select(schema.names).cast(schema), kind, f.site, "rewrite"))
    return adds, removes


def commit_flush(table: ResultsTable, run_id: str, seq: int, flush: Flush, replace: bool,
                 snap: DeltaTable | None = None, done_files: DoneFiles | None = None) -> Committed:
    """Commit ``flush`` as one transaction (see ``Store.commit`` for what it replaces); ``snap``:
    a snapshot of the table to bring up to date and build it on (``ResultsTable.transact``);
    ``done_files``: the done rows read by the caller's earlier commits (``DoneFiles``)."""

    embeddings = flush.embeddings

    def attempt(dt: DeltaTable):
        done, detections, vectors = flush.done, flush.detections, embeddings
        if vectors is not None and vectors.num_rows and table.add_embedding_columns(dt):
            return None  # the table's log now declares the embedding columns: read it again
        ids = set(done.column("recording_id").to_pylist())
        paths = {p for p in done.column("path").to_pylist() if p}
        # only the flush's models' rows can clash or go out of date (see out_of_date): a done
        # file of other models is skipped from the log's statistics (or, written before they
        # were kept, from its footer's), its rows never read
        models = sorted(set(done.column("model_id").to_pylist()))
        if done_files is not None:
            existing = done_files.rows(table, dt, models, KEY + ["path", "site"])
            existing = existing.loc[existing["recording_id"].isin(ids) | existing["path"].isin(paths)]
        else:
            of_models = ds.field("model_id").isin(models) if len(models) != 1 else ds.field("model_id") == models[0]
            existing = done_rows(table, dt, (ds.field("recording_id").isin(list(ids)) |
                                             ds.field("path").isin(list(paths))) & of_models, KEY + ["path", "site"],
                                 models)
        keys = set(zip(done.column("model_id").to_pylist(), done.column("settings_hash").to_pylist()))
        mine = [(m, k) in keys and r in ids for r, m, k in
                zip(existing["recording_id"], existing["model_id"], existing["settings_hash"])]
        already = existing.loc[pd.Series(mine, index=existing.index, dtype=bool)]
        if len(already) and not replace:
            # drop only the work keys (recording, model, settings) committed meanwhile: one
            # flush may hold several models' rows of a recording
            clash = set(zip(already["recording_id"], already["model_id"], already["settings_hash"]))
            done = done.filter(pa.array(keys_not_in(done, clash), type=pa.bool_()))
            detections = detections.filter(pa.array(keys_not_in(detections, clash), type=pa.bool_()))
            if vectors is not None:
                vectors = vectors.filter(pa.array(keys_not_in(vectors, clash), type=pa.bool_()))
            already = already.iloc[0:0]
        if done.num_rows == 0:
            return Committed(done, 0)
        stale = out_of_date(existing, done)
        old = pd.concat([already, stale])
        old_keys = {tuple(k) for k in old[KEY].itertuples(index=False, name=None)}
        adds, removes = _rewrites(table, dt, old_keys, set(old["site"].fillna("unknown")) | set(old["site"].dropna()))
        try:
            adds += _new_files(table, run_id, seq, detections, done, vectors)
        except BaseException:
            table.delete_files(adds)
            raise
        details = {"run_id": run_id, "models": ",".join(sorted(set(done.column("model_id").to_pylist()))),
                   "recordings": len(set(done.column("recording_id").to_pylist())), "detections": detections.num_rows}
        if table.commit(dt, adds, removes, "commit", details=details):
            return Committed(done, len(stale))
        return None

    return table.transact(attempt, snap=snap)


def _by_site_and_date(rows: pa.Table) -> list[tuple[str | None, str | None, pa.Table]]:
    """(site, date, rows without the site column) per site and UTC day, in a stable order."""
    if not rows.num_rows:
        return []
    groups = rows.select(["site", "date"]).group_by(["site", "date"], use_threads=False).aggregate([])
    out = []
    for site, day in sorted(zip(groups.column("site").to_pylist(), groups.column("date").to_pylist()),
                            key=lambda k: (k[0] is None, k[0] or "", k[1] is None, k[1] or "")):
        mask = pc.and_(_same(rows.column("site"), site), _same(rows.column("date"), day))
        out.append((site, day, rows.filter(mask).drop_columns(["site"])))
    return out


def _same(column: pa.ChunkedArray, value: str | None) -> pa.ChunkedArray:
    return pc.is_null(column) if value is None else pc.fill_null(pc.equal(column, value), False)


def _new_files(table: ResultsTable, run_id: str, seq: int, detections: pa.Table, done: pa.Table,
               embeddings: pa.Table | None = None) -> list:
    """One file per site and UTC day of detections and embeddings (pruning by date needs no
    more before compaction merges a month), one done file per site; done rows get ``seq``."""
    adds = []
    try:
        if detections.num_rows:
            frame = detections.to_pandas()
            for (site, _day), group in frame.groupby(["site", "date"], sort=True, dropna=False):
                part = pa.Table.from_pandas(group.drop(columns=["site"]), schema=FILE_SCHEMAS[DETECTION],
                                            preserve_index=False)
                adds.append(table.write_file(part, DETECTION, site, f"part-{run_id}-{seq:05d}"))
        # embeddings stay Arrow (no pandas round trip of a million binary values)
        for site, _day, part in _by_site_and_date(embeddings if embeddings is not None else pa.table({})):
            adds.append(table.write_file(part.select(FILE_SCHEMAS[EMBEDDING].names).cast(FILE_SCHEMAS[EMBEDDING]),
                                         EMBEDDING, site, f"emb-{run_id}-{seq:05d}"))
        frame = done.to_pandas().assign(commit_seq=seq)
        for site, group in frame.groupby("site", sort=True, dropna=False):
            part = pa.Table.from_pandas(group, schema=FILE_SCHEMAS[DONE], preserve_index=False)
            adds.append(table.write_file(part, DONE, site, f"done-{run_id}-{seq:05d}"))
    except BaseException:
        table.delete_files(adds)
        raise
    return adds


def retire_recordings(table: ResultsTable, ids: list[str]) -> int:
    """Remove every model's rows of these recordings in one transaction; the done rows removed."""

    def attempt(dt: DeltaTable):
        old = done_rows(table, dt, ds.field("recording_id").isin(ids), KEY + ["site"])
        if old.empty:
            return 0
        keys = {tuple(k) for k in old[KEY].itertuples(index=False, name=None)}
        sites = set(old["site"].fillna("unknown")) | set(old["site"].dropna())
        adds, removes = _rewrites(table, dt, keys, sites)
        return len(old) if table.commit(dt, adds, removes, "retire") else None

    return table.transact(attempt)
