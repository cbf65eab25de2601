"""Bad inputs through the CLI: each fails with a clear message and leaves the warehouse untouched.

A module-scoped home first holds a successful run (ingest -> validate -> split) of a good ``table`` input
for DS. Each case then re-runs the SAME ds on a broken copy of the input and checks: a non-zero exit, a
stderr message naming the file or table and the problem, and every file under ``<home>/warehouse`` byte for
byte as the good run left it. Spark runs in local mode; its session is reused across cases.
"""
from __future__ import annotations

import os

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import gzip  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from pipelines.cli import main  # noqa: E402

pytestmark = pytest.mark.slow

DS = "2026-01-05"
T0 = 1767225600  # 2026-01-01T00:00:00Z
N_USERS, N_EVENTS, N_ITEMS = 30, 5, 20
INTER_HEADER = "user_id,item_id,timestamp,rating"
ITEMS_HEADER = "item_id,title,brand,categories,description,price"


def good_interactions() -> list[list[str]]:
    """30 users x 5 events, distinct timestamps, items I00..I19."""
    return [[f"U{u:02d}", f"I{(3 * u + 7 * k) % N_ITEMS:02d}", str(T0 + 1000 * u + 60 * k), str(1 + (u + k) % 5)]
            for u in range(N_USERS) for k in range(N_EVENTS)]


def good_items() -> list[list[str]]:
    return [[f"I{i:02d}", f"Item {i}", f"Brand {i % 3}", "Beauty|Skin Care", f"Item number {i}", f"{5 + i}.99"]
            for i in range(N_ITEMS)]


