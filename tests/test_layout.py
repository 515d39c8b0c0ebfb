"""The package layout follows the data path: each layer imports only the layers below it,
no module imports another's private names, and every module the docs name exists."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Lowest first; a module may import its own layer and the ones before it, never a later one.
LAYERS = ["pam.config", "pam.store", "pam.io", "pam.detect", "pam.analysis", "pam.train", "pam.ops",
          "flows", "pam.cli"]


def layer_of(module: str) -> int | None:
    for i, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return i
    return None


def modules() -> dict[str, Path]:
    found = {}
    for pkg in ("pam", "flows"):
        for f in (ROOT / pkg).rglob("*.py"):
            found[".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = f
    return found


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every import in the file, lazy ones inside functions too."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.append((node.module, [a.name for a in node.names]))
    return out


def test_every_module_belongs_to_a_layer():
    stray = [m for m in modules() if m not in ("pam", "pam.models") and layer_of(m) is None]
    assert not stray, f"modules outside the layers {LAYERS}: {stray}"


def test_layers_import_only_downward():
    upward = []
    for module, path in modules().items():
        own = layer_of(module)
        if own is None:
            continue
        for target, names in imports(path):
            # "from pam.store import schemas" names the module pam.store.schemas
            for name in [target] + [f"{target}.{n}" for n in names]:
                theirs = layer_of(name)
                if theirs is not None and theirs > own:
                    upward.append(f"{module} imports {name}")
    assert not upward, "\n".join(upward)


def test_no_module_imports_a_private_name_of_another():
    known = modules()
    private = [f"{module} imports {target}.{n}" for module, path in known.items()
               for target, names in imports(path) if target in known and target != module
               for n in names if n.startswith("_") and not n.startswith("__")]
    assert not private, "\n".join(private)


def test_the_layer_rule_catches_an_upward_import(tmp_path):
    """The check above is not vacuous: a store module importing the CLI is an upward import."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from pam.cli.app import fail\n")
    assert any(layer_of(t) > layer_of("pam.store.store") for t, _ in imports(bad))


def test_no_import_circles_by_the_shared_tool():
    tool = ROOT.parent / "shared" / "tools" / "import-circles.py"
    if not tool.is_file():
        pytest.skip(f"{tool} not available")
    done = subprocess.run([sys.executable, str(tool), str(ROOT), "pam", "flows"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


NOT_MODULES = {"pam.schema"}  # a Parquet metadata key (docs/store.md), not a module


def test_every_module_the_docs_name_exists():
    known = modules()
    missing = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md"]:
        text = doc.read_text()
        for path in re.findall(r"\b((?:pam|flows)/[\w/]+\.py)\b", text):
            if not (ROOT / path).is_file():
                missing.append(f"{doc.name}: {path}")
        for dotted in re.findall(r"`((?:pam|flows)\.[\w.]+)", text):
            # a dotted name is a module, or an attribute of one (pam.store.query.query_detections)
            if dotted in NOT_MODULES:
                continue
            parts = dotted.split(".")
            if not any(".".join(parts[:k]) in known for k in range(len(parts), 1, -1)):
                missing.append(f"{doc.name}: {dotted}")
    assert not missing, "docs name modules that do not exist:\n" + "\n".join(missing)
