"""Docs stay true to the code: every stored column is documented, every documented column exists."""

import re
from pathlib import Path

import pam.store.schemas as schemas

DOC = (Path(__file__).parents[1] / "docs" / "store.md").read_text()


def section(table: str) -> str:
    m = re.search(rf"^## {table} \(version (\d+)\)\n(.*?)(?=^## |\Z)", DOC, re.S | re.M)
    assert m, f"docs/store.md has no section for {table}"
    assert int(m.group(1)) == schemas.TABLES[table][1], f"{table}: documented version differs"
    return m.group(2)


def test_every_column_is_documented_and_exists():
    for table, (schema, _version) in schemas.TABLES.items():
        text = section(table)
        rows = set(re.findall(r"^\| `([a-z_]+)`", text, re.M)) | set(re.findall(r"`, `([a-z_]+)` \|", text))
        for name in schema.names:
            assert name in rows, f"{table}.{name} has no row in its column table"
        partitions = {"site", "date"} if table in ("detections", "embeddings") else set()
        extra = rows - set(schema.names) - partitions
        assert not extra, f"{table}: documented but not in the schema: {extra}"


def test_readme_config_table_lists_every_key():
    from pam.config import DetectConfig, ScanConfig

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name in DetectConfig.model_fields:
        assert f"`detect.{name}`" in readme, name
    for name in ScanConfig.model_fields:
        assert f"`scan.{name}`" in readme, name
