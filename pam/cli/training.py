"""Commands of the training path: train, search, evaluate, calibrate, models."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from pam.cli.app import StoreArg, app, console, existing_store, fail, refuse_object_storage
from pam.config import ConfigError

SetOpt = typer.Option(None, "--set", help="override a config key, e.g. --set train.epochs=10 (repeatable)")


def _errors() -> tuple[type[BaseException], ...]:
    from pam.detect.checkpoint import ModelError
    from pam.ops.prefect_server import PrefectServerError
    from pam.train.clips import ClipTableError
    from pam.train.run import RunError
    from pam.train.training_state import ResumeError

    return (ConfigError, ModelError, ClipTableError, RunError, ResumeError, ValueError, FileNotFoundError,
            PrefectServerError)


def _load(config: Path, overrides: list[str] | None):
    from pam.train.config import load_train_config

    try:
        conf = load_train_config(config, overrides or [])
    except ConfigError as exc:
        fail(str(exc))
        raise  # unreachable
    if conf.output.store:  # before any training, not after it
        refuse_object_storage(conf.output.store, "the model registry (pam train with output.store)")
    return conf


def _prefect_env() -> None:
    from pam.ops.prefect_server import quiet_prefect_defaults

    quiet_prefect_defaults()


def _text(v: object) -> str:
    """Table cell for a string column (pandas gives NaN for missing strings)."""
    return v if isinstance(v, str) else ""


def _fmt(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _print_report(report, title: str) -> None:
    table = Table(title=title, box=box.SIMPLE, pad_edge=False, caption="AUC: ROC-AUC; R@P: recall at that precision; thr: threshold; "
                                       "P / R / F1 at the threshold")
    target = float(report["target_precision"].iloc[0])
    for col in ("class", "n", "pos", "AP", "AUC", f"R@P{target:g}", "thr", "P", "R", "F1"):
        table.add_column(col, justify="left" if col == "class" else "right", no_wrap=col != "class",
                         overflow="fold")
    for r in report.to_dict("records"):
        table.add_row(r["class"], str(r["items"]), str(r["positives"]), *(_fmt(r[k]) for k in (
            "ap", "roc_auc", "recall_at_target", "threshold", "precision", "recall", "f1")))
    console.print(table)


@app.command()
def train(
    config: Path = typer.Argument(..., help="training config (see configs/train.yaml)"),
    overrides: Optional[list[str]] = SetOpt,
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="run folder; default: output.dir/<name>-<config hash>"),
    fresh: bool = typer.Option(False, "--fresh", help="discard what the run folder holds and start over"),
    prefect: bool = typer.Option(True, "--prefect/--no-prefect", help="run as the Prefect flow (default) or directly"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bars"),
) -> None:
    """Train, calibrate, evaluate and export a model from labelled data (resumes an interrupted run)."""
    conf = _load(config, overrides)
    folder = str(run_dir or conf.run_dir())
    console.print(f"run folder {folder}", highlight=False)
    try:
        if prefect:
            _prefect_env()
            from flows.train import train_flow
            from pam.ops.prefect_server import prefect_api

            with prefect_api():
                result = train_flow(conf.plain(), folder, fresh, progress)
        else:
            from pam.train.run import run_training

            result = run_training(conf, folder, fresh=fresh, progress=progress,
                                  log=lambda m: console.print(m, highlight=False))
    except _errors() as exc:
        fail(str(exc))
        return
    _print_summary(result)


def _print_summary(result: dict) -> None:
    from pam.train.evaluate import to_markdown  # noqa: F401 - keeps the report format in one place

    t, e, x = result["train"], result["evaluate"], result["export"]
    console.print(f"kept epoch {t['best_epoch']} of {t['epochs_run']}"
                  f"{' (stopped early)' if t['stopped_early'] else ''}; thresholds "
                  f"{json.dumps({k: round(v, 3) for k, v in result['calibrate']['thresholds'].items()})}",
                  highlight=False)
    for split in ("val", "test"):
        if split in e:
            console.print(f"{split} macro AP: {_fmt(e[split]['macro']['ap'])}", highlight=False)
    console.print(f"model {x['model_id']}: {x['path']}", highlight=False)
    if x.get("exported"):
        console.print(f"copied to {x['exported']}", highlight=False)
    console.print(f"report: {Path(result['run_dir']) / 'evaluation' / 'report.md'}; learning curve: "
                  f"{Path(result['run_dir']) / 'learning_curve.png'}", highlight=False)


@app.command()
def search(
    config: Path = typer.Argument(..., help="training config with a search section"),
    overrides: Optional[list[str]] = SetOpt,
    root: Optional[Path] = typer.Option(None, "--dir", help="search folder; default: output.dir/<name>-search-<hash>"),
    prefect: bool = typer.Option(True, "--prefect/--no-prefect", help="run as the Prefect flow (default) or directly"),
) -> None:
    """Hyperparameter search: train every setting of search.space, keep the best by validation."""
    conf = _load(config, overrides)
    try:
        if prefect:
            _prefect_env()
            from flows.train import search as search_flow
            from pam.ops.prefect_server import prefect_api

            with prefect_api():
                result = search_flow(conf.plain(), str(root) if root else None)
            exported = result["export"]
        else:
            from pam.train.run import calibrate_model, evaluate_model, export_model
            from pam.train.search import run_search

            log = lambda m: console.print(m, highlight=False)  # noqa: E731
            result = run_search(conf, root, log=log)
            calibrate_model(result["best"]["run_dir"], log)
            evaluate_model(result["best"]["run_dir"], log)
            exported = export_model(result["best"]["run_dir"], log)
    except _errors() as exc:
        fail(str(exc))
        return
    console.print((Path(result["table"]).parent / "search.md").read_text(), highlight=False, markup=False)
    console.print(f"best: trial {result['best']['trial']} {result['best']['settings_json']}; "
                  f"model {exported['model_id']}: {exported['path']}", highlight=False)


@app.command()
def evaluate(
    data: Path = typer.Argument(..., help="clip table (CSV/Parquet), class folders, or a folder of recordings "
                                          "with Raven selection tables"),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="checkpoint; default: the bundled model"),
    out: Optional[Path] = typer.Option(None, "--out", help="write report.parquet, report.md and per-item scores here"),
    mode: str = typer.Option("auto", "--mode", help="auto | clips | soundscapes (an annotations table scored "
                                                     "as whole recordings)"),
    hop: Optional[float] = typer.Option(None, "--hop", help="window step in s (clips: 0.5; soundscapes: 1.5)"),
    target_precision: float = typer.Option(0.9, "--target-precision", min=0.01, max=1.0),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto"),
) -> None:
    """Per-class AP, ROC-AUC and P/R/F1 at the model's thresholds on labelled clips or soundscapes."""
    from pam.detect.checkpoint import load_checkpoint
    from pam.train.evaluate import evaluate_path, macro_ap, write_report
    from pam.train.fit import resolve_device
    from pam.train.seen import seen_note

    if not data.exists():
        fail(f"{data}: not found")
    try:
        loaded = load_checkpoint(model, device=resolve_device(device))
        report, items, used = evaluate_path(loaded, data, mode, hop, target_precision)
    except _errors() as exc:
        fail(str(exc))
        return
    seen = seen_note(loaded, items, "clips" if used == "clips" else "windows")
    if seen:  # before the table, so that nobody reads the figures without it
        console.print(seen, highlight=False, markup=False, soft_wrap=True)
    _print_report(report, f"{loaded.card.name} ({loaded.model_id}) on {data} ({used})")
    if out:
        paths = write_report(report, out, "report", f"{loaded.card.name} ({loaded.model_id}) on {data}", items,
                             notes=[seen] if seen else None)
        console.print(f"report: {paths['parquet']}, {paths['markdown']}", highlight=False)
    console.print(f"macro AP: {_fmt(macro_ap(report))}", highlight=False)


