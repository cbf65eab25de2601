"""WebRec's search queries from the LLM's own reasoning (Zhao et al., arXiv 2511.14182, eqs. for the retrieval stage;
DRAGIN's ``generator.py`` is the closest public code): pure numpy, no model.

For the generated tokens ``i`` of a rationale:

* ``s_attn(i) = max_{j > i} A[j, i]``: the most any *later generated* token attends to token ``i`` (``A`` averaged
  over heads and the chosen layers; the last generated token has no later one and scores 0);
* ``s_ent(i) = -sum_v P_i(v) log P_i(v)``: the entropy of the predictive distribution from which token ``i`` was
  drawn (natural log);
* ``s_i = s_attn(i) * s_ent(i)``.

Sub-word scores merge into words by average pooling (a word starts at a piece with leading white space, as
byte-level BPE tokenisers decode them); stop-words, numbers and punctuation drop out; the ``k`` best distinct words,
in the order they first appear in the rationale, form the query.
"""
from __future__ import annotations

import re

import numpy as np

STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between both
but by can could did do does doing down during each either else ever every few for from further had has have having
he her here hers herself him himself his how however i if in into is it its itself just least less let like likely
may me might more most much must my myself neither next no nor not now of off often on once one only or other our
ours ourselves out over own perhaps rather really same she should since so some such than that the their theirs them
themselves then there these they this those though through thus to too under until up upon us very was we well were
what when where whether which while who whom whose why will with within without would yet you your yours yourself
yourselves buy buys bought purchase purchased purchases shopper shoppers customer customers user users product
products item items need needs needed want wants next likely probably based history recently already looking seems
something someone thing things may might enjoy enjoys prefer prefers kind type good great new best
""".split())

_WORD = re.compile(r"[a-z][a-z'\-]*[a-z]|[a-z]")


def attention_scores(attn: np.ndarray, start: int) -> np.ndarray:
    """``attn`` (T, T): row j = how much position j attends to each position (heads and layers averaged), over the
    prompt (``start`` tokens) followed by the generated tokens. Returns (T - start,): for each generated token the
    maximum attention it receives from a later generated token (0 for the last)."""
    t = attn.shape[0]
    assert attn.shape == (t, t) and 0 <= start <= t, "attn is (T, T) and start a position in it"
    gen = attn[start:, start:]                                                 # (G, G): generated x generated
    later = np.tril(np.ones_like(gen, dtype=bool), k=-1)                       # j > i (row j, column i)
    masked = np.where(later, gen, -np.inf)
    out = masked.max(axis=0)                                                   # over j for each column i
    return np.where(np.isfinite(out), out, 0.0).astype(np.float64)


def entropies(logits: np.ndarray) -> np.ndarray:
    """(G, V) logits of the distributions the generated tokens were drawn from -> (G,) entropies in nats."""
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -(np.exp(logp) * logp).sum(axis=-1)


def merge_words(pieces: list[str], scores: np.ndarray) -> list[tuple[str, float]]:
    """Sub-word ``pieces`` (each token decoded alone, leading space kept) and their scores -> ``(word, mean score)``
    in order. A piece with leading white space starts a word, a piece of punctuation is a word of its own, and a
    piece glues onto the word before it only when that word ends in a letter or digit."""
    assert len(pieces) == len(scores), "one score per piece"
    words: list[tuple[str, list[float]]] = []
    glue = False
    for piece, s in zip(pieces, scores, strict=True):
        text = piece.strip()
        if not text:                                                           # white space: a boundary
            glue = False
            continue
        if not any(ch.isalnum() for ch in text):                              # punctuation
            words.append((text, [float(s)]))
            glue = False
            continue
        if glue and not piece[0].isspace():
            words[-1] = (words[-1][0] + text, words[-1][1] + [float(s)])
        else:
            words.append((text, [float(s)]))
        glue = text[-1].isalnum()
    return [(w, float(np.mean(v))) for w, v in words]


def keywords(words: list[tuple[str, float]], k: int, stopwords: frozenset[str] = STOPWORDS) -> list[str]:
    """The ``k`` best-scored distinct content words (lower-cased), in their first order of appearance."""
    best: dict[str, tuple[float, int]] = {}
    for pos, (w, s) in enumerate(words):
        w = w.lower().strip("'-")
        if not _WORD.fullmatch(w) or w in stopwords or len(w) < 2:
            continue
        if w not in best or s > best[w][0]:
            best[w] = (s, best[w][1] if w in best else pos)
    top = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[1][1]))[:k]
    return [w for w, _ in sorted(top, key=lambda kv: kv[1][1])]


def naive_query(last_title: str) -> str:
    """The baseline query: the task as a sentence plus the newest item's title."""
    return ("what should this user buy next " + " ".join((last_title or "").split())).strip()
