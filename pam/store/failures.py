"""Failure reports: which files a run could not use, per site, in words a field team acts on.

A nightly run that nobody watches must still tell someone that a card was bad. Each run
that failed or skipped anything writes ``STORE/reports/failures-<run>.md`` (for people; the
nightly flow also publishes it as a Prefect markdown artifact) and
``failures-<run>.parquet`` (schema ``failures`` in ``pam.store.schemas``, to query across runs).

Entries are the dicts that scan and detection collect: ``path``, ``stage`` (``scan``,
``detect`` or ``shard``), ``status``, ``reason``, ``site`` and, for detection, ``attempts``.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

import pam.store.schemas as schemas
from pam.store.store import Store

_OUTCOME_ORDER = {"failed": 0, "skipped": 1, "partial": 2}


def outcome(entry: dict) -> str:
    """failed (detection gave up), partial (truncated: its readable part was used) or skipped."""
    if entry.get("stage") in ("detect", "shard"):
        return "failed"
    if entry.get("status") == "truncated":
        return "partial"
    return "skipped"


def _cell(text: object) -> str:
    return str(text if text is not None else "").replace("|", "\\|").replace("\n", " ")


def _site(entry: dict) -> str:
    site = entry.get("site")
    return site if isinstance(site, str) and site else "(unknown site)"


def render_markdown(run_id: str, failures: list[dict], dumps: list[str] | None = None) -> str:
    """The report as markdown: totals, then one table per site, failures first."""
    counts = defaultdict(int)
    for f in failures:
        counts[outcome(f)] += 1
    if not failures:
        head = f"# pam run {run_id}: no failed or skipped files"
    else:
        parts = [f"{counts['failed']} failed", f"{counts['skipped']} skipped"]
        if counts["partial"]:
            parts.append(f"{counts['partial']} read in part")
        head = f"# pam run {run_id}: " + ", ".join(parts)
    lines = [head, ""]
    if dumps:
        lines += ["Dumps: " + ", ".join(f"`{d}`" for d in dumps), ""]
    if failures:
        lines += [
            "*failed*: detection gave up after its retries (the next run tries again); "
            "*skipped*: the file cannot be used (the next run rechecks it only if it changes), or it was "
            "still being copied (the next run picks it up); *read in part*: truncated, the readable part "
            "was analysed.",
            "",
        ]
    by_site: dict[str, list[dict]] = defaultdict(list)
    for f in failures:
        by_site[_site(f)].append(f)
    for site in sorted(by_site):
        entries = sorted(by_site[site], key=lambda f: (_OUTCOME_ORDER[outcome(f)], str(f.get("path"))))
        n = defaultdict(int)
        for f in entries:
            n[outcome(f)] += 1
        summary = ", ".join(f"{v} {k}" for k, v in sorted(n.items(), key=lambda kv: _OUTCOME_ORDER[kv[0]]))
        lines += [f"## {site} ({summary})", "", "| file | outcome | status | reason |", "| --- | --- | --- | --- |"]
        for f in entries:
            lines.append(f"| `{_cell(f.get('path'))}` | {outcome(f)} | {_cell(f.get('status'))} | "
                         f"{_cell(f.get('reason'))} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def failure_table(run_id: str, failures: list[dict], now: datetime | None = None) -> pa.Table:
    now = now or datetime.now(timezone.utc)
    rows = [{
        "run_id": run_id, "site": f.get("site") if isinstance(f.get("site"), str) else None,
        "path": str(f.get("path")), "stage": f.get("stage"), "outcome": outcome(f),
        "status": f.get("status") or ("failed" if outcome(f) == "failed" else None),
        "reason": f.get("reason"), "attempts": f.get("attempts"), "reported_at": now,
    } for f in failures]
    return pa.Table.from_pylist(rows, schema=schemas.with_version("failures"))


def report_paths(store: Store, run_id: str) -> tuple[Path, Path]:
    return store.reports_dir / f"failures-{run_id}.md", store.reports_dir / f"failures-{run_id}.parquet"


def write_failure_report(store: Store, run_id: str, failures: list[dict],
                         dumps: list[str] | None = None) -> Path | None:
    """Write the markdown and Parquet reports when there is anything to report; returns the .md."""
    if not failures:
        return None
    md_path, _table_path = report_paths(store, run_id)
    store.location.write_parquet(failure_table(run_id, failures), f"reports/failures-{run_id}.parquet")
    store.location.write_text(render_markdown(run_id, failures, dumps), f"reports/failures-{run_id}.md")
    return md_path


def read_failures(store: Store) -> pa.Table:
    """Every run's failure rows, to ask e.g. which sites keep producing bad cards."""
    files = failure_files(store)
    if not files:
        return schemas.FAILURES.empty_table()
    return store.location.dataset(files, schemas.FAILURES).to_table()


def failure_files(store: Store) -> list[str]:
    """Every run's failure table file (file system paths of ``store.location.fs``)."""
    return store.location.list("reports", "failures-", ".parquet")
