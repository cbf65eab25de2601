"""pipelines.config: defaults, --set overrides, unknown keys and wrong types named by their dotted key."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from pipelines.config import CONF_DIR, Config, ConfigError, dump_yaml, load_config
from pipelines.context import StageContext
from pipelines.stages.train_sequential import checkpoint_settings


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_load_from_the_shipped_synthetic_config():
    cfg = load_config()
    assert cfg.dataset == "synthetic"
    assert cfg.data.source == "synthetic"
    assert cfg.wals.factors == 32          # synthetic.yaml overrides the dataclass default 64
    assert cfg.wals.regularization == 0.05
    assert cfg.eval.ks == (5, 10, 20)
    assert cfg.eval.n_negatives == 100
    assert cfg.split.short_policy == "drop"
    assert cfg.validate.min_interactions == 10  # dataclass default, not in the file
    t = cfg.train_sequential                    # nested sections: the models' own configs inside the stage's
    assert (t.sasrec.dropout, t.sasrec.hidden, t.train.lr, t.train.epochs, t.grasp.text_init) == (0.3, 64, 0.002, 30, 0.0)


def test_empty_file_gives_the_dataclass_defaults(tmp_path):
    assert load_config(_yaml(tmp_path, "")) == Config()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, (list, tuple)) else v
    return out


@pytest.mark.parametrize("path", sorted(CONF_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_key_of_every_shipped_config_reaches_the_config(path):
    written = _flat(yaml.safe_load(path.read_text()))
    loaded = _flat(dataclasses.asdict(load_config(path)))
    if written.get("dataset") == "":                                           # named after the data folder
        written["dataset"] = loaded["data.path"].rstrip("/").rsplit("/", 1)[-1] or loaded["data.source"]
    assert {k: loaded.get(k, "<missing>") for k in written} == written  # nothing dropped, renamed or changed


def test_the_shipped_configs_exist_and_differ():
    names = sorted(p.name for p in CONF_DIR.glob("*.yaml"))
    assert names == ["amazon_beauty.yaml", "sequences.yaml", "synthetic.yaml"]
    generic = load_config(CONF_DIR / "sequences.yaml", ["data.path=/data/lastfm-1k/"])
    assert generic.dataset == "lastfm-1k" and generic.data.source == "sequences"
    beauty = load_config(CONF_DIR / "amazon_beauty.yaml")
    assert beauty.dataset == "amazon-beauty"
    assert beauty.data.source == "sequences"
    assert beauty.validate.min_interactions == 1000
    assert beauty.validate.min_items == 100


def test_set_overrides_are_typed():
    cfg = load_config(None, ["wals.factors=64", "wals.alpha=2.5", "eval.ks=[1, 3]",
                             "data.path=../shared/datasets/x", "seed=7", "split.dedupe_consecutive=true"])
    assert cfg.wals.factors == 64 and type(cfg.wals.factors) is int
    assert cfg.wals.alpha == 2.5 and type(cfg.wals.alpha) is float
    assert cfg.eval.ks == (1, 3)
    assert cfg.data.path == "../shared/datasets/x"
    assert cfg.seed == 7
    assert cfg.split.dedupe_consecutive is True


def test_set_int_for_a_float_key_becomes_float():
    cfg = load_config(None, ["wals.regularization=1"])
    assert cfg.wals.regularization == 1.0 and type(cfg.wals.regularization) is float


def test_exponent_without_a_dot_is_a_float(tmp_path):
    # YAML 1.1 (PyYAML) reads 1e-8 as the string '1e-8'; a float key takes it, in a file and in --set
    conf = tmp_path / "c.yaml"
    conf.write_text("train_sequential:\n  train:\n    weight_decay: 1e-8\n")
    cfg = load_config(str(conf), ["wals.regularization=5E-2"])
    assert cfg.train_sequential.train.weight_decay == 1e-8 and cfg.wals.regularization == 0.05
    with pytest.raises(ConfigError, match=r"'wals\.alpha' must be float"):
        load_config(None, ["wals.alpha=1e-8x"])


def test_set_number_for_a_string_key_stays_a_string():
    cfg = load_config(None, ["data.path=2024", "synthetic.start_date=2026-01-03"])
    assert cfg.data.path == "2024"
    # YAML reads an unquoted 2026-01-03 as a date; the key is a string and must stay one
    assert cfg.synthetic.start_date == "2026-01-03"


def test_set_empty_value_gives_empty_string():
    assert load_config(None, ["data.path="]).data.path == ""


def test_set_a_dict_section_with_a_flow_mapping():
    # Spark keys hold dots, so a mapping value is given as YAML flow; values are coerced to str
    cfg = load_config(None, ["spark.conf={spark.executor.cores: 2, spark.sql.adaptive.enabled: 'false'}"])
    assert cfg.spark.conf == {"spark.executor.cores": "2", "spark.sql.adaptive.enabled": "false"}


def test_unquoted_date_in_the_file_is_a_string(tmp_path):
    cfg = load_config(_yaml(tmp_path, "synthetic:\n  start_date: 2025-12-31\n"))
    assert cfg.synthetic.start_date == "2025-12-31"


def test_later_set_wins():
    assert load_config(None, ["wals.factors=8", "wals.factors=16"]).wals.factors == 16


def test_unknown_top_level_key_names_it():
    with pytest.raises(ConfigError, match=r"unknown config key 'nope'"):
        load_config(None, ["nope=1"])


def test_unknown_nested_key_names_the_dotted_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'data\.nope'"):
        load_config(None, ["data.nope=1"])


def test_unknown_key_in_the_file_names_file_and_key(tmp_path):
    path = _yaml(tmp_path, "wals:\n  factors: 8\n  facotrs: 9\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "'wals.facotrs'" in str(err.value)
    assert str(path) in str(err.value)


def test_set_below_a_scalar_key_fails_naming_it():
    with pytest.raises(ConfigError, match=r"dataset"):
        load_config(None, ["dataset.x=1"])


def test_wrong_type_string_for_int_names_the_key():
    with pytest.raises(ConfigError, match=r"'wals\.factors' must be int"):
        load_config(None, ["wals.factors=abc"])


def test_bool_for_an_int_is_rejected():
    with pytest.raises(ConfigError, match=r"'wals\.factors' must be int"):
        load_config(None, ["wals.factors=true"])


def test_bool_for_a_float_is_rejected():
    with pytest.raises(ConfigError, match=r"'wals\.alpha' must be float"):
        load_config(None, ["wals.alpha=false"])


def test_float_for_an_int_is_rejected():
    with pytest.raises(ConfigError, match=r"'eval\.n_negatives' must be int"):
        load_config(None, ["eval.n_negatives=1.5"])


def test_out_of_range_dropout_is_rejected():
    with pytest.raises(ConfigError, match=r"'train_sequential\.sasrec\.dropout' must be in \[0, 1\), got 1\.0"):
        load_config(None, ["train_sequential.sasrec.dropout=1.0"])


def test_model_config_checks_name_the_full_key():
    with pytest.raises(ConfigError, match=r"'train_sequential\.sasrec\.hidden' \(65\) must be divisible by 'n_heads'"):
        load_config(None, ["train_sequential.sasrec.hidden=65"])
    with pytest.raises(ConfigError, match=r"'train_sequential\.train\.lr' must be positive, got 0\.0"):
        load_config(None, ["train_sequential.train.lr=0"])
    with pytest.raises(ConfigError, match=r"'train_sequential\.models' must be one of \['sasrec', 'grasp'\], got 'x'"):
        load_config(None, ["train_sequential.models=[x]"])


def test_keys_of_earlier_releases_say_where_they_moved():
    with pytest.raises(ConfigError, match=r"unknown config key 'train_grasp' \(it moved: use 'train_sequential'\)"):
        load_config(None, ["train_grasp.lr=0.1"])
    with pytest.raises(ConfigError, match=r"'train_sequential\.hidden' \(it moved: use 'train_sequential\.sasrec\.hidden'\)"):
        load_config(None, ["train_sequential.hidden=32"])
    with pytest.raises(ConfigError, match=r"'train_sequential\.patience' \(it moved: use 'train_sequential\.train\.patience'\)"):
        load_config(None, ["train_sequential.patience=3"])


def test_wrong_list_element_names_the_index():
    with pytest.raises(ConfigError, match=r"'eval\.ks\[1\]' must be int"):
        load_config(None, ["eval.ks=[5, x]"])


def test_scalar_for_a_list_is_rejected():
    with pytest.raises(ConfigError, match=r"'eval\.ks' must be a list"):
        load_config(None, ["eval.ks=5"])


def test_scalar_for_a_section_is_rejected():
    with pytest.raises(ConfigError, match=r"'wals' must be a mapping"):
        load_config(None, ["wals=3"])


def test_wrong_type_in_the_file_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"'split\.min_interactions' must be int"):
        load_config(_yaml(tmp_path, "split:\n  min_interactions: three\n"))


def test_set_without_equals_sign_fails():
    with pytest.raises(ConfigError, match=r"key=value"):
        load_config(None, ["wals.factors"])


def test_missing_file_and_non_mapping_file(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match=r"mapping at top level"):
        load_config(_yaml(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        load_config(_yaml(tmp_path, "a: [1\n"))


def test_config_is_frozen():
    cfg = load_config()
    with pytest.raises(AttributeError):
        cfg.seed = 1  # type: ignore[misc]


def test_a_dumped_config_reseeds_every_section_that_followed_the_top_level_seed(tmp_path):
    path = _yaml(tmp_path, dump_yaml(load_config(None)))                 # what `recpipe tune` writes
    assert load_config(path, ["seed=7"]).wals.seed == 7                   # not the 42 it was resolved to
    (tmp_path / "own").mkdir()
    own = _yaml(tmp_path / "own", dump_yaml(load_config(None, ["wals.seed=5"])))
    assert load_config(own, ["seed=7"]).wals.seed == 5                    # a seed of its own stays


def test_dump_yaml_round_trips(tmp_path):
    cfg = load_config(None, ["wals.factors=12", "eval.ks=[1, 2]", "data.path=/x"])
    assert load_config(_yaml(tmp_path, dump_yaml(cfg))) == cfg


def test_set_value_that_is_not_yaml_is_taken_as_text():
    # '*nightly' would be a YAML alias and '[x' an unclosed list: both are plain strings here
    cfg = load_config(None, ["mlflow.experiment=*nightly", "data.path=[x"])
    assert cfg.mlflow.experiment == "*nightly" and cfg.data.path == "[x"


def test_set_value_that_is_not_yaml_for_an_int_names_the_key():
    with pytest.raises(ConfigError, match=r"'wals\.factors' must be int"):
        load_config(None, ["wals.factors=[8"])


@pytest.mark.parametrize("override,key", [("wals.factors=-3", "wals.factors"), ("wals.iterations=0", "wals.iterations"),
                                          ("wals.alpha=0", "wals.alpha"), ("wals.engine=als", "wals.engine"),
                                          ("describe.backend=vllm", "describe.backend"),
                                          ("embed.engine=tensorrt", "embed.engine")])
def test_impossible_values_are_refused_when_the_config_loads(override, key):
    """Not later, inside a stage ("negative dimensions are not allowed")."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_web_and_retrieval_settings_are_checked_naming_the_key():
    cfg = load_config(None, ["web.backend=brave", "web.corpus=[a.jsonl, b.parquet]", "llmrec.mp_head.hops=3"])
    assert cfg.web.backend == "brave" and cfg.web.corpus == ("a.jsonl", "b.parquet") and cfg.llmrec.mp_head.hops == 3
    for bad, key in (("web.backend=google", "web.backend"), ("web.users=-1", "web.users"),
                     ("web.keywords=0", "web.keywords"), ("llmrec.retrieval=web", "llmrec.retrieval"),
                     ("llmrec.mp_head.layer=0", "llmrec.mp_head.layer"), ("eval.candidates=[x]", "eval.candidates")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, [bad])


