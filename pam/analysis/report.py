"""One self-contained HTML page over the summaries: effort, who was where, when they call.

Figures are drawn with matplotlib (Agg) and embedded as base64 PNG, CSS is inline, and
nothing refers to the network, so the page can be mailed or opened in the field. Inside a
Prefect run the same numbers are attached to the run as a table and a markdown artifact.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from pam.config import PamConfig
from pam.store.atomic import write_text_atomic
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
"""


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


def species_site_figure(daily: pd.DataFrame) -> str | None:
    """Share of surveyed days with a detection, species x site, as an embedded PNG."""
    return None if daily.empty else _png(species_site_plot(daily))


def species_site_plot(daily: pd.DataFrame):
    """The matplotlib figure of ``species_site_figure`` (``daily``: the daily_counts table, not empty)."""
    import matplotlib.pyplot as plt

    per_day = daily.groupby(["label", "site", "local_date"], as_index=False)["detections"].max()
    share = per_day.assign(hit=per_day["detections"] > 0).groupby(["label", "site"])["hit"].mean().unstack("site")
    share = share.sort_index()
    # constrained layout with a figure title keeps the title above the colour bar and its label
    fig, ax = plt.subplots(figsize=(min(4.5 + 0.35 * share.shape[1], 16), 1.8 + 0.38 * share.shape[0]),
                           layout="constrained")
    img = ax.imshow(share.to_numpy(dtype=float), aspect="auto", cmap="YlGnBu", vmin=0, vmax=1, interpolation="nearest")
    bar = fig.colorbar(img, ax=ax, fraction=0.05)
    bar.set_label("share of days", fontsize=8)
    ax.set_xticks(range(share.shape[1]))
    ax.set_xticklabels(share.columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(share.shape[0]))
    ax.set_yticklabels(share.index, fontsize=9)
    if share.size <= 400:
        for (i, j), v in np.ndenumerate(share.to_numpy(dtype=float)):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v > 0.6 else "black")
    fig.suptitle("Species x site: share of surveyed days with a detection", fontsize=10)
    return fig


def diel_figure(diel: pd.DataFrame, effort: pd.DataFrame, species: list[str]) -> str | None:
    """Detections per analysed hour by local hour of day, all sites together, for ``species``."""
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
        ax.set_title(label, fontsize=10)
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
    return f"Diel activity of the top {len(shown)} species by detections"


