"""The models' configs, declared once: standard library only (no torch), validated in ``__post_init__`` (peft style).

The pipeline's typed config nests them (``train_sequential.sasrec``, ``train_sequential.grasp``) and the modules
take them as they are; sizes that come from the data (number of items, text dimension) are constructor arguments
of the modules, not config keys. A bad value raises ``FieldError`` naming the field; the config loader adds the
section (``train_sequential.sasrec.hidden``).
"""
from __future__ import annotations

from dataclasses import dataclass


class FieldError(ValueError):
    """A bad config value: ``field`` names it, ``problem`` says what is wrong with it."""

    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"'{field}' {problem}")


@dataclass(frozen=True)
class ItemsConfig:
    """How the backbone represents an item (``models.items``): ``source`` ``id`` (a free vector per item, SASRec's
    own), ``pca`` (the same table started from the whitened principal components of the item text, at the random
    init's scale) or ``text`` (a learned linear map of the item's frozen text vector plus a per-item delta whose norm is at
    most ``delta_max``, 0 = unbounded; in a training step a share ``id_dropout`` of the items lose their delta, so
    the text path alone must rank them; both are ignored with ``id`` and ``pca``). An item that never appears in training keeps
    delta 0."""

    source: str = "id"
    delta_max: float = 0.0
    id_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.source not in ("id", "pca", "text"):
            raise FieldError("source", f"must be one of ['id', 'pca', 'text'], got {self.source!r}")
        if self.delta_max < 0:
            raise FieldError("delta_max", f"must be 0 (unbounded) or a positive norm, got {self.delta_max}")
        if not 0.0 <= self.id_dropout < 1.0:
            raise FieldError("id_dropout", f"must be in [0, 1), got {self.id_dropout}")


@dataclass(frozen=True)
class SASRecConfig:
    """The SASRec backbone (``models.sasrec``): causal self-attention over the last ``max_len`` items."""

    max_len: int = 50
    hidden: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2         # embeddings, residuals and attention weights
    item_init_std: float = 0.02  # std of the random item embeddings at the start
    # ``prenorm``: GPT-style pre-norm blocks (a 4x-wide GELU feed-forward); ``original``: Kang & McAuley's reference
    # block (the layer norm on the attention's query only, a feed-forward as wide as ``hidden`` with ReLU, Xavier
    # init), as in SASRec.pytorch and the CE reproductions
    block: str = "prenorm"
    # let every position also attend to the left padding (zero inputs, so keys and values are the projections'
    # biases: a learned "attend to nothing"), as SASRec.pytorch and the CE reproductions do by masking only the future
    attend_padding: bool = False
    items: ItemsConfig = ItemsConfig()  # the item table: ids, or text plus a per-item delta (``models.items``)

    def __post_init__(self) -> None:
        for name in ("max_len", "hidden", "n_layers", "n_heads"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be at least 1, got {getattr(self, name)}")
        if self.hidden % self.n_heads:
            raise FieldError("hidden", f"({self.hidden}) must be divisible by 'n_heads' ({self.n_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise FieldError("dropout", f"must be in [0, 1), got {self.dropout}")
        if self.item_init_std <= 0:
            raise FieldError("item_init_std", f"must be positive, got {self.item_init_std}")
        if self.block not in ("prenorm", "original"):
            raise FieldError("block", f"must be one of ['prenorm', 'original'], got {self.block!r}")


@dataclass(frozen=True)
class GRASPConfig:
    """GRASP's holistic attention (``models.grasp``) on a SASRec backbone; the module docstring explains each."""

    enrich_items: bool = True      # the item table gets the text through a second adapter
    user_neighbours: bool = False  # similar users' mean text in the global attention (the paper's; see models.grasp)
    own_user_text: bool = False    # the user's own text as input (it summarises the training targets)
    text_init: float = 0.0         # > 0: start the backbone's item embeddings from the text (PCA), at this std
    item_adapter_ids: bool = True  # the item adapter also reads the id embedding (False: text and neighbours only)

    def __post_init__(self) -> None:
        if self.text_init < 0:
            raise FieldError("text_init", f"must be 0 (off) or a positive std, got {self.text_init}")


@dataclass(frozen=True)
class MPHeadConfig:
    """WebRec's MP-Head (``models.mp_head``): an extra, gated attention head at decoder layer ``layer`` (1-based,
    as the paper counts: 2 = the second layer) over the prompt's retrieved-document tokens.

    ``hops``: rounds of message passing among the ``top_k`` document tokens most related to the learnable task
    feature (0 = the LIN-head: the extra head over the linearly projected entities, no message passing).
    """

    layer: int = 2
    top_k: int = 32
    hops: int = 1

    def __post_init__(self) -> None:
        if self.layer < 1:
            raise FieldError("layer", f"counts decoder layers from 1, got {self.layer}")
        if self.top_k < 1:
            raise FieldError("top_k", f"must be at least 1, got {self.top_k}")
        if not 0 <= self.hops <= 8:
            raise FieldError("hops", f"must be 0 (LIN-head) to 8, got {self.hops}")


@dataclass(frozen=True)
class LLMRecConfig:
    """The LLM recommender (``models.llmrec``): WALS factors as soft tokens through two projectors into a
    Llama-family backbone, LoRA adapters, and an item head that ranks every item.

    ``layers``: keep only the first N decoder layers (0 = all): a CPU budget knob. ``soft_tokens``: the user and each
    history item as a projected WALS factor (False: the prompt holds titles only). ``titles``: each history item is
    followed by its title (at most ``title_tokens`` tokens). ``user_skip``: the user's fold-in factor also reaches the
    head directly, the head starting from the WALS score ``u . f_i`` (only with ``soft_tokens``).
    ``retrieval``: ``none``; ``prompt`` (vanilla RAG: the user's top ``docs`` retrieved documents, ``doc_tokens``
    tokens each, lead the prompt); ``mp_head`` (the same prompt plus WebRec's MP-Head over the document tokens,
    ``mp_head``; ``mp_head.hops=0`` is the LIN-head).
    """

    layers: int = 0
    max_history: int = 10
    soft_tokens: bool = True
    titles: bool = True
    title_tokens: int = 12
    projector_hidden: int = 512
    head_dim: int = 128
    user_skip: bool = True
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    retrieval: str = "none"
    docs: int = 3
    doc_tokens: int = 32
    mp_head: MPHeadConfig = MPHeadConfig()

    def __post_init__(self) -> None:
        if self.retrieval not in ("none", "prompt", "mp_head"):
            raise FieldError("retrieval", f"must be one of none, prompt, mp_head; got {self.retrieval!r}")
        for name in ("max_history", "title_tokens", "projector_hidden", "head_dim", "lora_r", "docs", "doc_tokens"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be at least 1, got {getattr(self, name)}")
        if self.layers < 0:
            raise FieldError("layers", f"must be 0 (all) or a positive number of decoder layers, got {self.layers}")
        if not (self.soft_tokens or self.titles):
            raise FieldError("titles", "must be true when soft_tokens is false: the prompt would hold no history")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise FieldError("lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        if not self.lora_targets:
            raise FieldError("lora_targets", "must name at least one module (e.g. q_proj, v_proj)")

