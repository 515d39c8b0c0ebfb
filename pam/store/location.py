"""Where a store's files live: a local folder, or an object-store URI (``s3://bucket/pam``).

A local store writes each whole file to a temporary name and renames it into place
(``pam.store.atomic``). On object storage a single PUT is already all-or-nothing, so a file
is written straight to its name. Credentials and the endpoint come from the usual
environment variables of the provider (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_REGION``, ``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP`` for an http endpoint such as MinIO),
which both pyarrow and delta-rs read. docs/store.md#object-storage lists what works there.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pam.store.atomic import write_parquet_atomic, write_text_atomic

# A URI turned into a path by pathlib (``Path("s3://b/x")`` is ``s3:/b/x``: a typer Path
# option does that) is taken back as the URI.
_URI = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]+):/+(?P<rest>.+)$")
OBJECT_SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "abfss")


class NotOnObjectStorage(RuntimeError):
    """An operation that needs a local (or network-mounted) folder was asked of an object store."""


def store_uri(root: str | Path) -> str | None:
    """The object-store URI that ``root`` names, or None for a local folder."""
    m = _URI.match(str(root))
    if m and m["scheme"] in OBJECT_SCHEMES:
        return f"{m['scheme']}://{m['rest'].rstrip('/')}"
    return None


def not_on_object_storage(what: str, uri: str) -> NotOnObjectStorage:
    """The one-line refusal of ``what`` (something only a local or mounted folder supports) on ``uri``."""
    return NotOnObjectStorage(f"{what} is not supported on object storage ({uri}); run it on a store in "
                              "a local or network-mounted folder (docs/store.md#object-storage)")


def require_local_root(root: str | Path, what: str) -> None:
    """NotOnObjectStorage when ``root`` is an object-store URI, decided from the text alone (no
    connection is made, so the refusal comes before any credentials or network are needed)."""
    uri = store_uri(root)
    if uri is not None:
        raise not_on_object_storage(what, uri)


class StoreLocation:
    """The files of one store, addressed by paths relative to the store's root."""

    def __init__(self, root: str | Path):
        uri = store_uri(root)
        self.remote = uri is not None
        if uri is None:
            self.uri = str(Path(root).expanduser().resolve())
            self.fs: pafs.FileSystem = pafs.LocalFileSystem()
            self.base = self.uri
        else:
            self.uri = uri
            self.fs, self.base = pafs.FileSystem.from_uri(uri)
            self.base = self.base.rstrip("/")

    def require_local(self, what: str) -> None:
        """One-line error for what only a local or mounted folder supports."""
        if self.remote:
            raise not_on_object_storage(what, self.uri)

    def path(self, rel: str) -> str:
        """The file system path of ``rel`` (for ``self.fs``)."""
        return f"{self.base}/{rel}" if rel else self.base

    def uri_of(self, rel: str) -> str:
        return f"{self.uri}/{rel}" if rel else self.uri

    def exists(self, rel: str = "") -> bool:
        if not self.remote:
            return Path(self.path(rel)).exists()
        info = self.fs.get_file_info(self.path(rel))
        if info.type != pafs.FileType.NotFound:
            return True
        # an object store has no folders: a prefix exists when something lies under it
        try:
            return bool(self.fs.get_file_info(pafs.FileSelector(self.path(rel), recursive=False)))
        except (FileNotFoundError, OSError):
            return False

    def list(self, rel_dir: str, prefix: str = "", suffix: str = "") -> list[str]:
        """File system paths of the files directly in ``rel_dir`` named ``prefix*suffix``, sorted."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel_dir), allow_not_found=True))
        except (FileNotFoundError, OSError):
            return []
        return sorted(i.path for i in infos if i.type == pafs.FileType.File
                      and i.base_name.startswith(prefix) and i.base_name.endswith(suffix))

    def read_parquet(self, rel: str, schema: pa.Schema) -> pa.Table:
        return pq.read_table(self.path(rel), schema=schema, filesystem=self.fs)

    def dataset(self, paths: list[str], schema: pa.Schema) -> ds.Dataset:
        return ds.dataset(paths, schema=schema, filesystem=self.fs)

    def write_parquet(self, table: pa.Table, rel: str) -> None:
        if not self.remote:
            write_parquet_atomic(table, Path(self.path(rel)))
            return
        with self.fs.open_output_stream(self.path(rel)) as out:
            pq.write_table(table, out, compression="zstd")

    def read_text(self, rel: str) -> str:
        with self.fs.open_input_stream(self.path(rel)) as fh:
            return fh.read().decode("utf-8")

    def write_text(self, text: str, rel: str) -> None:
        if not self.remote:
            write_text_atomic(text, Path(self.path(rel)))
            return
        with self.fs.open_output_stream(self.path(rel)) as out:
            out.write(text.encode("utf-8"))

    def upload_folder(self, local: Path, rel_dir: str, stale_prefix: str = "") -> None:
        """Copy every file of ``local`` into ``rel_dir`` and delete the files there named
        ``stale_prefix*`` that ``local`` does not hold (object storage only)."""
        names = {p.name for p in local.iterdir() if p.is_file()}
        if stale_prefix:
            for old in self.list(rel_dir, stale_prefix):
                if old.rsplit("/", 1)[-1] not in names:
                    self.fs.delete_file(old)
        for name in sorted(names):
            with self.fs.open_output_stream(self.path(f"{rel_dir}/{name}")) as out:
                out.write((local / name).read_bytes())