def species_summary(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per species: totals, where and how often, and precision if clips were verified."""
    daily, hourly = tables["daily_counts"], tables["hourly_counts"]
    if daily.empty:
        return pd.DataFrame(columns=["species", "detections", "positive_minutes", "sites", "site_days_detected",
                                     "site_days_surveyed", "naive_occupancy", "precision"])
    per_day = daily.groupby(["label", "site", "local_date"], as_index=False)["detections"].max()
    g = per_day.groupby("label")
    surveyed_sites = tables["site_days"].loc[tables["site_days"]["surveyed"], "site"].nunique()
    out = pd.DataFrame({
        "detections": hourly.groupby("label")["detections"].sum(),
        "positive_minutes": hourly.groupby("label")["positive_minutes"].sum(),
        "sites": g.apply(lambda d: d.loc[d["detections"] > 0, "site"].nunique()),
        "site_days_detected": g.apply(lambda d: int((d["detections"] > 0).sum())),
        "site_days_surveyed": g.size(),
    })
    out["naive_occupancy"] = (out["sites"] / surveyed_sites).round(3) if surveyed_sites else np.nan
    judged = tables["precision"].groupby("label")[["verified_true", "verified_false"]].sum()
    total = judged["verified_true"] + judged["verified_false"]
    prec = (judged["verified_true"] / total).where(total > 0)
    out["precision"] = prec.reindex(out.index).astype(float).round(3)
    out = out.sort_values("detections", ascending=False).reset_index(names="species")
    return out


NOT_REVIEWED = "not reviewed"
REVIEW_HINT = ("precision: none of these detections has been reviewed yet (pam review, then pam review-import "
               "with the verdicts)")


def reviewed_any(species: pd.DataFrame) -> bool:
    return bool(len(species)) and bool(species["precision"].notna().any())


def species_for_display(species: pd.DataFrame) -> pd.DataFrame:
    """The species table as shown: without the precision column when nothing was reviewed,
    else with "not reviewed" for the species that have no verdicts."""
    if not reviewed_any(species):
        return species.drop(columns="precision")
    return species.assign(precision=[NOT_REVIEWED if pd.isna(v) else float(v) for v in species["precision"]])


def _html_table(frame: pd.DataFrame, limit: int = 200) -> str:
    shown = frame.head(limit)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    body = []
    for row in shown.itertuples(index=False):
        cells = []
        for v in row:
            if v is None or (isinstance(v, float) and np.isnan(v)):
                text = ""
            elif isinstance(v, (float, np.floating)):
                text = f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
            elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                text = f"{v:,}"
            else:
                text = str(v)
            cells.append(f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f"<p class='meta'>{len(frame) - limit} more rows in the Parquet table.</p>" if len(frame) > limit else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def _markdown(store: Store, species: pd.DataFrame, rich: pd.DataFrame, notes: list[str]) -> str:
    lines = [f"# pam summary for `{store.root}`", "",
             f"{len(rich)} sites, {rich['analysed_h'].sum():.2f} h analysed, "
             f"{int(rich['detections'].sum()) if len(rich) else 0} detections, {len(species)} species.", ""]
    reviewed = reviewed_any(species)
    if len(species):
        head = "| species | detections | sites | site-days detected / surveyed |"
        lines += [head + (" precision |" if reviewed else ""), "|---|---|---|---|" + ("---|" if reviewed else "")]
        for r in species.itertuples(index=False):
            row = (f"| {r.species} | {int(r.detections)} | {int(r.sites)} | {int(r.site_days_detected)} / "
                   f"{int(r.site_days_surveyed)} |")
            if reviewed:
                row += f" {NOT_REVIEWED if pd.isna(r.precision) else f'{r.precision:.2f}'} |"
            lines.append(row)
        if not reviewed:
            lines += ["", REVIEW_HINT + "."]
    lines += [""] + [f"> {n}" for n in notes]
    return "\n".join(lines)


def build_report(store: Store, out_dir: Path, config: PamConfig | None = None, *, top: int = 6,
                 summary: SummaryResult | None = None, **filters) -> Report:
    """Bring the summaries up to date (``filters``: min_score, model_id, period_days) and write report.html."""
    import matplotlib

    matplotlib.use("Agg")
    summary = summary or summarize(store, config, **filters)
    # totals over models count each species with one model (summaries.label_models)
    tables = {**summary.tables, **{name: one_model_per_label(summary.tables[name], summary.label_models)
                                   for name in ("daily_counts", "hourly_counts", "diel")}}
    species = species_summary(tables)
    rich = tables["site_richness"]
    figures = [
        ("Recording effort", effort_figure(tables["site_days"])),
        ("Species by site", species_site_figure(tables["daily_counts"])),
        (diel_title(species["species"].tolist(), top),
         diel_figure(tables["diel"], tables["effort"], species["species"].head(top).tolist())),
    ]
    sites_table = rich.drop(columns=["species_list"]).assign(
        recorded_h=rich["recorded_h"].round(2), analysed_h=rich["analysed_h"].round(2))
    by_site = tables["daily_counts"].pivot_table(index="label", columns="site", values="detections", aggfunc="sum",
                                                 fill_value=0).reset_index().rename(columns={"label": "species"})
    n_h = float(rich["analysed_h"].sum()) if len(rich) else 0.0
    hours = f"{n_h:,.0f}" if n_h >= 100 else f"{n_h:.2f}"  # short test deployments are minutes, not 0 h
    cards = [("sites", len(rich)), ("hours analysed", hours), ("species", len(species)),
             ("detections", f"{int(tables['hourly_counts']['detections'].sum()):,}")]
    parts = [f"<h1>Passive acoustic monitoring summary</h1><p class='meta'>Store {html.escape(str(store.root))} - "
             f"generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC - days and hours are each site's local time</p>",
             "<div class='cards'>" + "".join(f"<div class='card'><b>{html.escape(str(v))}</b>{k}</div>"
                                             for k, v in cards) + "</div>"]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in summary.notes]
    for title, png in figures:
        if png:
            parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>")
    review_note = [] if reviewed_any(species) or not len(species) else [f"<p class='meta'>{html.escape(REVIEW_HINT)}.</p>"]
    parts += ["<h2>Species</h2>", _html_table(species_for_display(species)), *review_note,
              "<h2>Sites: effort and richness</h2>", _html_table(sites_table),
              "<h2>Detections per species and site</h2>", _html_table(by_site),
              "<p class='meta'>Full tables: summaries/*/ in the store (Parquet); occupancy detection histories: "
              "summaries/occupancy/*.csv.</p>"]
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>pam summary</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    write_text_atomic(page, path)
    rows = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
            for r in species.to_dict("records")]
    return Report(path, _markdown(store, species, rich, summary.notes), rows,
                  sum(1 for _t, png in figures if png), list(summary.notes))


def publish_artifacts(report: Report) -> bool:
    """Attach the species table and the markdown summary to the current Prefect run, if any."""
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
    """The nightly run's last step: summaries, ``STORE/reports/report.html``, Prefect artifacts."""
    logger = logger or log
    result = summarize(store, config)
    for note in result.notes:
        logger.warning("%s", note)
    report = build_report(store, store.reports_dir, config, summary=result)
    publish_artifacts(report)
    logger.info("summaries in %s (%d site-days recounted, %s); report %s", result.folder, result.recounted_days,
                "full" if result.full else "incremental", report.html_path)
    return result.folder
