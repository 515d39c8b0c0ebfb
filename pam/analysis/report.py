"""One self-contained HTML page over the summaries: effort, who was where, when they call.

Figures are drawn with matplotlib (Agg) and embedded as base64 PNG, CSS is inline, and
nothing refers to the network, so the page can be mailed or opened in the field. Inside a
Prefect run the same numbers are attached to the run as a table and a markdown artifact.

Broad models find hundreds of species: the figures show the ``top`` species by detections
and say how many more there are; the tables list every species in a scrolling box whose
columns sort on a click (one small inline script; without it they stay sorted by
detections). Species are shown by their common name (``pam.store.species``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from pam.config import PamConfig
from pam.store.atomic import write_text_atomic
from pam.store.species import species_name
from pam.store.store import Store
from pam.analysis.summaries import SummaryResult, one_model_per_label, summarize

log = logging.getLogger("pam.analysis.report")

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1180px;color:#1d2b36;
background:#fff;line-height:1.4}h1{font-size:1.6em;margin-bottom:4px}h2{margin-top:32px;border-bottom:2px solid #d7e3ea;
padding-bottom:4px}.meta{color:#5b6b77;font-size:.92em}.note{background:#fff7e0;border-left:4px solid #e6a700;
padding:6px 10px;margin:6px 0}table{border-collapse:collapse;font-size:.88em;margin:8px 0}th,td{padding:3px 9px;
border-bottom:1px solid #e3e9ee;text-align:right}th{background:#f0f5f8}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #e3e9ee;margin:6px 0}.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#f0f5f8;border-radius:6px;padding:10px 16px}.card b{display:block;font-size:1.5em}
.scroll{max-height:34em;overflow:auto;border:1px solid #e3e9ee;display:inline-block;max-width:100%}
.scroll table{margin:0}.scroll thead th{position:sticky;top:0;z-index:1}.scroll td{white-space:nowrap}
td.t{text-align:left}
.sortable th{cursor:pointer;user-select:none}.sortable th:hover{background:#dde8ee}
td i{color:#5b6b77}
"""
# Click a header to sort by that column (again: reverse). Numbers sort as numbers ("1,234").
SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(t){t.querySelectorAll('th').forEach(function(th,i){
th.title='click to sort';th.addEventListener('click',function(){var b=t.tBodies[0],r=Array.from(b.rows),
d=th.dataset.dir==='desc'?'asc':'desc';th.dataset.dir=d;var v=function(x){var s=x.cells[i].textContent.trim(),
n=s.replace(/,/g,'');return /^-?[0-9]*[.]?[0-9]+$/.test(n)?parseFloat(n):s.toLowerCase()};
r.sort(function(p,q){var a=v(p),c=v(q),k=(typeof a===typeof c)?(a<c?-1:a>c?1:0):(typeof a==='number'?-1:1);
return d==='asc'?k:-k});r.forEach(function(x){b.appendChild(x)})})})});
"""
DEFAULT_TOP = 12


@dataclass
class Report:
    """The page written and the same content for Prefect artifacts."""

    html_path: Path
    markdown: str
    species_rows: list[dict]
    figures: int
    notes: list[str] = field(default_factory=list)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _date_ticks(ax, dates: list[str], axis: str = "x") -> None:
    step = max(1, len(dates) // 12)
    ticks = list(range(0, len(dates), step))
    (ax.set_xticks if axis == "x" else ax.set_yticks)(ticks)
    (ax.set_xticklabels if axis == "x" else ax.set_yticklabels)([dates[i] for i in ticks], rotation=45 if axis == "x" else 0,
                                                                 ha="right" if axis == "x" else "right", fontsize=8)


def effort_figure(site_days: pd.DataFrame) -> str | None:
    """Hours analysed per site and local day; grey where recorded but not analysed, blank where nothing."""
    import matplotlib.pyplot as plt

    if site_days.empty:
        return None
    dates = pd.date_range(site_days["local_date"].min(), site_days["local_date"].max(), freq="D").strftime("%Y-%m-%d")
    sites = sorted(site_days["site"].unique())
    analysed = site_days.pivot(index="site", columns="local_date", values="analysed_h").reindex(index=sites, columns=dates)
    recorded = site_days.pivot(index="site", columns="local_date", values="recorded_h").reindex(index=sites, columns=dates)
    shown = analysed.where(analysed > 0)
    pending = ((recorded > 0) & ~(analysed > 0)).to_numpy()
    fig, ax = plt.subplots(figsize=(11, min(1.6 + 0.26 * len(sites), 26)))
    ax.imshow(np.where(pending, 1.0, np.nan), aspect="auto", cmap="Greys", vmin=0, vmax=3, interpolation="nearest")
    img = ax.imshow(shown.to_numpy(dtype=float), aspect="auto", cmap="viridis", interpolation="nearest", vmin=0)
    fig.colorbar(img, ax=ax, label="hours analysed", fraction=0.025)
    ax.set_yticks(range(len(sites)))
    ax.set_yticklabels(sites, fontsize=8)
    _date_ticks(ax, list(dates))
    ax.set_title("Recording effort per site and local day (blank: no recording; grey: recorded, not analysed)",
                 fontsize=10)
    return _png(fig)


def species_site_figure(daily: pd.DataFrame, species: list[str] | None = None) -> str | None:
    """Share of surveyed days with a detection, species x site, as an embedded PNG (``species``: the
    labels to show, in this order; default every one)."""
    return None if daily.empty else _png(species_site_plot(daily, species))


def species_site_plot(daily: pd.DataFrame, species: list[str] | None = None):
    """The matplotlib figure of ``species_site_figure`` (``daily``: the daily_counts table, not empty)."""
    import matplotlib.pyplot as plt

    per_day = daily.groupby(["label", "site", "local_date"], as_index=False)["detections"].max()
    share = per_day.assign(hit=per_day["detections"] > 0).groupby(["label", "site"])["hit"].mean().unstack("site")
    share = share.sort_index() if species is None else share.reindex(species)
    # constrained layout with a figure title keeps the title above the colour bar and its label
    fig, ax = plt.subplots(figsize=(min(4.5 + 0.35 * share.shape[1], 16), 1.8 + 0.38 * share.shape[0]),
                           layout="constrained")
    img = ax.imshow(share.to_numpy(dtype=float), aspect="auto", cmap="YlGnBu", vmin=0, vmax=1, interpolation="nearest")
    bar = fig.colorbar(img, ax=ax, fraction=0.05)
    bar.set_label("share of days", fontsize=8)
    ax.set_xticks(range(share.shape[1]))
    ax.set_xticklabels(share.columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(share.shape[0]))
    ax.set_yticklabels([species_name(label).display for label in share.index], fontsize=9)
    if share.size <= 400:
        for (i, j), v in np.ndenumerate(share.to_numpy(dtype=float)):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v > 0.6 else "black")
    fig.suptitle("Species x site: share of surveyed days with a detection", fontsize=10)
    return fig


def diel_figure(diel: pd.DataFrame, effort: pd.DataFrame, species: list[str]) -> str | None:
    """Detections per analysed hour by local hour of day, all sites together, for ``species`` (labels)."""
    import matplotlib.pyplot as plt

    if not species or effort.empty:
        return None
    hours = effort.groupby("local_hour")["analysed_h"].sum().reindex(range(24), fill_value=0.0)
    cols = min(3, len(species))
    rows = -(-len(species) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows), squeeze=False)
    for ax, label in zip(axes.flat, species):
        counts = diel[diel["label"] == label].groupby("local_hour")["detections"].sum().reindex(range(24), fill_value=0)
        rate = (counts / hours).where(hours > 0)
        ax.bar(range(24), rate.fillna(0).to_numpy(), color="#2a7f9e", width=0.85)
        ax.set_title(species_name(label).display, fontsize=10)
        ax.set_xticks(range(0, 24, 3))
        ax.set_xlim(-0.6, 23.6)
        ax.set_xlabel("local hour", fontsize=8)
        ax.set_ylabel("detections / hour", fontsize=8)
        for h in np.flatnonzero(hours.to_numpy() == 0):
            ax.axvspan(h - 0.5, h + 0.5, color="#eeeeee", zorder=0)
    for ax in list(axes.flat)[len(species):]:
        ax.axis("off")
    fig.suptitle("Diel activity (grey: hours never recorded)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def diel_title(species: list[str], top: int) -> str:
    """The diel section's heading for the first ``top`` of ``species`` (most detections first)."""
    shown = species[:top]
    if not species:
        return "Diel activity"
    if len(shown) == len(species) and len(species) <= 3:
        names = species[0] if len(species) == 1 else ", ".join(species[:-1]) + f" and {species[-1]}"
        return f"Diel activity of {names}"
    if len(shown) == len(species):
        return f"Diel activity of all {len(species)} species"
    if len(shown) == 1:
        return f"Diel activity of the top species by detections ({shown[0]})"
    return f"Diel activity of the top {len(shown)} of {len(species)} species by detections"