def test_the_cluster_run_conf_in_infra_is_a_valid_config():
    """infra/airflow/cluster.conf.json (the documented run conf of a cluster deployment) loads: every key exists and
    every value has the right type, so a deployment copying it fails on its host names, not on a typo."""
    import json
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    conf = json.loads((repo / "infra" / "airflow" / "cluster.conf.json").read_text())
    cfg = load_config(str(repo / conf["config"]), conf["overrides"])
    assert cfg.spark.master.startswith("spark://") and cfg.describe.backend == "openai"
    assert cfg.train_sequential.distributed.launcher.startswith("deepspeed ")
    assert cfg.llmrec.distributed.device == "cuda"


def test_per_model_settings_reach_their_model_only_and_bad_ones_are_refused_naming_the_key():
    sets = ["train_sequential.per_model.sasrec.train.lr=0.0005", "train_sequential.per_model.sasrec.min_batches=40",
            "train_sequential.per_model.sasrec.sasrec={dropout: 0.6, n_heads: 1}"]
    cfg = load_config("pipelines/conf/synthetic.yaml", sets)
    t = cfg.train_sequential
    sasrec, grasp = t.for_model("sasrec"), t.for_model("grasp")
    assert (sasrec.train.lr, sasrec.min_batches, sasrec.sasrec.dropout, sasrec.sasrec.n_heads) == (0.0005, 40, 0.6, 1)
    assert sasrec.sasrec.hidden == t.sasrec.hidden and sasrec.per_model == {}  # untouched keys are the section's
    assert grasp == dataclasses.replace(t, per_model={})
    assert t.model_changes("sasrec") == {"train.lr": (t.train.lr, 0.0005), "min_batches": (0, 40),
                                         "sasrec.dropout": (t.sasrec.dropout, 0.6), "sasrec.n_heads": (t.sasrec.n_heads, 1)}
    assert t.model_changes("grasp") == {}
    # GRASP's checkpoint key does not move when only SASRec's entry is set; SASRec's does
    plain = StageContext(load_config("pipelines/conf/synthetic.yaml"), "2026-01-01", Path("/nonexistent"))
    ctx = StageContext(cfg, "2026-01-01", Path("/nonexistent"))
    assert checkpoint_settings(ctx, "grasp", 1) == checkpoint_settings(plain, "grasp", 1)
    assert checkpoint_settings(ctx, "sasrec", 1) != checkpoint_settings(plain, "sasrec", 1)
    for bad, key in [("train_sequential.per_model.sasrec.train.lrr=1", "per_model.sasrec.train.lrr"),
                     ("train_sequential.per_model.sasrec.train.lr=-1", "per_model.sasrec.train.lr"),
                     ("train_sequential.per_model.sasrec.models=[grasp]", "per_model.sasrec.models"),
                     ("train_sequential.per_model.bert.train.lr=1", "per_model"),
                     ("train_sequential.per_model.sasrec=3", "per_model.sasrec")]:
        with pytest.raises(ConfigError, match=re.escape(f"train_sequential.{key}'")):
            load_config(None, [bad])


