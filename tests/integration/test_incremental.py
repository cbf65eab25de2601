"""Incremental refresh on the synthetic shop, two days: the second builds on the first. WALS starts from the first
day's factors (by id) for a few sweeps, SASRec fine-tunes from its best weights with rows for the new items, and
describe regenerates exactly the users whose history changed and the new items; every stage says so in its record."""
from __future__ import annotations

import json

import pyarrow.compute as pc
import pytest

from jobs import warehouse
from pipelines import runner
from pipelines.config import load_config
from tests.conftest import DS, SMALL_SHOP, private_home
from tests.llm_server import LocalLLMServer

pytestmark = pytest.mark.slow
D2 = "2026-01-02"
STAGES = ["wals", "describe", "train_sequential"]
SETS = ["refresh.mode=incremental", "refresh.wals_iterations=2", "refresh.finetune_epochs=1",
        "train_sequential.models=[sasrec]", "train_sequential.sasrec.hidden=32", "train_sequential.train.epochs=3",
        "train_sequential.train.batch_size=128", "describe.backend=openai", "describe.openai.model=m",
        "describe.openai.concurrency=8", "describe.max_items=0", "describe.max_users=0"]


def _histories(home, ds: str) -> dict[str, list[str]]:
    """Each user's train items by id, in order: what the user prompt is written from."""
    seq = warehouse.read_arrow(home, "sequences", ds)
    seq = seq.filter(pc.equal(seq.column("split"), "train")).sort_by([("user_idx", "ascending"),
                                                                      ("position", "ascending")])
    users = dict(zip(*[warehouse.read_arrow(home, "user_map", ds).column(c).to_pylist() for c in ("user_idx", "user_id")],
                     strict=True))
    items = dict(zip(*[warehouse.read_arrow(home, "item_map", ds).column(c).to_pylist() for c in ("item_idx", "item_id")],
                     strict=True))
    out: dict[str, list[str]] = {}
    for u, i in zip(seq.column("user_idx").to_pylist(), seq.column("item_idx").to_pylist(), strict=True):
        out.setdefault(users[u], []).append(items[i])
    return out


def _record(home, ds: str, stage: str) -> dict:
    return json.loads((home / "runs" / ds / "stages" / f"{stage}.json").read_text())


def test_the_second_day_builds_on_the_first(_synthetic_split, tmp_path):
    home = private_home(_synthetic_split, tmp_path)
    with LocalLLMServer() as server:
        sets = [*SMALL_SHOP, *SETS, f"describe.openai.base_url={server.base_url}"]
        cfg = load_config(None, sets)
        runner.run(cfg, DS, home, STAGES)                                   # day 1 on the shared split
        runner.run(cfg, D2, home, ["ingest", "validate", "split", *STAGES])
    day1 = {s: _record(home, DS, s) for s in STAGES}
    day2 = {s: _record(home, D2, s) for s in STAGES}
    assert day1["wals"]["refresh"]["mode"] == "full" and not day1["wals"]["refresh"]["final_fit"]["warm"]
    assert json.loads((home / "runs" / D2 / "refresh.json").read_text())["base"] == DS

    # WALS: the first day's users and items start from their factors, the new ones cold, two sweeps
    users1, users2 = (set(warehouse.read_arrow(home, "user_map", d).column("user_id").to_pylist()) for d in (DS, D2))
    items1, items2 = (set(warehouse.read_arrow(home, "item_map", d).column("item_id").to_pylist()) for d in (DS, D2))
    assert users2 - users1 and items2 - items1                          # the synthetic shop grows every day
    final = day2["wals"]["refresh"]["final_fit"]
    assert final["warm"] and final["base"] == DS and final["iterations"] == 2
    assert final["users_carried"] == len(users1 & users2) and final["users_new"] == len(users2 - users1)
    assert final["items_carried"] == len(items1 & items2) and final["items_new"] == len(items2 - items1)
    assert day2["wals"]["refresh"]["valid_fit"]["warm"]

    # SASRec: fine-tuned from day 1's best weights, rows added for the new items, one epoch
    warm = day2["train_sequential"]["refresh"]["sasrec"]
    assert warm["warm"] and warm["base"] == DS and warm["epochs"] == 1
    assert warm["reindexed_by_item"] == ["item_emb.weight"] and warm["new_items"] == len(items2 - items1)
    assert day2["train_sequential"]["models"]["sasrec"]["epochs_run"] == 1
    assert day1["train_sequential"]["refresh"]["sasrec"] == {"warm": False, "epochs": 3}
    # a warm start begins where day 1 ended: its first epoch is already far above a cold model's first epoch
    r1 = json.loads((home / "runs" / DS / "train_sequential" / "sasrec" / "result.json").read_text())
    r2 = json.loads((home / "runs" / D2 / "train_sequential" / "sasrec" / "result.json").read_text())
    assert r2["history"][0]["valid_NDCG@10"] > r1["history"][0]["valid_NDCG@10"], (r1["history"], r2["history"])

    # describe: exactly the users whose train history changed (or who are new), and the new items
    h1, h2 = _histories(home, DS), _histories(home, D2)
    changed = sorted(u for u, h in h2.items() if h1.get(u) != h)
    rec = day2["describe"]["refresh"]
    assert rec["recomputed"] == {"item": len(items2 - items1), "user": len(changed)}
    assert rec["recomputed_ids"]["user"] == changed[:50]
    assert rec["recomputed_ids"]["item"] == sorted(items2 - items1)[:50]
    assert rec["reused"] == day2["describe"]["cached"] > 0
