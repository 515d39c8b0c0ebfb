"""Commands over the detection store: summarize, report, query, sql, export, review, review-import."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import typer
from rich.table import Table

from pam.analysis.csv_times import with_iso_times
from pam.cli.app import ConfigOpt, StoreArg, app, console, err, existing_store, fail, store_config, time_texts
from pam.config import ConfigError
from pam.store.store import Store

SpeciesOpt = typer.Option(None, "--species", help="species: its label, scientific or common name (any letter case); "
                                                   "repeat for several")
SiteOpt = typer.Option(None, "--site", help="site; repeat for several")
StartOpt = typer.Option(None, "--start", help="from this UTC date or date-time (YYYY-MM-DD[THH:MM])")
EndOpt = typer.Option(None, "--end", help="to this UTC date (whole day included) or date-time (excluded)")
MinScoreOpt = typer.Option(None, "--min-score", min=0.0, max=1.0, help="only detections scoring at least this")
ModelOpt = typer.Option(None, "--model", help="only this model id")


AsOfOpt = typer.Option(None, "--as-of", help="read the results table as it was: a version number (see `pam store "
                                            "history`) or a UTC date-time such as 2024-05-02T06:00")


def _store_at(path: str, as_of: Optional[str]) -> Store:
    """The store, pinned to one version of its results table when ``--as-of`` is given."""
    st = existing_store(path)
    if as_of is None:
        return st
    try:
        return st.at(as_of)
    except ValueError as exc:
        fail(str(exc))


def _errors():
    from pam.store.query import QueryError
    from pam.analysis.review import ReviewError

    return (QueryError, ReviewError, ConfigError, ValueError, KeyError)


def _notes(notes: list[str]) -> None:
    for n in notes:
        err.print(f"[yellow]note:[/yellow] {n}", highlight=False, soft_wrap=True)


def _write_frame(frame: pd.DataFrame, out: Path, fmt: Optional[str]) -> None:
    kind = (fmt or out.suffix.lstrip(".")).lower()
    out.parent.mkdir(parents=True, exist_ok=True)
    if kind == "csv":
        with_iso_times(frame).to_csv(out, index=False)
    elif kind in ("parquet", "pq"):
        frame.to_parquet(out, index=False)
    else:
        fail(f"{out}: cannot tell the format; end the name in .csv or .parquet, or pass --format")


def _print_frame(frame: pd.DataFrame, title: str | None = None) -> None:
    table = Table(title=title)
    for col in frame.columns:
        table.add_column(str(col), justify="right" if pd.api.types.is_numeric_dtype(frame[col]) else "left",
                         overflow="fold")
    # times keep their fractions of a second (a window at 05:00:01.5 is not at 05:00:01), and
    # numbers their decimals (3601.5 s into a file is not 3602)
    texts = {i: time_texts(frame[col]) for i, col in enumerate(frame.columns)
             if pd.api.types.is_datetime64_any_dtype(frame[col])}
    texts.update({i: _float_texts(frame[col]) for i, col in enumerate(frame.columns)
                  if pd.api.types.is_float_dtype(frame[col])})
    for n, row in enumerate(frame.itertuples(index=False)):
        cells = []
        for i, v in enumerate(row):
            if i in texts:
                cells.append(texts[i][n])
            elif v is None or (isinstance(v, float) and pd.isna(v)):
                cells.append("")
            elif isinstance(v, float):
                cells.append(f"{v:.4g}")
            elif isinstance(v, pd.Timestamp):
                cells.append(time_texts(pd.Series([v]))[0])
            else:
                cells.append(str(v))
        table.add_row(*cells)
    console.print(table)


def _float_texts(values: pd.Series) -> list[str]:
    """A float column with the decimals (0 to 4) its values need, the same for every row."""
    finite = values.to_numpy(dtype="float64", na_value=np.nan)
    finite = finite[np.isfinite(finite)]
    if ((finite != 0) & (np.abs(finite) < 1e-3)).any():  # tiny values: significant digits, not decimals
        return ["" if pd.isna(v) else f"{v:.4g}" for v in values]
    digits = next((d for d in range(4) if np.allclose(np.round(finite, d), finite, rtol=0, atol=1e-6)), 4)
    return ["" if pd.isna(v) else f"{v:.{digits}f}" for v in values]


@app.command()
def summarize(
    store: str = StoreArg,
    config: Optional[Path] = ConfigOpt,
    min_score: Optional[float] = MinScoreOpt,
    model: Optional[str] = ModelOpt,
    period_days: Optional[int] = typer.Option(None, "--period-days", min=1, help="occupancy survey period (days)"),
    full: bool = typer.Option(False, "--full", help="recount everything instead of only the days that changed"),
) -> None:
    """Bring the summary tables up to date (only the days with new detections are recounted)."""
    from pam.analysis.summaries import summarize as run_summaries

    st = existing_store(store)
    conf = store_config(config, store)
    try:
        res = run_summaries(st, conf, min_score=min_score, model_id=model, period_days=period_days, full=full)
    except _errors() as exc:
        fail(str(exc))
        return
    how = "full recount" if res.full else f"incremental: {res.new_done_files} new done file(s)"
    folder = st.location.uri_of("summaries") if st.remote else res.folder
    console.print(f"summaries written to {folder} ({how}, {res.recounted_days} site-days counted)",
                  highlight=False, soft_wrap=True)
    _notes(res.notes)
    rich = res.tables["site_richness"]
    if len(rich):
        shown = rich.drop(columns=["species_list"]).round({"recorded_h": 2, "analysed_h": 2})
        _print_frame(shown.head(30), title="sites: effort and richness")


@app.command()
def report(
    store: str = StoreArg,
    out: Path = typer.Option(..., "--out", "-o", help="folder for report.html"),
    config: Optional[Path] = ConfigOpt,
    min_score: Optional[float] = MinScoreOpt,
    model: Optional[str] = ModelOpt,
    period_days: Optional[int] = typer.Option(None, "--period-days", min=1),
    top: int = typer.Option(12, "--top", min=1, help="species drawn in the figures (most detections first); the "
                                                     "tables list every species"),
) -> None:
    """Write a self-contained HTML report (figures inline, no network needed) of the summaries."""
    from pam.analysis.report import build_report

    st = existing_store(store)  # on object storage too: the report is written to --out, a folder here
    conf = store_config(config, store)
    try:
        rep = build_report(st, out, conf, top=top, min_score=min_score, model_id=model,
                           period_days=period_days)
    except _errors() as exc:
        fail(str(exc))
        return
    _notes(rep.notes)
    console.print(f"report written to {rep.html_path} ({rep.figures} figures)", highlight=False, soft_wrap=True)


@app.command()
def query(
    store: str = StoreArg,
    species: Optional[list[str]] = SpeciesOpt,
    site: Optional[list[str]] = SiteOpt,
    start: Optional[str] = StartOpt,
    end: Optional[str] = EndOpt,
    min_score: Optional[float] = MinScoreOpt,
    model: Optional[str] = ModelOpt,
    limit: Optional[int] = typer.Option(None, "--limit", min=0, help="at most this many rows (earliest first)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write all rows to .csv or .parquet"),
    fmt: Optional[str] = typer.Option(None, "--format", help="table | csv | parquet (default: from --out)"),
    events: bool = typer.Option(False, "--events", help="one row per event (a call: overlapping windows of one "
                                                        "species joined) instead of one per window; --min-score "
                                                        "then applies to each event's peak"),
    as_of: Optional[str] = AsOfOpt,
) -> None:
    """Detections by species, site, time, score and model; reads only the files that can match."""
    from pam.analysis.events import query_events
    from pam.store.query import query_detections

    st = _store_at(store, as_of)
    try:
        read = query_events if events else query_detections
        res = read(st, species=species, sites=site, start=start, end=end, min_score=min_score, model_id=model,
                   limit=limit)
    except _errors() as exc:
        fail(str(exc))
        return
    _notes(res.notes)
    if out is not None and fmt != "table":
        _write_frame(res.rows, out, fmt)
        what = ("event" if events else "detection") + "s" * (len(res.rows) != 1)
        console.print(f"{len(res.rows)} {what} written to {out}", highlight=False, soft_wrap=True)
        return
    shown = res.rows.head(limit if limit is not None else 50)
    if len(shown):
        frame = shown.assign(file=shown["path"].map(lambda p: Path(p).name))
        if events:  # narrower: the span in one column, the model only when there are several
            bounds = _float_texts(pd.concat([frame["start_s"], frame["end_s"]], ignore_index=True))
            span = [f"{a}-{b}" for a, b in zip(bounds[:len(frame)], bounds[len(frame):])]
            cols = ["site", "start_time", "file", "seconds", "label", "peak_score", "n_windows"]
            frame = frame.assign(seconds=span)[cols + ["model_id"] * (frame["model_id"].nunique() > 1)].rename(
                columns={"start_time": "start (UTC)", "peak_score": "peak", "n_windows": "windows"})
        else:
            frame = frame[["site", "start_time", "file", "start_s", "label", "score", "model_id"]].rename(
                columns={"start_time": "start (UTC)", "start_s": "at (s)"})
        _print_frame(frame)
    more = res.total - len(shown)
    found = (f"{res.total} event{'s' * (res.total != 1)} ({res.windows} detection windows)" if events
             else f"{res.total} detection{'s' * (res.total != 1)}")
    console.print(f"{found} match{'es' * (res.total == 1)} ({len(res.files)} files read)"
                  + (f"; {more} not shown, use --out FILE or --limit" if more > 0 else ""), highlight=False, soft_wrap=True)


@app.command()
def sql(
    store: str = StoreArg,
    statement: str = typer.Argument(..., help="SQL over views detections, recordings, done, runs, verified, "
                                              "and every summary (daily_counts, site_days, diel, occupancy, ...)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the result to .csv or .parquet"),
    show: int = typer.Option(50, "--show", help="rows to print (to a terminal; piped output is every row as CSV)"),
    as_of: Optional[str] = AsOfOpt,
) -> None:
    """Run SQL (DuckDB) over the store: detections and done from one version of the results table."""
    from pam.store.query import run_sql

    st = _store_at(store, as_of)
    try:
        frame = run_sql(st, statement)
    except _errors() as exc:
        fail(str(exc))
        return
    if out is not None:
        _write_frame(frame, out, None)
        console.print(f"{len(frame)} rows written to {out}", highlight=False, soft_wrap=True)
        return
    if not console.is_terminal:
        # piped or redirected: every row as CSV, for the next program (a table would wrap at 80 columns)
        with_iso_times(frame).to_csv(sys.stdout, index=False)
        return
    _print_frame(frame.head(show))
    if len(frame) > show:
        console.print(f"{len(frame) - show} more rows; use --out FILE", highlight=False, soft_wrap=True)


@app.command()
def export(
    store: str = StoreArg,
    fmt: str = typer.Option(..., "--format", help="raven | audacity | csv"),
    out: Path = typer.Option(..., "--out", "-o", help="folder to write to (csv: or a .csv file name)"),
    species: Optional[list[str]] = SpeciesOpt,
    site: Optional[list[str]] = SiteOpt,
    start: Optional[str] = StartOpt,
    end: Optional[str] = EndOpt,
    min_score: Optional[float] = MinScoreOpt,
    model: Optional[str] = ModelOpt,
    events: Optional[bool] = typer.Option(None, "--events/--windows",
                                          help="one box (row) per event, overlapping windows of a call joined, or "
                                               "one per detection window [default: raven and audacity --events, "
                                               "csv --windows]"),
    merge: bool = typer.Option(False, "--merge", hidden=True, help="the same as --events (the old name)"),
    low_freq: Optional[float] = typer.Option(None, "--low-freq", help="Raven Low Freq (Hz); default 0"),
    high_freq: Optional[float] = typer.Option(None, "--high-freq", help="Raven High Freq (Hz); default Nyquist"),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Selection tables (Raven Pro), label tracks (Audacity) or CSV, to check detections by ear."""
    from pam.analysis.export import export_detections

    st = existing_store(store)
    conf = store_config(config, store)
    try:
        res = export_detections(st, out, fmt, conf, species=species, sites=site, start=start,
                                end=end, min_score=min_score, model_id=model, low_hz=low_freq, high_hz=high_freq,
                                events=True if merge else events)
    except _errors() as exc:
        fail(str(exc))
        return
    _notes(res.notes)
    what = "events (overlapping windows of a call joined)" if res.events else "detection windows"
    console.print(f"{res.detections} {what} in {len(res.files)} file(s) under {res.folder}", highlight=False,
                  soft_wrap=True)


