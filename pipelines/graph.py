"""The one stage table: every stage's name, upstream stages, Airflow pool and secrets, in pipeline order.

The local runner (``pipelines.runner``), the nightly DAG (``dags/nightly_refresh.py``) and the tests read this
table; nothing else lists the stages. A stage named ``x`` is the module ``pipelines/stages/x.py`` with
``run(ctx) -> StageResult``. Adding a stage is one entry here and one new module there.

Standard library only: the DAG file imports this module while Airflow parses it, which must stay light.
"""
from __future__ import annotations

from dataclasses import dataclass

LLM_POOL = "recpipe_llm"      # describe/embed: model-bound work, sized to the GPUs or the LLM server's quota
TRAIN_POOL = "recpipe_train"  # DeepSpeed training of the sequential models, sized to the training nodes
LLMREC_POOL = "recpipe_llmrec"  # the LLM recommender's training: GPU nodes in production
DEFAULT_POOL = "default_pool"


@dataclass(frozen=True)
class Secret:
    """An Airflow connection whose password a task exports into its environment as ``env`` before it runs.

    Outside Airflow the variable comes from the worker's environment. Its value is never logged or stored.
    """

    conn_id: str
    env: str


@dataclass(frozen=True)
class Stage:
    name: str
    upstream: tuple[str, ...] = ()
    pool: str = DEFAULT_POOL
    secrets: tuple[Secret, ...] = ()
    distributed: bool = False  # runs on every rank under torchrun/deepspeed (the others run on rank 0 only)
    models: tuple[str, ...] = ()  # models it trains: ``runs/<ds>/<stage>/<model>/vectors.npz``, scored by evaluate

    @property
    def module(self) -> str:
        return f"pipelines.stages.{self.name}"


LLM_KEY = Secret("recpipe_llm", "RECPIPE_LLM_API_KEY")  # describe.backend=openai: the server's API key
SEARCH_KEY = Secret("recpipe_search", "RECPIPE_SEARCH_API_KEY")  # web.backend=tavily|brave: the search API's key

# In a valid run order: every stage comes after its upstream stages. ``wals`` and the LLM branch
# (describe >> embed >> neighbours >> train_sequential) run side by side after split; the LLM recommender needs both
# and runs after train_sequential (whose models its cascade re-ranks) and after the web branch (web_queries >>
# retrieve: WebRec's queries and their documents, in the LLM pool); all join at evaluate.
STAGES: tuple[Stage, ...] = (
    Stage("ingest"),
    Stage("validate", ("ingest",)),
    Stage("split", ("validate",)),
    Stage("wals", ("split",)),
    Stage("describe", ("split",), pool=LLM_POOL, secrets=(LLM_KEY,)),
    Stage("embed", ("describe",), pool=LLM_POOL),
    Stage("neighbours", ("embed",)),
    Stage("train_sequential", ("neighbours",), pool=TRAIN_POOL, distributed=True, models=("sasrec", "grasp")),
    Stage("web_queries", ("split",), pool=LLM_POOL),
    Stage("retrieve", ("web_queries", "describe"), pool=LLM_POOL, secrets=(SEARCH_KEY,)),
    Stage("train_llmrec", ("wals", "embed", "train_sequential", "retrieve"), pool=LLMREC_POOL, distributed=True,
          models=("llmrec",)),
    Stage("evaluate", ("wals", "train_sequential", "train_llmrec")),
    Stage("register", ("evaluate",)),
)

BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
ORDER: tuple[str, ...] = tuple(s.name for s in STAGES)


def check(stages: tuple[Stage, ...] = STAGES) -> None:
    """Raise ``ValueError`` unless names are unique and every upstream stage is listed earlier (no cycles)."""
    seen: set[str] = set()
    for s in stages:
        if s.name in seen:
            raise ValueError(f"stage '{s.name}' is listed twice")
        late = [u for u in s.upstream if u not in seen]
        if late:
            raise ValueError(f"stage '{s.name}' has upstream {late} that is not listed before it")
        seen.add(s.name)


def select(until: str | None = None, stages: str | None = None) -> list[str]:
    """The stages to run, in pipeline order: all, up to and including ``until``, or the comma-separated ``stages``."""
    if until and stages:
        raise ValueError("use either --until or --stages, not both")
    if stages:
        names = [s.strip() for s in stages.split(",") if s.strip()]
        unknown = [s for s in names if s not in BY_NAME]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are {list(ORDER)}")
        return [s for s in ORDER if s in names]
    if until:
        if until not in BY_NAME:
            raise ValueError(f"unknown stage '{until}'; stages are {list(ORDER)}")
        return list(ORDER[: ORDER.index(until) + 1])
    return list(ORDER)


check()