def more_species(shown: int, total: int) -> str:
    """The line under a figure that shows only the top species: how many more there are, and where."""
    rest = total - shown
    return (f"and {rest:,} more species, not drawn: every species is in the tables below "
            "(--top N draws more)" if rest > 0 else "")


SPECIES_COLUMNS = ["species", "common_name", "scientific_name", "detections", "positive_minutes", "sites",
                   "site_days_detected", "site_days_surveyed", "naive_occupancy", "first_date", "last_date",
                   "precision"]


def species_summary(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per species (most detections first): totals, where, how often, first and last local date
    with a detection, its names, and precision if clips were verified."""
    daily, hourly = tables["daily_counts"], tables["hourly_counts"]
    if daily.empty:
        return pd.DataFrame(columns=SPECIES_COLUMNS)
    per_day = daily.groupby(["label", "site", "local_date"], as_index=False)["detections"].max()
    hit = per_day[per_day["detections"] > 0].groupby("label")
    surveyed_sites = tables["site_days"].loc[tables["site_days"]["surveyed"], "site"].nunique()
    labels = per_day["label"].drop_duplicates().sort_values()
    out = pd.DataFrame({
        "detections": hourly.groupby("label")["detections"].sum(),
        "positive_minutes": hourly.groupby("label")["positive_minutes"].sum(),
        "sites": hit["site"].nunique(),
        "site_days_detected": hit.size(),
        "site_days_surveyed": per_day.groupby("label").size(),
        "first_date": hit["local_date"].min(),
        "last_date": hit["local_date"].max(),
    }).reindex(labels)
    for col in ("detections", "positive_minutes", "sites", "site_days_detected", "site_days_surveyed"):
        out[col] = out[col].fillna(0).astype("int64")
    out["naive_occupancy"] = (out["sites"] / surveyed_sites).round(3) if surveyed_sites else np.nan
    judged = tables["precision"].groupby("label")[["verified_true", "verified_false"]].sum()
    total = judged["verified_true"] + judged["verified_false"]
    prec = (judged["verified_true"] / total).where(total > 0)
    out["precision"] = prec.reindex(out.index).astype(float).round(3)
    names = [species_name(label) for label in out.index]
    out["common_name"] = [n.common for n in names]
    out["scientific_name"] = [n.scientific for n in names]
    out = out.sort_values("detections", ascending=False, kind="stable").reset_index(names="species")
    return out[SPECIES_COLUMNS]


NOT_REVIEWED = "not reviewed"
REVIEW_HINT = ("precision: none of these detections has been reviewed yet (pam review, then pam review-import "
               "with the verdicts)")
SHOWN_NAMES = {"positive_minutes": "positive min", "sites": "sites", "site_days_detected": "site-days detected",
               "site_days_surveyed": "site-days surveyed", "naive_occupancy": "naive occupancy",
               "first_date": "first", "last_date": "last"}


def reviewed_any(species: pd.DataFrame) -> bool:
    return bool(len(species)) and bool(species["precision"].notna().any())


def has_scientific_names(species: pd.DataFrame) -> bool:
    return bool(len(species)) and bool(species["scientific_name"].notna().any())


def species_for_display(species: pd.DataFrame) -> pd.DataFrame:
    """The species table as shown: names first (the common name, or the label where it has none, and
    the scientific name when any label has one), without the precision column when nothing was
    reviewed, else with "not reviewed" for the species that have no verdicts."""
    shown = species.drop(columns=["common_name", "scientific_name"])
    shown["species"] = [species_name(label).display for label in species["species"]]
    if has_scientific_names(species):
        shown = shown.rename(columns={"species": "common name"})
        shown.insert(1, "scientific name", species["scientific_name"].fillna(""))
    if not reviewed_any(species):
        shown = shown.drop(columns="precision")
    else:
        shown["precision"] = [NOT_REVIEWED if pd.isna(v) else float(v) for v in species["precision"]]
    return shown.rename(columns=SHOWN_NAMES)


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def _html_table(frame: pd.DataFrame, limit: int | None = 200, scroll: bool = False) -> str:
    """A table; ``scroll``: in a box of its own height that scrolls, with sticky headers and columns
    that sort on a click (any number of rows, so no ``limit``)."""
    shown = frame if limit is None else frame.head(limit)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    italic = {i for i, c in enumerate(shown.columns) if c == "scientific name"}
    # text columns after the first (left-aligned like it) read better left-aligned
    text = {i for i, c in enumerate(shown.columns) if i and c in ("scientific name", "first", "last")}
    body = []
    for row in shown.itertuples(index=False):
        cells = []
        for i, v in enumerate(row):
            inner = html.escape(_cell(v))
            inner = f"<i>{inner}</i>" if i in italic and inner else inner
            cells.append(f"<td class='t'>{inner}</td>" if i in text else f"<td>{inner}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = (f"<p class='meta'>{len(frame) - limit} more rows in the Parquet table.</p>"
            if limit is not None and len(frame) > limit else "")
    attrs = " class='sortable'" if scroll else ""
    table = (f"<table{attrs}><thead><tr>{head}</tr></thead>"
             f"<tbody>{''.join(body)}</tbody></table>")
    return (f"<div class='scroll'>{table}</div>" if scroll else table) + more


MARKDOWN_ROWS = 25  # species rows in the markdown artifact; the table artifact has every one


def _markdown(store: Store, species: pd.DataFrame, rich: pd.DataFrame, notes: list[str]) -> str:
    lines = [f"# pam summary for `{store.uri}`", "",
             f"{len(rich)} sites, {rich['analysed_h'].sum():.2f} h analysed, "
             f"{int(rich['detections'].sum()) if len(rich) else 0} detections, {len(species)} species.", ""]
    reviewed = reviewed_any(species)
    if len(species):
        head = "| species | detections | sites | site-days detected / surveyed |"
        lines += [head + (" precision |" if reviewed else ""), "|---|---|---|---|" + ("---|" if reviewed else "")]
        for r in species.head(MARKDOWN_ROWS).itertuples(index=False):
            row = (f"| {species_name(r.species).display} | {int(r.detections)} | {int(r.sites)} | "
                   f"{int(r.site_days_detected)} / {int(r.site_days_surveyed)} |")
            if reviewed:
                row += f" {NOT_REVIEWED if pd.isna(r.precision) else f'{r.precision:.2f}'} |"
            lines.append(row)
        if len(species) > MARKDOWN_ROWS:
            lines += ["", f"and {len(species) - MARKDOWN_ROWS:,} more species (every one: the table artifact "
                          "pam-species-summary and the HTML report)."]
        if not reviewed:
            lines += ["", REVIEW_HINT + "."]
    lines += [""] + [f"> {n}" for n in notes]
    return "\n".join(lines)


def _species_by_site(daily: pd.DataFrame) -> pd.DataFrame:
    """Detections per species (rows, most first) and site (columns), with a total column."""
    by_site = daily.pivot_table(index="label", columns="site", values="detections", aggfunc="sum", fill_value=0)
    by_site.insert(0, "total", by_site.sum(axis=1))
    by_site = by_site.sort_index().sort_values("total", ascending=False, kind="stable")
    names = [species_name(label).display for label in by_site.index]
    return by_site.reset_index(drop=True).assign(species=names)[["species", *by_site.columns]]


def species_filter_notes(runs: pd.DataFrame) -> list[str]:
    """'Species filter of <model>: ...' for each model with scientific names, as its latest
    detect run recorded it (``config_json``: pam.detect.species_filter.describe)."""
    notes: dict[str, str] = {}
    detect = runs[runs["flow"] == "detect"].sort_values("started_at") if len(runs) else runs
    for text in detect["config_json"] if len(detect) else []:
        try:
            models = json.loads(text).get("models") or []
        except (TypeError, ValueError, AttributeError):
            continue
        for m in models:
            if isinstance(m, dict) and isinstance(m.get("species_filter"), str):
                notes[str(m.get("name"))] = f"Species filter of {m.get('name')} (latest run): {m['species_filter']}"
    return list(notes.values())


def build_report(store: Store, out_dir: Path, config: PamConfig | None = None, *, top: int = DEFAULT_TOP,
                 summary: SummaryResult | None = None, **filters) -> Report:
    """Bring the summaries up to date (``filters``: min_score, model_id, period_days) and write report.html.

    Figures draw the ``top`` species by detections; the tables list every species.
    """
    import matplotlib

    matplotlib.use("Agg")
    summary = summary or summarize(store, config, **filters)
    # totals over models count each species with one model (summaries.label_models)
    tables = {**summary.tables, **{name: one_model_per_label(summary.tables[name], summary.label_models)
                                   for name in ("daily_counts", "hourly_counts", "diel")}}
    species = species_summary(tables)
    rich = tables["site_richness"]
    labels = species["species"].tolist()
    shown = labels[:top]
    names = [species_name(label).display for label in labels]
    rest = more_species(len(shown), len(labels))
    heat_title = "Species by site" + (f": the top {len(shown)} of {len(labels)} species by detections" if rest else "")
    figures = [
        ("Recording effort", effort_figure(tables["site_days"]), ""),
        (heat_title, species_site_figure(tables["daily_counts"], shown), rest),
        (diel_title(names, top), diel_figure(tables["diel"], tables["effort"], shown), rest),
    ]
    sites_table = rich.drop(columns=["species_list"]).assign(
        recorded_h=rich["recorded_h"].round(2), analysed_h=rich["analysed_h"].round(2))
    by_site = _species_by_site(tables["daily_counts"]) if len(species) else pd.DataFrame(columns=["species"])
    n_h = float(rich["analysed_h"].sum()) if len(rich) else 0.0
    hours = f"{n_h:,.0f}" if n_h >= 100 else f"{n_h:.2f}"  # short test deployments are minutes, not 0 h
    cards = [("sites", len(rich)), ("hours analysed", hours), ("species", len(species)),
             ("detections", f"{int(tables['hourly_counts']['detections'].sum()):,}")]
    parts = [f"<h1>Passive acoustic monitoring summary</h1><p class='meta'>Store {html.escape(store.uri)} - "
             f"generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC - days and hours are each site's local time</p>",
             "<div class='cards'>" + "".join(f"<div class='card'><b>{html.escape(str(v))}</b>{k}</div>"
                                             for k, v in cards) + "</div>"]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in summary.notes]
    parts += [f"<p class='meta'>{html.escape(n)}</p>" for n in species_filter_notes(store.read_runs())]
    for title, png, caption in figures:
        if png:
            parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>"
                         + (f"<p class='meta'>{html.escape(caption)}</p>" if caption else ""))
    review_note = [] if reviewed_any(species) or not len(species) else [f"<p class='meta'>{html.escape(REVIEW_HINT)}.</p>"]
    sort_hint = ["<p class='meta'>Most detections first; click a column header to sort by it.</p>"] if len(species) > 1 else []
    parts += ["<h2>Species</h2>", *sort_hint, _html_table(species_for_display(species), None, scroll=True),
              *review_note,
              "<h2>Sites: effort and richness</h2>", _html_table(sites_table, None, scroll=True),
              "<h2>Detections per species and site</h2>", _html_table(by_site, None, scroll=True),
              "<p class='meta'>Full tables: summaries/*/ in the store (Parquet); occupancy detection histories: "
              "summaries/occupancy/*.csv.</p>"]
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>pam summary</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}<script>{SORT_JS}</script></body></html>")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    write_text_atomic(page, path)
    rows = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
            for r in species.to_dict("records")]
    return Report(path, _markdown(store, species, rich, summary.notes), rows,
                  sum(1 for _t, png, _c in figures if png), list(summary.notes))


def publish_artifacts(report: Report) -> bool:
    """Attach the species table and the markdown summary to the current Prefect run, if any.

    Without Prefect imported there is no Prefect run in this process: ``pam detect --no-prefect``
    then skips importing it (2-5 s, docs/benchmarks.md)."""
    if "prefect" not in sys.modules:
        return False
    try:
        from prefect.artifacts import create_markdown_artifact, create_table_artifact
        from prefect.context import FlowRunContext, TaskRunContext
    except ImportError:  # pragma: no cover - Prefect is a dependency
        return False
    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return False
    create_table_artifact(report.species_rows, key="pam-species-summary", description="Detections per species")
    create_markdown_artifact(report.markdown + f"\n\nHTML report: `{report.html_path}`", key="pam-summary",
                             description="pam summaries")
    return True


def nightly_summary(store: Store, config: PamConfig, logger: logging.Logger | logging.LoggerAdapter | None = None) -> Path:
    """The nightly run's last step: summaries, ``STORE/reports/report.html``, Prefect artifacts.
    On object storage the summaries only: the HTML report is written to a folder."""
    logger = logger or log
    result = summarize(store, config)
    for note in result.notes:
        logger.warning("%s", note)
    if store.remote:
        logger.info("summaries in %s (%d site-days recounted, %s); no HTML report on object storage "
                    "(docs/store.md#object-storage)", store.location.uri_of("summaries"), result.recounted_days,
                    "full" if result.full else "incremental")
        return result.folder
    report = build_report(store, store.reports_dir, config, summary=result)
    publish_artifacts(report)
    logger.info("summaries in %s (%d site-days recounted, %s); report %s", result.folder, result.recounted_days,
                "full" if result.full else "incremental", report.html_path)
    return result.folder
