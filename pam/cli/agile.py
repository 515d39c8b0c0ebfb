"""Commands of the agile-modelling loop (docs/agile.md): similar, train-head, heads."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Optional

import typer

from pam.cli.analysis import EndOpt, SiteOpt, StartOpt
from pam.cli.app import StoreArg, app, console, err, existing_store, fail


def _day(text: Optional[str], opt: str) -> Optional[date]:
    if text is None:
        return None
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        fail(f"{opt} {text!r}: give a UTC date, YYYY-MM-DD")


@app.command()
def similar(
    store: str = StoreArg,
    example: Optional[Path] = typer.Option(None, "--example", help="a WAV clip of the call to look for"),
    at: Optional[str] = typer.Option(None, "--at", help="a stored window as the example: RECORDING@SECONDS "
                                                        "(RECORDING a path or recording id)"),
    top: int = typer.Option(100, "--top", min=1, help="how many windows to list"),
    site: Optional[list[str]] = SiteOpt,
    start: Optional[str] = StartOpt,
    end: Optional[str] = EndOpt,
    model: Optional[str] = typer.Option(None, "--model", help="the embedding model id (needed when the store "
                                                              "holds embeddings of several)"),
    label: str = typer.Option("similar", "--label", help="species name the listing gives its windows for review"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the list as CSV, for `pam review --from`"),
) -> None:
    """List the stored windows most similar to an example call (cosine of their embeddings)."""
    from pam.analysis.similar import SimilarError, similar as find
    from pam.analysis.similarity import SimilarityIndexError

    st = existing_store(store, local_for="pam similar (its index is a folder in the store)")
    try:
        res = find(st, example=example, at=at, top=top, sites=site, start=_day(start, "--start"),
                   end=_day(end, "--end"), model_id=model, label=label)
    except (SimilarError, SimilarityIndexError) as exc:
        fail(str(exc))
        return
    for note in res.notes:
        err.print(f"note: {note}", highlight=False, soft_wrap=True)
    console.print(f"model {res.model_id}: {res.indexed} windows indexed ({res.added} new)", highlight=False,
                  soft_wrap=True)
    shown = res.rows.drop(columns=["species", "recording_id", "start_sample", "model_id"])
    console.print(shown.to_string(index=False), highlight=False, soft_wrap=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        res.rows.to_csv(out, index=False)
        console.print(f"{len(res.rows)} windows written to {out}; cut their clips with: "
                      f"pam review {store} --from {out} --out REVIEW_FOLDER", highlight=False, soft_wrap=True)


@app.command("train-head")
def train_head_cmd(
    config: Path = typer.Argument(..., help="head config (YAML: store, model, data, split, head, out; docs/agile.md)"),
    prefect: bool = typer.Option(True, "--prefect/--no-prefect", help="run as the Prefect flow (default) or directly"),
) -> None:
    """Train a few-shot head on the stored embeddings of labelled windows (no audio is read)."""
    import json

    from pam.config import ConfigError
    from pam.train.clips import ClipTableError
    from pam.train.heads import HeadError
    from pam.train.train_head import load_head_config, summary, train_head_from_store

    try:
        conf = load_head_config(config)
        if prefect:
            from flows.train_head import train_head_flow
            from pam.ops.prefect_server import prefect_api, quiet_prefect_defaults

            quiet_prefect_defaults()
            with prefect_api():
                result = train_head_flow(conf.model_dump())
        else:
            result = summary(train_head_from_store(conf))
    except (ConfigError, ClipTableError, HeadError) as exc:
        fail(str(exc))
        return
    console.print(f"head {result['head_id']} ({result['kind']}) on {result['embedding_model_id']} embeddings: "
                  f"{result['windows']} labelled windows, split {result['split']}", highlight=False, soft_wrap=True)
    console.print(f"thresholds {json.dumps({k: round(v, 3) for k, v in result['thresholds'].items()})}; "
                  f"validation {json.dumps(result['val'], default=str)}", highlight=False, soft_wrap=True)
    if result.get("registered"):
        console.print(f"written {result['path']} (card {result['card']}); registered in {result['store']}. Apply it "
                      f"with: pam apply-head {result['store']} {result['head_id']}", highlight=False, soft_wrap=True)
    else:
        console.print(f"written {result['path']} (card {result['card']}); not registered (register_in_store: false). Apply "
                      f"it with: pam apply-head STORE {result['path']}", highlight=False, soft_wrap=True)


@app.command()
def heads(store: str = StoreArg) -> None:
    """List the few-shot heads registered in a store (pam train-head registers them), newest first."""
    import json

    from rich.table import Table

    from pam.train.head_registry import read_heads

    frame = read_heads(existing_store(store, local_for="the head registry (pam heads)"))
    if frame.empty:
        console.print(f"no heads registered in {store} (pam train-head registers them)")
        return
    table = Table()
    for col in ("head", "kind", "embedding model", "classes", "thresholds", "windows", "registered (UTC)"):
        table.add_column(col, overflow="fold", no_wrap=col in ("head", "embedding model"))
    for r in frame.to_dict("records"):
        training = json.loads(r["training_json"] or "{}")
        thresholds = json.loads(r["thresholds_json"] or "{}")
        table.add_row(r["head_id"], r["kind"], r["embedding_model_id"], ", ".join(json.loads(r["classes_json"])),
                      ", ".join(f"{c} {t:.3f}" for c, t in thresholds.items()), str(training.get("windows", "")),
                      r["registered_at"].strftime("%Y-%m-%d %H:%M"))
    console.print(table)
