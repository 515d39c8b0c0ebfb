"""Commands of the detection path: scan, detect, runs."""

from __future__ import annotations

import functools
import operator
from pathlib import Path
from typing import Optional

import pyarrow as pa
import typer
from rich.table import Table

from pam.cli.app import (ConfigOpt, StoreArg, StoreOpt, app, console, counted, err, existing_store, fail, reach_store,
                         store_config, time_texts)
from pam.cli.console_log import pam_warnings_apart
from pam.config import ConfigError, PamConfig
from pam.io.preflight import check_scan_inputs
from pam.ops.prefect_server import PrefectServerError, quiet_prefect_defaults
from pam.store.runs import run_model_keys, run_model_settings
from pam.store.species import common_name
from pam.store.store import Store, StoreBusy


@app.command()
def scan(
    dumps: list[Path] = typer.Argument(..., help="recorder dump folders"),
    store: str = StoreOpt,
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Scan dumps into the store's manifest (incremental; never writes into the dumps)."""
    from pam.ops.pipeline import check_config_sites, scan_stage

    conf = store_config(config, store)
    st = reach_store(store)
    try:
        check_scan_inputs(dumps, st)  # before anything is created
    except ConfigError as exc:
        fail(str(exc))
    failed, listed, unscanned = False, [], []
    with pam_warnings_apart() as warnings:
        for d in dumps:
            s = scan_stage(d, st, conf)
            if s.error:
                err.print(f"[red]error:[/red] {s.error}", highlight=False)
                failed = True
                unscanned.append(s.error)
                continue
            console.print(f"{s.dump}: {s.files} files, {s.usable} usable, {s.reopened} opened, "
                          f"{s.pending} left for later", highlight=False, soft_wrap=True)
            for p in s.problems:
                console.print(f"  {p['path']}: {p['reason']} ({p['status']})", highlight=False, soft_wrap=True)
            listed += s.problems
        check_config_sites(st, conf)
    _print_warnings(warnings.messages, listed, unscanned)
    if failed:
        raise typer.Exit(1)


@app.command()
def detect(
    dumps: list[Path] = typer.Argument(..., help="recorder dump folders"),
    store: str = StoreOpt,
    model: Optional[list[str]] = typer.Option(None, "--model", "-m",
                                              help="a checkpoint, an ONNX file with its card, or a model's short "
                                                   "name; repeat for several models; default: the bundled model"),
    config: Optional[Path] = ConfigOpt,
    device: Optional[str] = typer.Option(None, "--device",
                                         help="auto | cpu | cuda | cuda:N; several, comma-separated "
                                              "(cuda:0,cuda:1): one worker process per device"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="windows per batch"),
    workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader workers"),
    force: bool = typer.Option(False, "--force", help="redo recordings already done with these models and settings"),
    prefect: bool = typer.Option(True, "--prefect/--no-prefect",
                                 help="run as the Prefect nightly flow (default) or directly in this process"),
    show: int = typer.Option(20, "--show", help="events (calls: overlapping windows joined) to print (0: none)"),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="also show the run's INFO log (Prefect's, or pam's with --no-prefect)"),
) -> None:
    """Scan, detect and summarise: the nightly job on the given dumps."""
    # one --model is the config's model; several are its models (either replaces the config's)
    chosen = {"model": model[0], "models": []} if model and len(model) == 1 else \
        {"model": "", "models": list(model)} if model else {}
    # one --device is detect.device (and clears the config's device list); a comma list is detect.devices
    devices = [d.strip() for d in device.split(",")] if device is not None else None
    conf = store_config(config, store, **chosen, **{
        "detect.device": devices[0] if devices and len(devices) == 1 else None,
        "detect.devices": devices if devices is None or len(devices) > 1 else [],
        "detect.batch_size": batch_size, "detect.num_workers": workers})
    st = reach_store(store)
    # Arguments are checked before Prefect starts or anything is created: a mistyped path or a
    # bad model costs seconds, not a run recorded in a new store.
    try:
        check_scan_inputs(dumps, st)
    except ConfigError as exc:
        fail(str(exc))
    from pam.detect.checkpoint import ModelError  # imports torch: only for this command, not for every `pam ...`
    from pam.ops.pipeline import check_detect_settings

    try:
        check_detect_settings(conf, prefect=prefect)
        if prefect:
            from pam.ops.agile import plan_agile

            plan_agile(st, conf)  # heads not registered or of other models: one line before Prefect starts
            report, scans = _run_flow(dumps, st, conf, force, verbose)
        else:
            report, scans = _run_direct(dumps, st, conf, force, verbose)
    except (ConfigError, ModelError, StoreBusy) as exc:
        fail(str(exc))
        return
    except PrefectServerError as exc:
        fail(str(exc), code=1)
        return
    unscanned = [s["error"] for s in scans if s["error"]]
    # a dump that could not be scanned is one error line at the end, not a problem file as well
    problems = [p for s in scans if not s["error"] for p in s["problems"]]
    listed = problems + [f for f in report["failures"] if f["stage"] in ("detect", "shard")]
    _print_problems(listed)
    _print_warnings(report["warnings"], listed, unscanned)
    speed = (f" ({report['audio_s'] / 3600:.2f} h audio at {report['speed']:.0f}x real time)"
             if report["recordings_done"] else "")
    console.print(
        f"run {report['run_id']}: {counted(report['recordings_done'], 'recording')} scored{speed}, "
        f"{report['recordings_skipped']} already done, {report['recordings_failed']} failed, "
        f"{report['detections']} new detections", highlight=False, soft_wrap=True,
    )
    for head in report.get("heads", []):  # the nightly agile stage (config agile.heads)
        if head.get("error"):
            console.print(f"head {head['head_id']}: not applied ({head['error']}); the next run applies it",
                          highlight=False, soft_wrap=True)
        else:
            console.print(f"head {head['head_id']}: {counted(head['recordings_done'], 'recording')} scored "
                          f"({head['windows']} windows), {head['detections']} new detections",
                          highlight=False, soft_wrap=True)
    if report.get("failure_report"):
        console.print(f"failed and skipped files per site: {report['failure_report']}", highlight=False,
                      soft_wrap=True)
    if show:
        _print_detections(st, dumps, report["run_id"], report["model_id"], report["settings_hash"], show)
    html = st.reports_dir / "report.html"
    if not st.remote and html.is_file():  # the nightly run writes no HTML report on object storage
        console.print(f"report: {html} (summaries, figures and the species table; pam report to redo it)",
                      highlight=False, soft_wrap=True)
    # Exit 1 (for cron and schedulers) when a dump could not be read at all, or when recordings
    # failed and none could be analysed; a few bad files among good ones are reported, not fatal.
    for line in unscanned:  # the scan's message names the dump already
        err.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)
    if unscanned or (report["recordings_failed"] and not report["recordings_done"]):
        raise typer.Exit(1)


