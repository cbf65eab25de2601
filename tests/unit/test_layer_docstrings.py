"""Modules with the same name at several layers (``wals.py``, ``ingest.py``, ``split.py``, ``neighbours.py``,
``llmrec.py``: found, not listed) say which layer they are on their docstring's first line, so a reader (or a traceback, or ``pydoc``) never mistakes one for another."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = {"jobs": "Spark job (spark-submit entry point)", "features": "Pure transform (features layer)",
          "pipelines/stages": "Stage (pipelines layer)", "pipelines/backends": "Backend (pipelines/backends)",
          "pipelines/training": "Training (pipelines/training)", "models": "Model (models layer)"}
_ALL = [p.name for layer in LAYERS for p in (ROOT / layer).glob("*.py") if p.name != "__init__.py"]
NAMES = tuple(sorted({n for n in _ALL if _ALL.count(n) > 1}))


def _files() -> list[tuple[str, Path]]:
    return [(label, ROOT / layer / name) for layer, label in LAYERS.items() for name in NAMES
            if (ROOT / layer / name).exists()]


def test_every_name_exists_at_more_than_one_layer():
    for name in NAMES:
        assert sum(p.name == name for _, p in _files()) >= 2, name


@pytest.mark.parametrize(("label", "path"), _files(), ids=[str(p.relative_to(ROOT)) for _, p in _files()])
def test_the_docstring_first_line_names_the_layer(label, path):
    doc = ast.get_docstring(ast.parse(path.read_text()), clean=False)
    assert doc, f"{path} has no module docstring"
    first = doc.splitlines()[0]
    assert first.startswith(label), f"{path.relative_to(ROOT)}: {first!r} should start with {label!r}"