@app.command()
def calibrate(
    data: Path = typer.Argument(..., help="labelled clips of the deployment site: clip table or class folders"),
    out: Path = typer.Option(..., "--out", help="the recalibrated checkpoint to write"),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="checkpoint; default: the bundled model"),
    target_precision: float = typer.Option(0.9, "--target-precision", min=0.01, max=1.0),
    method: str = typer.Option("precision", "--method", help="precision (best recall at the target) | f1"),
) -> None:
    """New per-class thresholds for a model from labelled clips of the site it will run at."""
    from pam.detect.checkpoint import bundled_model_path
    from pam.train.clips import load_clip_table
    from pam.train.labels import load_class_folders
    from pam.train.run import recalibrate

    if method not in ("precision", "f1"):
        fail(f"--method: got {method!r}; use precision or f1")
    if not data.exists():
        fail(f"{data}: not found")
    try:
        clips = load_clip_table(data) if data.is_file() else load_class_folders(data)
        result = recalibrate(model or bundled_model_path(), clips, out,
                             target_precision if method == "precision" else None,
                             log=lambda m: console.print(m, highlight=False))
    except _errors() as exc:
        fail(str(exc))
        return
    console.print(f"model {result['model_id']} (thresholds from {len(clips)} clips; parent {result['parent_id']}): "
                  f"{result['path']}", highlight=False)


