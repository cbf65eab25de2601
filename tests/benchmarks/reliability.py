"""Every trial of the two reliability issues, re-run: each case is the test (or tests) in ``make test`` that
reproduces it, run here through pytest, with what the case expects and what was observed.

    python tests/benchmarks/reliability.py [--only NAME ...]

Writes ``tests/benchmarks/results/reliability.{json,md}``: ``{"cases": {NAME: {"expected": .., "observed": ..,
"ok": true|false, "tests": [...]}}}``. A case is ok when all its tests pass; observed holds each test's outcome and,
for a failure, its first message line. About 10 minutes on 2 cores (Spark, the real SmolLM2, DeepSpeed).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.common import ROOT, machine, write_results  # noqa: E402

BI, NU, LF = "tests/integration/test_bad_inputs.py", "tests/integration/test_new_user.py", \
    "tests/integration/test_llm_faults.py"
DL, FA, LS = "tests/integration/test_day_lock.py", "tests/integration/test_faults.py", \
    "tests/integration/test_llm_stages.py"
LB, LO = "tests/unit/pipelines/test_llm_backends.py", "tests/unit/pipelines/test_loop.py"
RG = "tests/unit/pipelines/test_registry.py"

# name: (expected behaviour, tests that show it); 22.n / 23.n / 44.n: the finding's number in its issue
CASES: dict[str, tuple[str, list[str]]] = {
    "22.1_venv_binary_outside_the_checkout": (
        "`.venv/bin/recpipe` from another folder without the venv on PATH runs Spark stages (workers use the "
        "driver's Python)", [f"{NU}::test_the_venv_binary_runs_spark_stages_from_another_folder_without_the_venv_on_path"]),
    "22.2_401_echoing_the_key": (
        "a 401 whose body echoes the API key leaves it in no file, record or output ([REDACTED])",
        [f"{LF}::test_a_401_that_echoes_the_key_leaves_it_nowhere",
         "tests/unit/pipelines/test_secrets.py"]),
    "22.2_secret_scan_full_run": (
        "with the LLM and search keys set to markers, the synthetic days on the Airflow deployment leave neither "
        "in any file under the home (tables, records, caches, MLflow artifacts), Airflow's logs or PostgreSQL's files "
        "(Airflow's metadata, MLflow's store)",
        ["tests/dags/test_scheduler.py::test_no_secret_reaches_a_file_the_database_or_a_log_line"]),
    "22.3_answers_that_are_not_chat_completions": (
        "invalid JSON and JSON without choices are failed calls (retried, counted), the message names the server "
        "and what it returned", [f"{LF}::test_answers_that_are_not_chat_completions_are_failed_calls_naming_the_server"]),
    "22.4_read_only_home": ("an unwritable --home: a one-paragraph message, exit 2, no traceback",
                            [f"{DL}::test_an_unwritable_home_gets_a_message_not_a_traceback"]),
    "22.4_timestamps_1e30_nan_inf": ("the rows and field named, no cast-overflow trace",
                                     [f"{BI}::test_timestamps_no_calendar_holds_are_named_not_a_cast_overflow"]),
    "22.4_ratings_not_numbers_nan_inf": ("a non-numeric, NaN or infinite rating is refused naming rows and field",
                                         [f"{BI}::test_ratings_that_are_not_finite_numbers_are_refused"]),
    "22.4_empty_folder_as_interactions": ("the folder named and the fix, no UNABLE_TO_INFER_SCHEMA trace",
                                          [f"{BI}::test_an_empty_folder_as_the_interactions_file"]),
    "22.5_rfc4180_quotes_and_csv_folder": (
        "quoted ids with a comma, a doubled quote and a newline read as written; a folder of CSV parts read",
        [f"{BI}::test_rfc4180_quoted_fields_and_a_folder_of_csv_parts_are_read_as_written"]),
    "22.6_two_runs_of_one_day": (
        "a second run of a day is refused naming the holder; runs started together: one exits 0 with its own "
        "success record, the other exits 2", [f"{DL}::test_a_second_run_of_the_same_day_is_refused_naming_the_holder",
                                              f"{FA}::test_two_runs_of_one_day_started_together"]),
    "22.7_generic_config_and_untitled_items": (
        "sequences.yaml has no Beauty values, names the dataset by its folder, warns about untitled items",
        [f"{NU}::test_the_generic_config_names_the_dataset_by_its_folder_and_warns_of_untitled_items"]),
    "22.7_prompt_words_and_tags": (
        "the config's domain sets every prompt's words and joins tags with ', ' (defaults: the shop prompts as before)",
        ["tests/unit/features/test_text.py::test_the_prompts_take_their_domain_words_and_category_style_from_the_config"]),
    "22.7_describe_switched_off": ("describe.entities=[] loads no LLM; embed uses metadata text",
                                   [f"{NU}::test_describe_switched_off_leaves_embed_on_metadata_text"]),
    "22.7_describe_first_eta": ("the first ETA is the first batch's rate, not loading or one entity's share",
                                ["tests/unit/pipelines/test_describe_progress.py"]),
    "22.8_airflow_readme_sequence": ("the README's Airflow commands find and unpause the DAG",
                                     ["tests/dags/test_dags.py::test_the_readme_airflow_sequence_finds_and_unpauses_the_dag"]),
    "22.faults_kill_in_split_and_training": (
        "SIGKILL in split and in train_sequential, then re-runs: tables equal an uninterrupted run's, training resumes "
        "with the same epochs and valid metrics", [f"{FA}::test_runs_killed_in_split_and_in_training_then_rerun_equal_uninterrupted_ones"]),
    "22.faults_kill_in_describe": ("a killed describe keeps every committed description; the re-run generates the rest",
                                   [f"{LS}::test_killed_run_resumes_without_losing_finished_work"]),
    "22.faults_429_503_hangs": ("429 with Retry-After, 503s and answers slower than the timeout are retried",
                                [f"{LB}::test_openai_backend_retries_429_503_and_timeouts",
                                 f"{LB}::test_retrying_honours_retry_after_backs_off_exponentially_and_gives_up"]),
    "23.1_day_half_replaced": ("a re-run failing after validation leaves every table of the day as it was",
                               [f"{BI}::test_a_rerun_that_fails_after_validation_leaves_the_day_as_it_was"]),
    "23.2_bad_reply_keeps_finished_work": ("answers before a bad reply are cached, and the message's count is true",
                                           [f"{LF}::test_answers_that_are_not_chat_completions_are_failed_calls_naming_the_server"]),
    "23.3_early_stop": ("describe stops calling once describe.max_failed_fraction can no longer be met",
                        [f"{LF}::test_stops_calling_once_the_failure_budget_is_spent"]),
    "23.4_cache_key_without_the_url": ("the same model on another port reuses every cached description",
                                       [f"{LF}::test_the_same_model_on_another_port_reuses_the_cache"]),
    "23.5_stale_jit_lock": ("a stale torch extension build lock is named with the fix at once, not waited on",
                            [f"{LO}::test_a_stale_build_lock_is_named_instead_of_hanging"]),
    "23.6_concurrent_runs_records": (
        "the winner's summary stays its own; a killed holder leaves no stale day lock",
        [f"{FA}::test_two_runs_of_one_day_started_together", f"{DL}::test_a_killed_holder_leaves_no_stale_lock"]),
    "23.7_promotion_records": ("every promotion decision is kept; a challenger is judged on its own day",
                               ["tests/unit/pipelines/test_promotion.py::test_every_decision_is_kept_and_a_challenger_is_judged_on_its_own_day"]),
    "23.8_relocatable_home": ("a copied home reads and writes its own MLflow artifacts; the original is untouched",
                              ["tests/unit/pipelines/test_registry.py::test_a_copied_home_writes_and_reads_its_own_artifacts"]),
    "23.9_negative_factors": ("wals.factors=-3 is refused when the config loads",
                              ["tests/unit/pipelines/test_config.py::test_impossible_values_are_refused_when_the_config_loads"]),
    "23.9_huge_header": ("a 5 MB header is not echoed whole; messages cap samples",
                         [f"{BI}::test_a_huge_header_is_not_echoed_whole"]),
    "23.9_doubled_quote": ('a CSV field "U""quote" is stored as U"quote',
                           [f"{BI}::test_rfc4180_quoted_fields_and_a_folder_of_csv_parts_are_read_as_written"]),
    "23.9_parquet_integer_ids": ("Parquet with integer user and item ids is ingested, the ids as text",
                                 [f"{BI}::test_parquet_with_integer_ids_is_read_with_the_ids_as_text"]),
    "44.1_two_first_runs_on_a_new_home": (
        "two processes opening a new home's MLflow store at once both succeed and a later open works; a store left "
        "half-migrated (_alembic_tmp_* tables) is repaired keeping every run and version, one that cannot be is "
        "refused naming the file and the recovery command",
        [f"{RG}::test_two_processes_opening_a_new_homes_registry_at_once_both_succeed",
         f"{RG}::test_a_half_migrated_store_is_repaired_keeping_every_version",
         f"{RG}::test_a_store_that_cannot_be_repaired_is_refused_naming_it_and_the_recovery"]),
    "44.2_damaged_checkpoint": (
        "best.pt and the epoch checkpoint cut to half after a finished run: each named in a warning and moved aside, "
        "training resumes from the newest intact epoch or from scratch to the same result; best.pt written "
        "atomically on the validate-at-start path too; a damaged base-day best.pt makes the day train afresh",
        [f"{LO}::test_a_damaged_best_and_epoch_checkpoint_are_named_and_training_starts_again",
         f"{LO}::test_a_damaged_newest_epoch_falls_back_to_the_newest_intact_one",
         f"{LO}::test_best_pt_is_written_atomically_on_the_validate_at_start_path",
         "tests/unit/pipelines/test_refresh.py::test_an_incremental_llmrec_starts_from_the_base_days_final_weights"]),
    "44.3_damaged_caches_and_conversions": (
        "describe/embed/web_queries/search.sqlite, a bm25 index folder, a CTranslate2 and an ONNX conversion and the "
        "converted default LLM, written through the code and cut to half: each named in a warning, moved aside as "
        "<name>.corrupt-<time> and built again (a lock or a full disk is not taken for damage)",
        ["tests/unit/pipelines/test_damaged_caches.py"]),
    "44.4_bad_requests_to_the_server": (
        "mlflow models serve answers a missing user_id, a history or exclude that is not a list, and k of 0, -3 or "
        "above the catalogue with HTTP 400 naming the field on the message's last line (no traceback), and keeps "
        "serving; the pyfunc refuses the same requests in process",
        ["tests/integration/test_serving_http.py::"
         "test_mlflow_serves_request_time_history_and_refuses_bad_requests_with_400",
         "tests/unit/pipelines/test_serving.py::test_a_bad_request_is_refused_naming_the_field"]),
    "44.5_worker_killed_in_training": (
        "the Airflow worker running day two's train_sequential, SIGKILLed after SASRec's first epoch under the real "
        "scheduler: the task is retried, the retry resumes from the checkpoint, the day ends success, and every "
        "model's epochs, valid NDCG@10 and vectors equal the same stage run undisturbed",
        ["tests/dags/test_scheduler.py::"
         "test_a_worker_killed_in_training_was_retried_resumed_and_ended_as_an_undisturbed_day"]),
    "extra_two_stage_zero2_engines": ("a ZeRO-2 engine leaves no gradient hooks for the next training stage",
                                      [f"{LO}::test_a_zero2_engine_leaves_no_gradient_hooks_for_the_next_stage"]),
}


def _outcomes(xml: Path) -> dict[str, tuple[str, str, float]]:
    """``{file::test[param]: (passed|failed|skipped, first message line, seconds)}`` from pytest's JUnit XML."""
    out = {}
    for tc in ET.parse(xml).getroot().iter("testcase"):
        path = tc.get("classname", "").replace(".", "/") + ".py"
        status, msg = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = tc.find(tag)
            if el is not None:
                status = "skipped" if tag == "skipped" else "failed"
                msg = (el.get("message") or el.text or "").strip().splitlines()[0][:300] if (el.get("message") or
                                                                                          el.text) else ""
        out[f"{path}::{tc.get('name')}"] = (status, msg, float(tc.get("time", 0)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=[], help="run only these cases (repeatable)")
    args = ap.parse_args(argv)
    cases = {k: v for k, v in CASES.items() if not args.only or k in args.only}
    nodes = sorted({t for _, tests in cases.values() for t in tests})
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *nodes]
        print(" ".join(cmd), flush=True)
        if subprocess.run(cmd, cwd=ROOT).returncode not in (0, 1):  # 1: some failed, recorded below
            sys.exit("pytest did not run the cases (a named test not found, or an internal error: its message is "
                     "above); nothing written")
        seconds = time.perf_counter() - t0
        results = _outcomes(xml)
    out = {}
    for name, (expected, tests) in cases.items():
        got = {k: v for k, v in results.items() for t in tests if k == t or k.startswith(t.rstrip("/") + "::")
               or k.startswith(t + "[")}
        ok = bool(got) and all(s == "passed" for s, _, _ in got.values())
        observed = "; ".join(f"{k.split('::')[-1]}: {s}{(' - ' + m) if m else ''} ({sec:.1f} s)"
                             for k, (s, m, sec) in sorted(got.items())) or "no test ran"
        out[name] = {"expected": expected, "observed": observed, "ok": ok, "tests": tests}
    payload = {"cases": out, "passed": sum(c["ok"] for c in out.values()), "total": len(out),
               "seconds": round(seconds, 1),
               "machine": {**machine(), "command": "python tests/benchmarks/reliability.py"}}
    rows = [("case", "ok", "expected", "observed")]
    rows += [(n, "yes" if c["ok"] else "NO", c["expected"], c["observed"]) for n, c in out.items()]
    write_results("reliability", payload, rows,
                  [f"{payload['passed']} of {payload['total']} cases ok, {seconds:.0f} s; each case is the named "
                   "tests of make test, run by pytest (JUnit XML)"])
    return 0 if payload["passed"] == payload["total"] else 1


if __name__ == "__main__":
    sys.exit(main())
