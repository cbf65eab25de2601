"""pipelines.registry: what is logged to MLflow (no secret-looking key ever), metric names MLflow accepts."""
from __future__ import annotations

import dataclasses

from pipelines.config import load_config
from pipelines.registry import flat_metrics, flat_params


def test_flat_params_flattens_and_drops_secret_looking_keys_at_any_depth():
    params = flat_params({"a": 1, "api_key": "sk-1", "nested": {"Token": "t", "deep": {"password": "p", "ok": [1, 2]},
                                                                "empty": {}}, "client_secret": "s", "name": "x"})
    assert params == {"a": "1", "nested.deep.ok": "[1, 2]", "nested.empty": "{}", "name": "x"}


def test_the_config_never_logs_its_openai_key_setting():
    cfg = load_config(None, ["describe.backend=openai", "describe.openai.model=m"])
    params = flat_params(dataclasses.asdict(cfg))
    assert params["describe.openai.model"] == "m" and params["train_sequential.sasrec.dropout"] == "0.3"
    assert not [k for k in params if "key" in k.lower()]


def test_flat_metrics_names():
    m = {"wals": {"full": {"NDCG@10": 0.25, "users": 3}, "slices": {"tail_items": {"full": {"HR@5": 1}}},
                  "flag": True, "label": "x"}}
    assert flat_metrics(m) == {"wals.full.NDCG_10": 0.25, "wals.full.users": 3.0,
                               "wals.slices.tail_items.full.HR_5": 1.0}


def test_a_copied_home_writes_and_reads_its_own_artifacts(tmp_path, capsys):
    """MLflow stores the artifact root as an absolute path: a copied home wrote new artifacts into the original
    (reliability issue, part two, 8). The copy's store is rewritten to its own folder on first use."""
    import shutil

    import mlflow

    from pipelines.registry import client

    cfg = load_config(None, [])
    first, copy = tmp_path / "a" / "home", tmp_path / "b" / "home"
    client(cfg, first)
    with mlflow.start_run() as run:
        mlflow.log_text("day one", "note.txt")
    shutil.copytree(first, copy)
    before = {p.relative_to(first) for p in first.rglob("*")}
    c = client(cfg, copy)
    assert "MLflow paths rewritten" in capsys.readouterr().out
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/note.txt") == "day one"
    assert c.get_run(run.info.run_id).info.artifact_uri.startswith((copy / "mlflow").resolve().as_uri())
    with mlflow.start_run() as run2:
        mlflow.log_text("day two", "note.txt")
    assert (copy / "mlflow" / "artifacts").resolve().as_uri() in run2.info.artifact_uri
    assert {p.relative_to(first) for p in first.rglob("*")} == before              # the original is untouched
    client(cfg, first)                                                          # and still its own
    assert "rewritten" not in capsys.readouterr().out