def _run_flow(dumps: list[Path], st: Store, conf: PamConfig, force: bool, verbose: bool) -> tuple[dict, list[dict]]:
    """The nightly Prefect flow in this process; Prefect's INFO lines only when ``verbose``."""
    quiet_prefect_defaults()
    from flows.nightly import nightly  # imports Prefect, which sets up its logging
    from pam.cli.console_log import prefect_console
    from pam.ops.prefect_server import api_configured, prefect_api

    if not api_configured():
        err.print("starting a local Prefect server for this run (10-20 s; PREFECT_API_URL unset)"
                  + ("" if verbose else "; --verbose shows Prefect's log"), highlight=False, soft_wrap=True)
    with prefect_console(verbose), pam_warnings_apart(hide=not verbose) as warnings:
        with prefect_api():  # a server tied to this process, so a kill -9 leaves none behind
            result = nightly([str(d) for d in dumps], st.uri, conf.model_dump(mode="json"), force)
    if result.get("busy"):
        raise StoreBusy(result["busy"])
    return {**result["detect"], "warnings": warnings.messages, "heads": result["heads"]}, result["scans"]


def _run_direct(dumps: list[Path], st: Store, conf: PamConfig, force: bool, verbose: bool) -> tuple[dict, list[dict]]:
    """The same stages without Prefect; pam's INFO lines only when ``verbose``."""
    from contextlib import ExitStack
    from dataclasses import asdict

    from pam.cli.console_log import pam_info_to_stderr
    from pam.ops.pipeline import run_nightly

    quiet_prefect_defaults()  # the summary step looks for a Prefect run to attach its artifacts to
    with ExitStack() as stack:
        warnings = stack.enter_context(pam_warnings_apart())
        if verbose:
            stack.enter_context(pam_info_to_stderr())
        night = run_nightly([str(d) for d in dumps], st, conf, force=force)
    rep = night.report
    report = {**asdict(rep), "recordings_failed": rep.recordings_failed, "speed": rep.speed,
              "warnings": warnings.messages, "heads": night.heads}
    return report, [asdict(s) for s in night.scans]


def _print_warnings(messages: list[str], listed: list[dict], errors: list[str]) -> None:
    """pam's warnings of the run, less those about a file listed already or an error printed at the end."""
    paths = {p["path"] for p in listed}

    def about_listed_file(m: str) -> bool:
        cut = m.find(": ")
        while cut > 0:
            if m[:cut] in paths:
                return True
            cut = m.find(": ", cut + 1)
        return False

    shown = [m for m in messages if m not in errors and not about_listed_file(m)]
    if shown:
        console.print("[yellow]warnings:[/yellow]")
        for m in shown:
            console.print(f"  {m}", highlight=False, soft_wrap=True, markup=False)


def _print_problems(problems: list[dict]) -> None:
    if not problems:
        return
    console.print(f"[yellow]{len(problems)} file(s) with problems (see the manifest and runs tables):[/yellow]")
    for p in problems:
        console.print(f"  {p['path']}: {p['reason']}", highlight=False, soft_wrap=True)