@app.command("export-model")
def export_model(
    model: Optional[Path] = typer.Argument(None, help="checkpoint; default: the bundled model"),
    out: Path = typer.Option(..., "--out", help="the ONNX file to write (its card NAME.card.yaml goes beside it)"),
) -> None:
    """Export a pam checkpoint to ONNX with its card: runs in ONNX Runtime, or in pam as --model X.onnx."""
    from pam.detect.checkpoint import load_checkpoint
    from pam.detect.onnx_export import export_onnx

    try:
        loaded = load_checkpoint(model)
        onnx_path, card_path, diff = export_onnx(loaded, out)
    except _errors() as exc:
        fail(str(exc))
        return
    console.print(f"{onnx_path} and {card_path} written from {loaded.describe()}; scores of 4 noise windows "
                  f"within {diff:.1e} of the checkpoint's", highlight=False, soft_wrap=True)


@app.command()
def models(store: str = StoreArg) -> None:
    """List the models registered in a store, and the models its runs used without registering them
    (the bundled model is described from its card)."""
    import pandas as pd

    from pam.detect.registry import bundled_if, card_row, headline, read_models, used_model_ids

    existing_store(store, local_for="the model registry (pam models)")
    frame = read_models(store)
    try:
        used = used_model_ids(store)
    except Exception:  # noqa: BLE001 - a store without readable runs lists its registry alone
        used = set()
    table = Table()
    for col in ("model", "name", "classes", "thresholds", "registered (UTC)", "parent", "val AP", "test AP", "path"):
        table.add_column(col, overflow="fold", no_wrap=col in ("model", "parent"))

    def add(r: dict, name: str, when: str) -> None:
        h = headline(r["metrics_json"])
        thresholds = json.loads(_text(r["thresholds_json"]) or "{}")
        table.add_row(_text(r["model_id"]), name, ", ".join(json.loads(_text(r["classes_json"]) or "[]")),
                      ", ".join(f"{c} {t:.3f}" for c, t in thresholds.items()), when, _text(r["parent_id"]),
                      _fmt(h["val_macro_ap"]), _fmt(h["test_macro_ap"]), _text(r["path"]))

    for r in frame.to_dict("records"):
        when = r["registered_at"]
        add(r, _text(r["name"]), when.strftime("%Y-%m-%d %H:%M")
            if isinstance(when, datetime) and not pd.isna(when) else "")
    for mid in sorted(used - set(frame["model_id"])):
        bundled = bundled_if(mid)
        if bundled is None:
            table.add_row(mid, "(not registered)", "", "", "", "", "", "", "")
            continue
        created = f", created {bundled.created_at:%Y-%m-%d %H:%M}" if bundled.created_at else ""
        add(card_row(bundled), f"{bundled.card.name} (bundled)", f"not registered{created}")
    if not len(frame) and not used:
        console.print(f"no models registered in {store} (pam train with output.store set registers them)")
        return
    console.print(table)


@app.command("apply-head")
def apply_head_cmd(
    store: str = typer.Argument(..., help="store folder, or an object-store URI such as s3://bucket/pam, holding the "
                                          "embeddings"),
    head: str = typer.Argument(..., help="head file (.npz) from pam train-head or pam.train.heads, or the id of "
                                         "a head registered in the store (pam heads STORE)"),
    force: bool = typer.Option(False, "--force", help="score again recordings this head has already scored"),
) -> None:
    """Score the stored window embeddings with a head and commit its detections as a model of
    its own (model id = head id), exactly once; reads no audio. A second run adds nothing."""
    from pam.train.apply_head import apply_head
    from pam.train.heads import HeadError

    try:
        report = apply_head(existing_store(store), head, force=force)
    except HeadError as exc:
        fail(str(exc))
    console.print(f"head {report.head_id}: {report.recordings_done} recording(s) scored "
                  f"({report.windows:,} windows, {report.detections:,} detections, "
                  f"{report.windows_per_s:,.0f} windows/s), {report.recordings_skipped} already done",
                  highlight=False, soft_wrap=True)
