"""A registered SASRec served by MLflow's own server (``mlflow models serve --env-manager local``, the command
docs/operations.md gives) on 127.0.0.1: a request with a history is answered as the pyfunc answers it in process, each
bad request gets a 400 naming the field (never a 500 or a traceback), and the server keeps serving."""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import DS, private_home, without_process_group
from tests.process_group import mlflow_serve, stop

pytestmark = pytest.mark.slow
MODEL = "models:/sasrec@challenger"
START_SECONDS = 90


@pytest.fixture(scope="module")
def registered(_synthetic_split, tmp_path_factory) -> dict:
    """One epoch of a small SASRec on the synthetic shop, evaluated and registered (challenger) in a fresh home."""
    from pipelines import runner
    from pipelines.config import load_config
    from pipelines.context import StageContext
    from pipelines.evaluation.data import load_eval_data

    home = private_home(_synthetic_split, tmp_path_factory.mktemp("serving_http"))
    cfg = load_config(None, ["train_sequential.models=[sasrec]", "train_sequential.sasrec.hidden=32",
                             "train_sequential.train.epochs=1", "train_sequential.train.batch_size=128"])
    runner.run(cfg, DS, home, ["train_sequential", "evaluate", "register"])
    data, user_ids, item_ids = load_eval_data(StageContext(cfg, DS, home))
    hist = data.history("test")
    user = next(u for u in range(data.n_users) if hist.indptr[u + 1] - hist.indptr[u] >= 2)
    own = set(hist.indices[hist.indptr[user]:hist.indptr[user + 1]].tolist())
    new = [item_ids[i] for i in range(1, data.n_items + 1) if i not in own][:2]
    return {"home": home, "uri": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}", "user": user_ids[user],
            "history": [new[0], "no-such-item", new[1]], "own": {item_ids[i] for i in own}, "n_items": data.n_items}


def post(port: int, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        try:
            return e.code, json.loads(text)
        except json.JSONDecodeError:
            return e.code, {"message": text}


def test_mlflow_serves_request_time_history_and_refuses_bad_requests_with_400(registered, tmp_path):
    import mlflow
    import pandas as pd

    from pipelines.training.distributed import free_port

    r = registered
    # the logged model carries what inference needs and no optimiser state
    mlflow.set_tracking_uri(r["uri"])
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=MODEL, dst_path=str(tmp_path / "model")))
    files = sorted(p.name for p in (local / "artifacts").rglob("*") if p.is_file())
    assert files == ["forward.json", "meta.json", "model.npz", "weights.safetensors"]

    good = {"dataframe_records": [{"user_id": r["user"], "history": r["history"]}], "params": {"k": 5}}
    expected = mlflow.pyfunc.load_model(MODEL).predict(pd.DataFrame(good["dataframe_records"]), params={"k": 5})
    port = free_port()
    proc = mlflow_serve(MODEL, port, tmp_path / "server.log", {**without_process_group(), "MLFLOW_TRACKING_URI": r["uri"]},
                        start_s=START_SECONDS)
    try:
        status, body = post(port, good)
        assert status == 200, body
        [row] = body["predictions"]
        assert row["item_ids"] == list(expected["item_ids"][0]) and len(row["item_ids"]) == 5
        assert row["known"] is True and row["unknown_items"] == 1
        assert not set(row["item_ids"]) & (r["own"] | set(r["history"]))   # the user's items, old and new, excluded

        rec = {"user_id": r["user"], "history": r["history"]}
        bad = {
            "user_id": {"dataframe_records": [{"history": r["history"]}], "params": {"k": 5}},
            "history": {"dataframe_records": [{"user_id": r["user"], "history": r["history"][0]}]},
            "exclude": {"dataframe_records": [{**rec, "exclude": r["history"][0]}]},
            "k=0": {"dataframe_records": [rec], "params": {"k": 0}},
            "k=-3": {"dataframe_records": [rec], "params": {"k": -3}},
            "k=catalogue+1": {"dataframe_records": [rec], "params": {"k": r["n_items"] + 1}},
        }
        answers = {case: post(port, request) for case, request in bad.items()}
        for case, (status, body) in answers.items():
            last = body.get("message", "").strip().splitlines()[-1:] or [""]
            assert status == 400, (case, status, body)
            assert re.search(rf"\b{case.split('=')[0]}\b", last[0]), (case, body)   # the field, on the last line
            assert "stack_trace" not in body and "Traceback" not in body.get("message", ""), (case, body)

        status, body = post(port, good)          # still serving, same answer
        assert status == 200 and body["predictions"][0]["item_ids"] == row["item_ids"]
    finally:
        stop(proc)