def write_csv(path: Path, header: str | None, rows: list[list[str]]) -> None:
    lines = ([header] if header is not None else []) + [",".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def table_input(folder: Path, inter_rows=None, items_rows=None, inter_header: str = INTER_HEADER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "interactions.csv", inter_header, good_interactions() if inter_rows is None else inter_rows)
    write_csv(folder / "items.csv", ITEMS_HEADER, good_items() if items_rows is None else items_rows)
    return folder


def table_args(home: Path, folder: Path) -> list[str]:
    return ["run", "--home", str(home), "--ds", DS, "--until", "split",
            "--set", "data.source=table", "--set", f"data.path={folder}",
            "--set", "data.interactions_file=interactions.csv", "--set", "data.items_file=items.csv",
            "--set", "validate.min_interactions=10",
            "--set", "spark.master=local[2]", "--set", "spark.shuffle_partitions=2"]


def hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A home with a successful run of the good input for DS; returns (home, warehouse hashes)."""
    home = tmp_path_factory.mktemp("home")
    folder = table_input(tmp_path_factory.mktemp("good"))
    rc = main(table_args(home, folder))
    assert rc == 0, "the good input must run through split"
    summary = json.loads((home / "runs" / DS / "summary.json").read_text())
    assert summary["status"] == "partial" and summary["tables"]["interactions"] == N_USERS * N_EVENTS
    before = hashes(home / "warehouse")
    for table in ("interactions", "items", "users", "sequences", "user_map", "item_map"):
        assert any(k.startswith(f"{table}/ds={DS}/") and k.endswith(".parquet") for k in before), table
    return home, before


def run_bad(good, capsys, args: list[str]) -> str:
    """Run the CLI on a bad input; assert a non-zero exit and an unchanged warehouse; return stderr."""
    home, before = good
    capsys.readouterr()
    rc = main(args)
    err = capsys.readouterr().err
    assert rc != 0, err
    assert hashes(home / "warehouse") == before
    return err


def test_good_run_wrote_the_expected_tables(good):
    home, _ = good
    summary = json.loads((home / "runs" / DS / "summary.json").read_text())
    assert summary["tables"]["train"] == N_USERS * (N_EVENTS - 2)
    assert summary["tables"]["valid"] == N_USERS and summary["tables"]["test"] == N_USERS
    assert summary["tables"]["items"] == N_ITEMS
    assert not (home / "staging" / "interactions" / f"ds={DS}").exists()  # published, not copied


def test_missing_timestamp_column(good, capsys, tmp_path):
    rows = [[u, i, r] for u, i, _, r in good_interactions()]
    folder = table_input(tmp_path, inter_rows=rows, inter_header="user_id,item_id,rating")
    err = run_bad(good, capsys, table_args(good[0], folder))
    assert "stage 'ingest' failed" in err
    assert str(folder / "interactions.csv") in err
    assert "missing column(s) ['timestamp']" in err


def test_non_numeric_timestamp(good, capsys, tmp_path):
    rows = good_interactions()
    rows[7][2] = "yesterday"
    folder = table_input(tmp_path, inter_rows=rows)
    err = run_bad(good, capsys, table_args(good[0], folder))
    assert "stage 'ingest' failed" in err
    assert str(folder / "interactions.csv") in err
    assert "1 row(s) have a timestamp that is neither a number nor ISO-8601" in err
    assert "'yesterday'" in err


def test_duplicate_rows(good, capsys, tmp_path):
    rows = good_interactions()
    rows += [list(rows[3]), list(rows[40])]  # two events repeated verbatim
    folder = table_input(tmp_path, inter_rows=rows)
    err = run_bad(good, capsys, table_args(good[0], folder))
    assert "stage 'validate' failed" in err
    assert "interactions: ExpectCompoundColumnsToBeUnique" in err
    # both copies of each repeated (user_id, item_id, timestamp) fail: 2 x 2 rows
    assert "failed for 4 row(s)" in err
    assert "1 expectation(s) failed" in err


def test_empty_interactions_file(good, capsys, tmp_path):
    folder = table_input(tmp_path)
    (folder / "interactions.csv").write_bytes(b"")
    err = run_bad(good, capsys, table_args(good[0], folder))
    assert "stage 'ingest' failed" in err
    assert f"{folder / 'interactions.csv'}: the interactions file is empty" in err


def test_header_only_interactions_file(good, capsys, tmp_path):
    folder = table_input(tmp_path, inter_rows=[])
    err = run_bad(good, capsys, table_args(good[0], folder))
    assert "stage 'ingest' failed" in err
    assert f"{folder / 'interactions.csv'}: the interactions file has a header but no rows" in err


def test_interactions_naming_unknown_items(good, capsys, tmp_path):
    rows = good_interactions()
    for n, r in enumerate((5, 50, 100)):
        rows[r][1] = f"I9{n}"   # items I90, I91, I92 are not in items.csv
    folder = table_input(tmp_path, inter_rows=rows)
    err = run_bad(good, capsys, table_args(good[0], folder))
    assert "stage 'validate' failed" in err
    assert "interactions: ExpectColumnValuesToBeInSet {'column': 'item_id'} failed for 3 row(s)" in err
    for item in ("I90", "I91", "I92"):
        assert f"'{item}'" in err


def test_truncated_gzip(good, capsys, tmp_path):
    reviews = [json.dumps({"reviewerID": f"U{u:02d}", "asin": f"I{(u + k) % N_ITEMS:02d}", "overall": 5.0,
                           "unixReviewTime": T0 + 1000 * u + 60 * k, "reviewText": "x" * 200})
               for u in range(N_USERS) for k in range(N_EVENTS)]
    data = gzip.compress(("\n".join(reviews) + "\n").encode())
    (tmp_path / "reviews.json.gz").write_bytes(data[:-40])  # cut the end: gzip trailer and some deflate data
    meta = [json.dumps({"asin": f"I{i:02d}", "title": f"Item {i}"}) for i in range(N_ITEMS)]
    (tmp_path / "meta.json").write_text("\n".join(meta) + "\n")
    args = ["run", "--home", str(good[0]), "--ds", DS, "--until", "split",
            "--set", "data.source=amazon", "--set", f"data.path={tmp_path}",
            "--set", "data.reviews_file=reviews.json.gz", "--set", "data.meta_file=meta.json",
            "--set", "validate.min_interactions=10", "--set", "spark.master=local[2]"]
    err = run_bad(good, capsys, args)
    assert "stage 'ingest' failed" in err
    assert f"{tmp_path / 'reviews.json.gz'}: the reviews file is a truncated or corrupt gzip" in err


def test_unknown_config_key_fails_before_any_work(good, capsys, tmp_path):
    home = good[0]
    everything = hashes(home)   # runs/, staging/ and warehouse/ alike
    folder = table_input(tmp_path)
    err = run_bad(good, capsys, table_args(home, folder) + ["--set", "data.nope=1"])
    assert "stage 'config' failed" in err
    assert "unknown config key 'data.nope'" in err
    assert hashes(home) == everything


def test_unknown_config_key_creates_no_home(capsys, tmp_path):
    home = tmp_path / "fresh"
    rc = main(table_args(home, table_input(tmp_path / "in")) + ["--set", "nope=1"])
    assert rc != 0
    assert "unknown config key 'nope'" in capsys.readouterr().err
    assert not home.exists()


@pytest.mark.parametrize("value", ["1e30", "NaN", "-inf"])
def test_timestamps_no_calendar_holds_are_named_not_a_cast_overflow(good, capsys, tmp_path, value):
    rows = good_interactions()
    rows[3][2] = value
    err = run_bad(good, capsys, table_args(good[0], table_input(tmp_path, inter_rows=rows)))
    assert "1 row(s) have a timestamp that is neither" in err and repr(value) in err, err
    assert "overflow" not in err and "BIGINT" not in err


@pytest.mark.parametrize("value", ["four", "NaN", "inf"])
def test_ratings_that_are_not_finite_numbers_are_refused(good, capsys, tmp_path, value):
    rows = good_interactions()
    rows[5][3] = value
    err = run_bad(good, capsys, table_args(good[0], table_input(tmp_path, inter_rows=rows)))
    assert "1 row(s) have a rating that is not a finite number" in err and repr(value) in err, err
    assert "NumberFormatException" not in err


def test_an_empty_folder_as_the_interactions_file(good, capsys, tmp_path):
    folder = table_input(tmp_path)
    (folder / "parts").mkdir()
    args = table_args(good[0], folder)
    args[args.index("data.interactions_file=interactions.csv")] = "data.interactions_file=parts"
    err = run_bad(good, capsys, args)
    assert f"{folder / 'parts'}: is an empty folder" in err and "UNABLE_TO_INFER_SCHEMA" not in err, err


def test_a_huge_header_is_not_echoed_whole(good, capsys, tmp_path):
    header = "user_id,item_id," + ",".join(f"c{i}" for i in range(300)) + "," + "x" * 1_000_000
    rows = [[u, i, *(["0"] * (header.count(",") - 1))] for u, i, _, _ in good_interactions()[:3]]
    err = run_bad(good, capsys, table_args(good[0], table_input(tmp_path, inter_rows=rows, inter_header=header)))
    assert "missing column(s) ['timestamp']" in err and len(err) < 5_000, len(err)
    summary = (good[0] / "runs" / DS / "summary.json").read_text()
    assert len(summary) < 50_000, len(summary)


def test_rfc4180_quoted_fields_and_a_folder_of_csv_parts_are_read_as_written(tmp_path):
    """Quoted user ids holding a comma, a doubled quote and a newline; the interactions as two CSV part files."""
    from jobs import warehouse

    odd = {"U00": "U,comma", "U01": 'U"quote', "U02": "U\nnewline"}

    def field(v: str) -> str:
        return '"' + v.replace('"', '""') + '"' if any(c in v for c in ',"\n') else v

    rows = [[field(odd.get(u, u)), i, t, r] for u, i, t, r in good_interactions()]
    folder = table_input(tmp_path / "in")
    parts = folder / "interactions"
    parts.mkdir()
    write_csv(parts / "part-0.csv", INTER_HEADER, rows[:70])
    write_csv(parts / "part-1.csv", INTER_HEADER, rows[70:])
    home = tmp_path / "home"
    args = table_args(home, folder)
    args[args.index("data.interactions_file=interactions.csv")] = "data.interactions_file=interactions"
    assert main(args) == 0
    users = set(warehouse.read_arrow(home, "interactions", DS).column("user_id").to_pylist())
    assert set(odd.values()) <= users and not set(odd) & users
    assert len(users) == N_USERS


def test_a_rerun_that_fails_after_validation_leaves_the_day_as_it_was(good, capsys, tmp_path):
    """New input that passes validation (60 rows) but fails at split (no user keeps 3 interactions): the day's
    tables must not end half-replaced (interactions new, sequences old); run_bad checks every warehouse byte."""
    rows = [r for r in good_interactions() if int(r[1][1:]) % 5 < 2][:60]
    per_user = {}
    for r in rows:
        per_user[r[0]] = per_user.get(r[0], 0) + 1
    assert len(rows) >= 10 and max(per_user.values()) < 3
    err = run_bad(good, capsys, table_args(good[0], table_input(tmp_path, inter_rows=rows)))
    assert "stage 'split' failed" in err and "no user has at least 3 interactions" in err, err
    assert "put back" in err
    record = json.loads((good[0] / "runs" / DS / "stages" / "split.json").read_text())
    assert record["status"] == "failed" and "interactions" in record["restored"]


def test_parquet_with_integer_ids_is_read_with_the_ids_as_text(tmp_path):
    """A Parquet export whose user and item ids are integers (reliability issue, part two, 9): ingested, the ids
    as strings, instead of refused with advice to cast them in the producing transform."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs import warehouse

    folder = table_input(tmp_path / "in")
    rows = good_interactions()
    pq.write_table(pa.table({"user_id": pa.array([int(r[0][1:]) for r in rows], pa.int64()),
                             "item_id": pa.array([int(r[1][1:]) for r in rows], pa.int32()),
                             "timestamp": pa.array([int(r[2]) for r in rows], pa.int64()),
                             "rating": pa.array([float(r[3]) for r in rows], pa.float64())}),
                   folder / "interactions.parquet")
    write_csv(folder / "items.csv", ITEMS_HEADER, [[str(i), *r[1:]] for i, r in enumerate(good_items())])
    home = tmp_path / "home"
    args = table_args(home, folder)
    args[args.index("data.interactions_file=interactions.csv")] = "data.interactions_file=interactions.parquet"
    assert main(args) == 0
    t = warehouse.read_arrow(home, "interactions", DS)
    assert t.schema.field("user_id").type == pa.string() and t.schema.field("item_id").type == pa.string()
    assert set(t.column("user_id").to_pylist()) == {str(u) for u in range(N_USERS)}
