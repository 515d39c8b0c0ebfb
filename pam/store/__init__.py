"""The store: Parquet tables that are the single source of truth (docs/store.md).

``store.py`` holds the folder layout, locks and the commit protocol; ``schemas.py`` every
table's columns; ``query.py`` filtered reads and SQL; ``failures.py`` the per-run failure
reports. Nothing here imports the layers above (detection, analysis, operations).

From a notebook::

    import pam.store
    store = pam.store.open("example-store")
    pam.store.query_detections(store, species="bobwhite_covey").rows
"""

from pam.store.query import QueryError, query_detections, run_sql
from pam.store.store import Store, StoreBusy, open

__all__ = ["QueryError", "Store", "StoreBusy", "open", "query_detections", "run_sql"]