def test_the_top_level_seed_reaches_wals_and_a_section_seed_wins():
    # a "two-seed" run with --set seed=7 re-seeded the sequential models and the LLM recommender but fitted WALS
    # with wals.seed 42 again; now wals.seed None is the top-level seed, and a seed set in the section wins
    from pipelines.config import to_dict
    from pipelines.registry import flat_params

    assert load_config(None, ["seed=7"]).wals.seed == 7
    own = load_config(None, ["seed=7", "wals.seed=3"])
    assert (own.seed, own.wals.seed) == (7, 3)
    params = flat_params(to_dict(own))                                         # what the run logs to MLflow
    assert (params["seed"], params["wals.seed"]) == ("7", "3")
    assert load_config(None, ["wals.seed=3", "seed=7"]).wals.seed == 3      # whatever the order of the --set
    assert Config().wals.seed == Config().seed == 42
    # the protocol's seeds and the synthetic data's are not training randomness: the top-level seed leaves them
    base, other = load_config(), load_config(None, ["seed=7"])
    assert (other.eval.negatives_seed, other.eval.users_seed, other.synthetic.seed) == (
        base.eval.negatives_seed, base.eval.users_seed, base.synthetic.seed)


@pytest.mark.parametrize("path", sorted(CONF_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_keep_their_effective_wals_seed(path):
    # earlier figures were made with wals.seed 42 (the old default) and seed 42: both still hold
    cfg = load_config(path, ["data.path=/x"])
    assert (cfg.seed, cfg.wals.seed) == (42, 42)


def test_spark_java_options_auto_on_a_local_master_only_and_conf_wins():
    from pipelines.context import LOCAL_JAVA_OPTIONS, spark_args

    _, local = spark_args(load_config(None, []))
    assert local["spark.driver.extraJavaOptions"] == local["spark.executor.extraJavaOptions"] == LOCAL_JAVA_OPTIONS
    _, cluster = spark_args(load_config(None, ["spark.master=spark://h:7077"]))
    assert not any(k.endswith("extraJavaOptions") for k in cluster)
    _, own = spark_args(load_config(None, ["spark.master=spark://h:7077", "spark.java_options=-Xss8m"]))
    assert own["spark.driver.extraJavaOptions"] == "-Xss8m" and "spark.executor.extraJavaOptions" not in own
    _, off = spark_args(load_config(None, ["spark.java_options="]))
    assert not any(k.endswith("extraJavaOptions") for k in off)
    _, conf = spark_args(load_config(None, ['spark.conf={"spark.driver.extraJavaOptions": "-Xmx3g"}']))
    assert conf["spark.driver.extraJavaOptions"] == "-Xmx3g"


def test_text_items_and_grasps_text_init_are_refused_together_naming_the_key():
    """Both would start the item table from the text: GRASP's PCA init would overwrite the deltas' zero start."""
    for sets in (["train_sequential.sasrec.items.source=text", "train_sequential.grasp.text_init=0.3"],
                 ["train_sequential.per_model={grasp: {sasrec: {items: {source: text}}, grasp: {text_init: 0.3}}}"]):
        with pytest.raises(ConfigError, match=r"grasp\.text_init' must be 0 when sasrec\.items\.source is 'text'"):
            load_config(None, sets)
    load_config(None, ["train_sequential.sasrec.items.id_dropout=0.5", "train_sequential.sasrec.items.source=text"])
