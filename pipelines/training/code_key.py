"""What a checkpoint key says about the code a model runs: its source files without comments and docstrings, so an
edit to what the code computes trains afresh and an edit to its documentation resumes. The one place of that rule
for the sequential models' keys (``pipelines.training.sequential.code_version``) and the LLM recommender's
(``pipelines.training.llmrec.code_version``)."""
from __future__ import annotations

import ast
import hashlib
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


def model_files(module: str, models_dir: Path = MODELS_DIR) -> list[Path]:
    """The source of ``module`` (``models.<name>``) and of every ``models`` module it imports, directly or through
    another, each once, in the order first reached (depth first, imports in source order)."""
    order: list[Path] = []

    def source(name: str) -> Path:
        return models_dir / f"{name.split('.', 1)[1]}.py"

    def visit(path: Path) -> None:
        if path in order:
            return
        order.append(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for n in names:
                if n.startswith("models.") and source(n).exists():
                    visit(source(n))

    visit(source(module))
    return order


def source_hash(files: list[Path], h=None):
    """``h`` (a new sha256 if None) updated with each file's syntax tree, docstrings removed (comments never reach
    it); returned."""
    h = hashlib.sha256() if h is None else h
    for f in files:
        tree = ast.parse(Path(f).read_text())
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        h.update(ast.dump(tree).encode())
    return h