def test_recpipe_score_writes_what_the_served_model_answers_on_spark(registered, tmp_path, capsys):
    """``recpipe score`` on the local Spark master (the configured one): a Parquet users file (a known user with a
    history holding an unknown item, one without, a new user with a history, one without) and the same users as CSV
    (histories space-separated) give, row for row, what
    the registered pyfunc answers in process; the output folder is written whole; a refused request names the field
    and leaves the earlier output in place; a missing alias is named with the fix."""
    import mlflow
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines import cli

    r = registered
    mlflow.set_tracking_uri(r["uri"])
    served = mlflow.pyfunc.load_model(MODEL)
    other = next(u for u in served.unwrap_python_model().user_pos if u != r["user"])
    users = pd.DataFrame({"user_id": [r["user"], other, "new-today", "new-and-silent"],
                          "history": [r["history"], None, r["history"][:1], None]})
    pq.write_table(pa.Table.from_pandas(users, preserve_index=False), tmp_path / "users.parquet")
    users.assign(history=[" ".join(h) if h else None for h in users["history"]]).to_csv(tmp_path / "users.csv",
                                                                                        index=False)
    expected = served.predict(users, params={"k": 5}).set_index("user_id")
    assert list(expected["known"]) == [True, True, True, False] and list(expected["unknown_items"]) == [1, 0, 0, 0]
    home = ["--home", str(r["home"])]
    for name in ("users.parquet", "users.csv"):
        out = tmp_path / f"out-{name}"
        assert cli.main(["score", *home, "--model", "sasrec@challenger", "--users", str(tmp_path / name),
                         "--out", str(out), "--k", "5"]) == 0, capsys.readouterr().err
        got = pd.read_parquet(out).set_index("user_id")
        assert sorted(got.index) == sorted(expected.index) and not list(tmp_path.glob("_tmp-*"))
        for user, want in expected.iterrows():
            assert list(got.loc[user, "item_ids"]) == list(want["item_ids"]), (name, user)
            assert np.allclose(got.loc[user, "scores"], want["scores"], rtol=1e-6), (name, user)
            assert (got.loc[user, "known"], got.loc[user, "unknown_items"]) == (want["known"], want["unknown_items"])
    before = sorted(p.name for p in out.iterdir())
    code = cli.main(["score", *home, "--model", "sasrec@challenger", "--users", str(tmp_path / "users.csv"),
                     "--out", str(out), "--k", str(r["n_items"] + 1)])
    err = capsys.readouterr().err
    assert code == 2 and "Bad request: 'k'" in err and "Traceback" not in err, err
    assert sorted(p.name for p in out.iterdir()) == before                   # the earlier output is untouched
    assert cli.main(["score", *home, "--model", "sasrec", "--users", str(tmp_path / "users.csv"),
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "has the alias 'champion'" in err and "--model sasrec@challenger" in err, err
    assert cli.main(["score", "--home", str(tmp_path / "elsewhere"), "--model", "sasrec", "--users",
                     str(tmp_path / "users.csv"), "--out", str(out)]) == 2
    assert "does not exist: no model is registered" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists()                              # no empty store made there
