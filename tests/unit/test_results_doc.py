"""docs/results.md and README's "What to expect" are generated from the results JSON; the docs name no missing file."""
from __future__ import annotations

from tests.benchmarks import results_doc as rd


def test_the_committed_docs_are_what_the_results_files_give():
    assert rd.check(rd.load()) == []


def test_a_missing_path_or_results_anchor_is_named():
    doc = rd.ROOT / "docs" / "stages.md"
    text = ("`pipelines/config.py` and `pipelines/no_such.py`, `results/baselines.md`, `results/gone.md`, "
            "[results](results.md#baselines), [x](results.md#gone), [y](missing.md), `recpipe run --ds`, "
            "`$RECPIPE_HOME/runs/<ds>/summary.json`, `.recpipe/mlflow`")
    bad = rd.missing_paths(doc, text, {"pipelines", "tests", "docs"})
    assert [b.split("names ")[-1].split("links to ")[-1] for b in bad] == [
        "pipelines/no_such.py, which does not exist", "results/gone.md, which does not exist",
        "results.md#gone, which has no such section", "missing.md, which does not exist"]


def test_an_unlisted_or_bare_results_file_is_named():
    out = rd.problems({"baselines_old": {"report": {}, "meta": {}}, **{s: {"report": {}} for s in rd.QUESTIONS}})
    assert any("baselines_old.json is not listed" in o for o in out)
    assert any("has no 'meta' key" in o for o in out)


def test_the_readme_block_is_replaced_between_its_markers_only():
    results = rd.load()
    text = f"# t\n\n{rd.BEGIN}\nstale\n{rd.END}\n\n## after\n"
    out = rd.render_readme(results, text)
    assert out.startswith(f"# t\n\n{rd.BEGIN}\n") and out.endswith(f"{rd.END}\n\n## after\n")
    assert "stale" not in out and "docs/results.md#baselines" in out
