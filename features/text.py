"""Pure text transforms for the LLM stages: prompts, metadata texts, content hashes, degenerate-output checks.

Prompts are versioned (``ITEM_PROMPT_VERSION``, ``USER_PROMPT_VERSION``): the version is part of every cache
key, so editing a template and bumping its version regenerates exactly the entities it touches.
Prompts hold only facts from the catalogue and ask the model to use only those facts (small models invent).
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

Message = dict[str, str]

ITEM_PROMPT_VERSION = "item-v1"
USER_PROMPT_VERSION = "user-v1"



@dataclass(frozen=True)
class Domain:
    """The words the prompts use for what is recommended, to whom and where (the config's ``domain``). The
    defaults are a shop's and give the prompts their original text (so their cache keys stay). ``categories``:
    ``path`` (a category path, broad to narrow: joined with ' > ', the last is the leaf) or ``tags`` (unordered
    labels: joined with ', ', the first stands for the item)."""

    item: str = "product"
    items: str = "products"
    user: str = "shopper"
    catalogue: str = "an online shop"
    shop: str = "a shop"
    history: str = "purchases"
    audience: str = "who would buy it"
    user_traits: str = "taste, price level and favourite categories"
    inventions: str = "ingredients, sizes or prices"
    reason_inventions: str = "ingredients or prices"
    categories: str = "path"
    choose: str = "buy"  # what a user does with the next item (the LLM recommender's prompt)

    def __post_init__(self) -> None:
        if self.categories not in ("path", "tags"):
            raise ValueError(f"domain.categories must be 'path' or 'tags', got {self.categories!r}")


SHOP = Domain()


def item_system(d: Domain = SHOP) -> str:
    return (f"You write short, factual {d.item} descriptions for {d.catalogue}. "
            f"Use only the facts given. Do not invent {d.inventions}.")


def user_system(d: Domain = SHOP) -> str:
    return (f"You summarise a {d.user}'s taste for a recommender system. "
            f"Use only the {d.history} given. Do not invent {d.items}.")


ITEM_SYSTEM, USER_SYSTEM = item_system(), user_system()


def categories(item: dict) -> list[str]:
    """The item's categories without empty or 'unknown' ones, in the catalogue's order."""
    return [c for c in (item.get("categories") or []) if c and c.lower() != "unknown"]


def category_text(cats: list[str], d: Domain = SHOP) -> str:
    return (" > " if d.categories == "path" else ", ").join(cats)


def leaf(cats: list[str], d: Domain = SHOP) -> str | None:
    """The one category that stands for the item: a path's last, a tag list's first."""
    return (cats[-1] if d.categories == "path" else cats[0]) if cats else None


def _clip(text: str | None, words: int) -> str:
    parts = (text or "").split()
    return " ".join(parts[:words]) + (" ..." if len(parts) > words else "")


def _price(price: float | None) -> str | None:
    return None if price is None or price != price or price <= 0 else f"${price:,.2f}"


def item_facts(item: dict, desc_words: int = 40, d: Domain = SHOP) -> str:
    """The catalogue facts of one item as ``Field: value`` lines (missing fields left out).

    ``item`` has the ``items`` table's columns: title, brand, categories (list), description, price.
    """
    lines = [("Title", _clip(item.get("title"), 30)), ("Brand", item.get("brand")),
             ("Category", category_text(categories(item), d)), ("Price", _price(item.get("price"))),
             ("Details", _clip(item.get("description"), desc_words))]
    return "\n".join(f"{k}: {v}" for k, v in lines if v)


def item_messages(item: dict, desc_words: int = 40, d: Domain = SHOP) -> list[Message]:
    return [{"role": "system", "content": item_system(d)},
            {"role": "user", "content": item_facts(item, desc_words, d)
             + f"\nIn two sentences, describe this {d.item} and {d.audience}."}]


def history_line(item: dict, title_words: int = 12, d: Domain = SHOP) -> str:
    extra = ", ".join(x for x in (leaf(categories(item), d), _price(item.get("price"))) if x)
    return _clip(item.get("title"), title_words) + (f" ({extra})" if extra else "")


def _newest_first(d: Domain) -> str:
    return f"{d.history[:1].upper()}{d.history[1:]}, newest first:\n"


def user_facts(history: Sequence[dict], max_items: int = 8, title_words: int = 12, d: Domain = SHOP) -> str:
    """A user's purchases, newest first, at most ``max_items`` lines. ``history`` is oldest first."""
    recent = list(history)[::-1][:max_items]
    return _newest_first(d) + "\n".join(f"- {history_line(it, title_words, d)}" for it in recent)


def user_messages(history: Sequence[dict], max_items: int = 8, title_words: int = 12,
                  d: Domain = SHOP) -> list[Message]:
    return [{"role": "system", "content": user_system(d)},
            {"role": "user", "content": user_facts(history, max_items, title_words, d)
             + f"\nIn two sentences, describe this {d.user}'s {d.user_traits}."}]


def item_metadata_text(item: dict, d: Domain = SHOP) -> str:
    """The no-LLM text of an item (title and attributes): the ``metadata`` text source."""
    return item_facts(item, desc_words=40, d=d).replace("\n", ". ")


def user_metadata_text(history: Sequence[dict], max_items: int = 5, title_words: int = 10, d: Domain = SHOP) -> str:
    """The no-LLM text of a user: their recent purchases' titles and leaf categories, newest first.

    Shorter than the LLM prompt (5 items, 10-word titles, no prices) because the encoder truncates at 128 word
    pieces and its cost grows with length.
    """
    return "; ".join(_title_and_leaf(it, title_words, d) for it in list(history)[::-1][:max_items])


def _title_and_leaf(item: dict, title_words: int, d: Domain) -> str:
    """An item's clipped title and, in brackets, the category that stands for it."""
    c = leaf(categories(item), d)
    return _clip(item.get("title"), title_words) + (f" ({c})" if c else "")


RATIONALE_PROMPT_VERSION = "rationale-v1"
def rationale_system(d: Domain = SHOP) -> str:
    return f"You help {d.shop}'s search engine. Use only the {d.history} given. Do not invent brands or {d.items}."


RATIONALE_SYSTEM = rationale_system()


def rationale_messages(history: Sequence[dict], max_items: int = 5, title_words: int = 10,
                       d: Domain = SHOP) -> list[Message]:
    """The web_queries stage's prompt: the user's last ``max_items`` purchases, newest first (title and leaf
    category), and the request for a short rationale of what the user needs next (WebRec's reasoning prompt).
    ``history`` is oldest first. Kept short: the prompt is read twice per user (generation and scoring)."""
    recent = list(history)[::-1][:max_items]
    return [{"role": "system", "content": rationale_system(d)},
            {"role": "user", "content": _newest_first(d) + "\n".join(f"- {_title_and_leaf(it, title_words, d)}"
                                                                      for it in recent)
             + f"\nIn one or two sentences, say what {d.item} this {d.user} is likely to need next and why."}]


def document_text(item: dict, description: str | None = None, d: Domain = SHOP) -> str:
    """An item's document in the local search corpus: its catalogue facts on one line, then the LLM description
    when there is one."""
    facts = item_metadata_text(item, d)
    return f"{facts}. {' '.join(description.split())}" if description else facts


REASON_PROMPT_VERSION = "reason-v1"
def reason_system(d: Domain = SHOP) -> str:
    return (f"You explain {d.shop}'s recommendation to a {d.user} in one or two sentences. Use only the facts given. "
            f"Do not invent brands, {d.items}, {d.reason_inventions}.")


REASON_SYSTEM = reason_system()


def reason_facts(history: Sequence[dict], item: dict, max_items: int = 5, title_words: int = 12,
                 d: Domain = SHOP) -> str:
    """The facts a reason may use: the user's recent purchases (titles, newest first) and the recommended item's
    title, brand, category and price. ``history`` is oldest first."""
    recent = list(history)[::-1][:max_items]
    rec = [("Title", _clip(item.get("title"), 30)), ("Brand", item.get("brand")),
           ("Category", category_text(categories(item), d)), ("Price", _price(item.get("price")))]
    return ("Recent " + d.history + ", newest first:\n" + "\n".join(f"- {_clip(it.get('title'), title_words)}" for it in recent)
            + "\nRecommended item:\n" + "\n".join(f"{k}: {v}" for k, v in rec if v))


def reason_messages(history: Sequence[dict], item: dict, d: Domain = SHOP) -> list[Message]:
    return [{"role": "system", "content": reason_system(d)},
            {"role": "user", "content": reason_facts(history, item, d=d)
             + f"\nIn one or two sentences, tell the {d.user} why this item suits them."}]


STOPWORDS = frozenset("""a about after all also an and any are as at be because been but by can could did do does for
from had has have he her his how i if in into is it its just like may me more most my no not now of on one only or
other our out over she so some such than that the their them then there these they this those through to too up us
very was we were what when which while who why will with would you your yours this item product bought buy buying
purchase purchased purchases recommend recommended suits suit shopper perfect great good love loves""".split())


def content_words(text: str) -> list[str]:
    """Lower-cased words of ``text`` that carry content: not stop words, at least 3 characters."""
    return [w for w in (x.lower().strip("'") for x in _WORD.findall(text or "")) if len(w) > 2 and w not in STOPWORDS]


def grounded_share(reason: str, facts: str) -> float:
    """The share of the reason's content words that occur in the facts (0 when it has none)."""
    words = content_words(reason)
    known = set(content_words(facts))
    return sum(w in known for w in words) / len(words) if words else 0.0


def _ngrams(text: str, n_max: int = 4) -> set[str]:
    words = [w.lower() for w in _WORD.findall(text or "")]
    return {" ".join(words[i:i + n]) for n in range(1, n_max + 1) for i in range(len(words) - n + 1)}


def unsupported_terms(reason: str, facts: str, vocabulary: set[str]) -> list[str]:
    """Brands or product types from ``vocabulary`` (lower-cased phrases of up to 4 words) that the reason names and
    the facts do not contain."""
    return sorted((_ngrams(reason) & vocabulary) - _ngrams(facts))


def content_hash(*parts: object) -> str:
    """A stable SHA-256 over JSON-serialisable parts (prompt version, model key, messages or text)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


_WORD = re.compile(r"[A-Za-z0-9']+")


def degenerate_reason(text: str, min_words: int = 5) -> str | None:
    """Why ``text`` is not a usable description, or None when it is.

    Flags empty or very short output, output that is mostly not words, and repetition loops (fewer than
    half of the word trigrams distinct, one word making up more than a third of a long output, more than a quarter
    of a long output's words sharing their first four letters, as in "shine shiner shiny shining", or a word of 20+
    characters in which one four-letter piece comes three times, as in "remberemirerembermire...": a small model
    stuck in a loop, seen in generated reasons; a long catalogue name run together has no such repeats).
    """
    words = [w.lower() for w in _WORD.findall(text or "")]
    if not words:
        return "empty"
    if len(words) < min_words:
        return f"too short ({len(words)} words)"
    if sum(len(w) for w in words) < 0.5 * len(re.sub(r"\s", "", text)):
        return "mostly non-word characters"
    if any(len(w) >= 20 and max(Counter(w[i:i + 4] for i in range(len(w) - 3)).values()) >= 3 for w in words):
        return "repetition inside a word"
    if len(words) >= 12:
        grams = list(zip(words, words[1:], words[2:], strict=False))  # trigrams: shorter by design
        if len(set(grams)) < 0.5 * len(grams):
            return "repetition loop"
        top = max(words.count(w) for w in set(words) if len(w) > 3) if any(len(w) > 3 for w in words) else 0
        if top > len(words) / 3:
            return "one word repeated"
        stems = Counter(w[:4] for w in words if len(w) > 4)
        if stems and max(stems.values()) > len(words) / 4:
            return "one stem repeated"
    return None


def clean_output(text: str) -> str:
    """Strip whitespace and a trailing unfinished sentence (generation stopped by the token bound)."""
    text = " ".join((text or "").split())
    if text and text[-1] not in ".!?\"')" and re.search(r"[.!?]", text):
        text = text[: max(text.rfind("."), text.rfind("!"), text.rfind("?")) + 1]
    return text
