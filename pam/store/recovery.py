"""Recovery after a crash: the files a killed writer left (docs/store.md#the-commit).

A writer killed between writing its files and committing them leaves files under
``results/`` that no version of the table names, and delta-rs may leave temporary log files;
plain-file writes (``pam.store.atomic``) leave temporary names. ``recover`` deletes them.
``store`` is a ``pam.store.store.Store``.
"""

from __future__ import annotations

import builtins
import json
import os
import time
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from pam.store.atomic import TMP_NAME
from pam.store.results import KINDS, ResultsTable

# Files under results/ that no version of the table names (a writer killed between writing its
# files and committing them) are deleted by recover() once they are this old: a younger one may
# belong to a commit still in flight on another machine.
ORPHAN_AGE_S = 3600.0


def _remove_temporary(folder: Path) -> int:
    """Delete temporary files (``pam.store.atomic.TMP_NAME``) under ``folder``."""
    removed = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            if TMP_NAME.match(name):
                os.unlink(os.path.join(dirpath, name))
                removed += 1
    return removed


def _ever_named(results_dir: Path, snap) -> set[str]:
    """Data files the table's log names, live or removed (kept for time travel until vacuumed)."""
    named = {f.path for kind in KINDS for f in ResultsTable.files(snap, kind)}
    log = results_dir / "_delta_log"
    for entry in os.scandir(log):
        if entry.name.endswith(".json"):
            with builtins.open(entry.path) as fh:
                for line in fh:
                    action = json.loads(line)
                    for kind in ("add", "remove"):
                        if kind in action:
                            named.add(unquote(action[kind]["path"]))
    return named


def unnamed_files(store) -> list[Path]:
    """Files under ``results/`` that no version of the table names (a writer died between
    writing them and committing), and delta-rs's temporary log files (``_delta_log/*.tmp``,
    a writer died inside its commit). Nobody reads them."""
    snap = store.snapshot()
    if snap is None:
        return []
    if store.remote:
        return [PurePosixPath(p) for p, _mtime in store.results.unnamed_files(snap)]
    live = _ever_named(store.results_dir, snap)
    out = []
    for dirpath, _dirs, files in os.walk(store.results_dir):
        in_log = "_delta_log" in Path(dirpath).relative_to(store.results_dir).parts
        for name in files:
            full = Path(dirpath) / name
            if in_log:
                if name.endswith(".tmp"):
                    out.append(full)
            elif full.relative_to(store.results_dir).as_posix() not in live:
                out.append(full)
    return sorted(out)


def recover(store, orphan_age_s: float = ORPHAN_AGE_S) -> int:
    """Delete what crashed writers left: files under ``results/`` that no version of the table
    names and that are older than ``orphan_age_s`` (younger ones may belong to a commit in
    flight on another machine), and temporary files. Returns the files deleted."""
    removed = 0
    cutoff = time.time() - orphan_age_s
    if store.remote:  # no temporary files there: every file is written by one PUT
        snap = store.snapshot()
        for path, mtime in (store.results.unnamed_files(snap) if snap is not None else []):
            if orphan_age_s <= 0 or mtime < cutoff:
                store.location.fs.delete_file(path)
                removed += 1
        return removed
    for path in store.unnamed_files():
        try:
            if orphan_age_s <= 0 or path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:  # another recovery got there first
            pass
    for d in (store.runs_dir, store.root / "manifest", store.models_dir, store.root / "labels", store.root / "config"):
        removed += _remove_temporary(d)
    if store.holds_run_lock():
        # Only runs write reports and summaries, so with the run lock held no other
        # writer can own a temporary file there.
        removed += _remove_temporary(store.reports_dir) + _remove_temporary(store.summaries_dir)
    return removed