def _print_detections(st: Store, dumps: list[Path], run_id: str, model_id: str, key: str, limit: int) -> None:
    """The dumps' detections by this model and settings, as events (overlapping windows of a call
    joined), grouped by file, compact enough for an 80-column terminal."""
    import pyarrow.dataset as pads

    from pam.analysis.events import detection_events
    from pam.ops.pipeline import recordings_in

    recordings = recordings_in(st, [str(d) for d in dumps])
    if recordings.empty:
        console.print("no recordings in these dumps")
        return
    sites = {s for s in recordings["site"] if isinstance(s, str)}
    dataset = st.detections_dataset(st.detection_files(sites=sites))
    keys = run_model_keys(model_id, key)
    by_model = functools.reduce(operator.or_, [(pads.field("model_id") == m) & (pads.field("settings_hash") == k)
                                               for m, k in keys])
    wanted = by_model & pads.field("recording_id").isin(pa.array(list(recordings["recording_id"]), pa.string()))
    det = dataset.to_table(filter=wanted).to_pandas()
    if det.empty:
        console.print("no detections in these dumps")
        return
    events = detection_events(det)
    windows = _windows_text(st, run_id)
    console.print(f"{len(det)} detections in {len(events)} event{'s' * (len(events) != 1)} in these dumps"
                  f"{f' ({windows})' if windows else ''}; model {model_id}; times UTC:", highlight=False,
                  soft_wrap=True)
    shown = events.head(limit)
    times = time_texts(shown["start_time"])
    width = max(len(t) for t in times)
    for path, rows in shown.groupby("path", sort=False):
        first = rows.iloc[0]
        console.print(f"  [bold]{first['site']}[/bold]  {Path(path).name}", highlight=False)
        for i, r in zip(rows.index, rows.itertuples(index=False)):
            when = (times[i] or "time unknown").ljust(width)
            span = f"{r.start_s:.1f}-{r.end_s:.1f} s"
            console.print(f"    {when}  {span:>15}  {common_name(r.label)}  {r.peak_score:.3f}  "
                          f"{r.n_windows} window{'s' * (r.n_windows != 1)}", highlight=False, soft_wrap=True)
    if len(events) > limit:
        console.print(f"  ... {len(events) - limit} more events (--show N for more; pam query {st.uri} --events "
                      "for all)", highlight=False)


def _windows_text(st: Store, run_id: str) -> str:
    """How the run's windows lie, e.g. 'windows overlap: 3 s every 1.5 s'; '' when the run row is missing."""
    runs = st.read_runs()
    row = runs[runs["run_id"] == run_id]
    if row.empty:
        return ""
    texts = []
    for settings in run_model_settings(row["model_id"].iloc[0], row["config_json"].iloc[0]).values():
        try:
            window_s, hop_s = float(settings["window_s"]), float(settings["hop_s"])
        except (KeyError, TypeError, ValueError):
            continue
        how = "overlap" if hop_s < window_s else "touch" if hop_s == window_s else "do not touch"
        text = f"windows {how}: {window_s:g} s every {hop_s:g} s"
        texts += [text] if text not in texts else []
    return "; ".join(texts)


@app.command()
def runs(store: str = StoreArg, limit: int = typer.Option(20, "--limit")) -> None:
    """List the runs recorded in a store, newest first."""
    st = existing_store(store)
    frame = st.read_runs().sort_values("started_at", ascending=False).head(limit)
    # A run that never finished (killed, power cut) has no counts in its row; what it committed
    # is in the done table. It is "interrupted" unless it still holds the store's run lock.
    unfinished = frame.loc[frame["status"] == "running", "run_id"].tolist()
    committed = (st.done_table(columns=["run_id", "recording_id", "audio_s", "detections"])
                 .query("run_id in @unfinished").groupby("run_id").agg(
                     recordings=("recording_id", "nunique"), audio_s=("audio_s", "sum"), detections=("detections", "sum"))
                 if unfinished else None)
    alive = st.run_lock_holder_alive()
    table = Table()
    for col in ("run", "status", "model", "done/skipped/failed", "detections", "audio h"):
        table.add_column(col, overflow="fold")
    interrupted = 0
    for r in frame.itertuples(index=False):
        done, detections, audio_s, status = r.recordings_done, r.detections, r.audio_s, r.status
        if status == "running":
            if committed is not None and r.run_id in committed.index:
                got = committed.loc[r.run_id]
                done, detections, audio_s = got["recordings"], got["detections"], got["audio_s"]
            if not alive or r.run_id != unfinished[0]:  # only the newest can still hold the lock
                status = "interrupted"
                interrupted += 1
        counts = "/".join(str(_int(v)) for v in (done, r.recordings_skipped, r.recordings_failed))
        audio_h = (audio_s or 0) / 3600 if audio_s == audio_s else 0.0
        table.add_row(r.run_id, status, r.model_id or "", counts, str(_int(detections)), f"{audio_h:.2f}")
    console.print(table)
    if interrupted:
        console.print("interrupted: the run stopped without finishing (what it committed is kept and counted "
                      "here; the next run does the rest)", highlight=False, soft_wrap=True)


def _int(v) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


