"""``pam store ...``: the results table's versions, compaction, retention, recovery and migration."""

from __future__ import annotations

from datetime import datetime, timezone
import typer

from pam.cli.app import StoreArg, app, console, counted, existing_store, fail, refuse_object_storage

store_app = typer.Typer(no_args_is_help=True, help="Look after a store: versions, compaction, retention, migration.")
app.add_typer(store_app, name="store")


@store_app.command("history")
def history(store: str = StoreArg, limit: int = typer.Option(20, "--limit", min=1)) -> None:
    """The results table's versions, newest first (for `pam query --as-of VERSION`)."""
    for h in existing_store(store).history(limit):
        when = datetime.fromtimestamp(h["timestamp"] / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        what = f"{h['operation']:<8}"
        if h.get("run_id"):
            models = f" (model {h['models']})" if h.get("models") else ""
            what += f"  run {h['run_id']}{models}: {counted(h['recordings'], 'recording')}, {counted(h['detections'], 'detection')}"
        console.print(f"{h['version']:>6}  {when}  {what}".rstrip(), highlight=False)


@store_app.command("compact")
def compact(store: str = StoreArg,
            min_files: int = typer.Option(2, "--min-files", min=2, help="compact partitions with this many files")) -> None:
    """Rewrite each detection partition (site, UTC month) and each site's done files as one file; no row changes."""
    done = existing_store(store).compact(min_files)
    console.print(f"compacted {done.partitions} partitions: {done.files_before} files, {done.rows} rows",
                  highlight=False)


@store_app.command("vacuum")
def vacuum(store: str = StoreArg,
           retention_days: float = typer.Option(7.0, "--retention-days", min=0,
                                                help="delete files removed longer ago than this")) -> None:
    """Delete files that newer versions removed more than --retention-days ago (time travel ends there)."""
    deleted = existing_store(store).vacuum(retention_days)
    console.print(f"deleted {len(deleted)} files", highlight=False)


@store_app.command("recover")
def recover(store: str = StoreArg,
            orphan_age_s: float = typer.Option(3600.0, "--orphan-age-s", min=0,
                                               help="delete uncommitted files older than this (a younger one may "
                                                    "belong to a commit in flight on another machine)")) -> None:
    """Delete what crashed writers left: files no version names, temporary files."""
    removed = existing_store(store).recover(orphan_age_s=orphan_age_s)
    console.print(f"removed {removed} files", highlight=False)


@store_app.command("migrate")
def migrate(old: str = typer.Argument(..., help="store of the folder layout (detections/, done/); only read"),
            new: str = typer.Argument(..., help="new, empty folder for the converted store")) -> None:
    """Convert a store of the folder layout (pam before the results table) without loss."""
    for root in (old, new):
        refuse_object_storage(root, "pam store migrate")
    from pam.store.migrate import MigrationError, migrate as run_migration

    try:
        done = run_migration(old, new)
    except MigrationError as exc:
        fail(str(exc))
        return
    console.print(f"migrated {done.detection_rows} detection and {done.done_rows} done rows into {new}/results "
                  f"({done.files} files), and copied {done.copied} other files", highlight=False, soft_wrap=True)