@app.command()
def review(
    store: str = StoreArg,
    out: Path = typer.Option(..., "--out", "-o", help="folder for clips/ and review.csv"),
    species: Optional[list[str]] = SpeciesOpt,
    n: int = typer.Option(50, "--n", min=1, help="events (clips) per species"),
    strategy: str = typer.Option("random", "--strategy", help="random | top (highest peak scores)"),
    seed: int = typer.Option(0, "--seed"),
    pad: float = typer.Option(1.0, "--pad", min=0.0, help="seconds of context before and after the event"),
    site: Optional[list[str]] = SiteOpt,
    start: Optional[str] = StartOpt,
    end: Optional[str] = EndOpt,
    min_score: Optional[float] = MinScoreOpt,
    model: Optional[str] = ModelOpt,
    listing: Optional[Path] = typer.Option(None, "--from", help="cut clips of the windows this CSV lists (written by "
                                                                 "`pam similar --out`) instead of sampling detections"),
) -> None:
    """Cut a sample of events (calls) per species to WAV clips, with a review.csv to fill in."""
    from pam.analysis.review import make_review, make_review_from

    st = existing_store(store)
    try:
        if listing is not None:
            res = make_review_from(st, out, listing, pad_s=pad)
        else:
            res = make_review(st, out, species=species, n=n, strategy=strategy, seed=seed, pad_s=pad,
                              min_score=min_score, model_id=model, sites=site, start=start, end=end)
    except _errors() as exc:
        fail(str(exc))
        return
    _notes(res.notes)
    console.print(f"{res.clips} clips; fill in the verdict column (true / false / unsure) of {res.csv}, "
                  f"then: pam review-import {store} {res.csv}", highlight=False, soft_wrap=True)


@app.command("review-import")
def review_import(
    store: str = StoreArg,
    csv: Path = typer.Argument(..., help="filled-in review.csv"),
    labels_out: Optional[Path] = typer.Option(None, "--labels-out", help="also write the training clip table here"),
) -> None:
    """Import a filled-in review CSV as verified labels (precision in the summaries, training labels)."""
    from pam.analysis.review import import_review, write_training_labels

    st = existing_store(store, local_for="pam review-import")
    try:
        rows, written = import_review(st, csv)
    except _errors() as exc:
        fail(str(exc))
        return
    if written is None:
        console.print(f"{csv}: no verdicts filled in yet; nothing imported", highlight=False, soft_wrap=True)
        return
    counts = rows["verdict"].value_counts().to_dict()
    labels, n_clips = write_training_labels(st)
    if labels_out is not None:
        write_training_labels(st, labels_out)
    console.print(f"{len(rows)} verdicts imported to {written} ({', '.join(f'{v} {k}' for k, v in counts.items())}); "
                  f"training clip table with {n_clips} clips: {labels_out or labels}; `pam summarize {store}` "
                  "updates the precision table", highlight=False, soft_wrap=True)
