"""Search backends for the ``retrieve`` stage, behind one interface: ``search(queries, k) -> [[Hit, ...], ...]``.

* ``LocalBM25``: ``bm25s`` over a document corpus held in memory (the catalogue's item documents plus any corpus
  a user supplies); the index is saved under ``RECPIPE_HOME/cache/bm25/<corpus hash>/`` and reloaded on a later
  day when the corpus has not changed. A saved index that does not load whole (a file cut short or missing, or
  another number of documents) is moved aside with a warning and built again (``pipelines.damage``).
* ``TavilySearch`` and ``BraveSearch``: HTTP clients for those web search APIs. The key comes from the environment
  (an Airflow task exports it from the connection ``recpipe_search``) and is sent only in the request header; every
  answer is cached by a hash of (backend, query, k) in ``cache/search.sqlite``, so a re-run or a later day costs
  nothing for a query already asked; requests are spaced to ``requests_per_second``; 429, 5xx, timeouts and
  transport errors are retried with backoff, honouring ``Retry-After`` (``pipelines.backends.retry``, tenacity).

Hits carry the raw text; the stage sanitises it (``features.sanitise``) before it reaches a prompt.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from features.text import content_hash
from pipelines.backends.retry import Retryable, retrying
from pipelines.cache import Cache
from pipelines.damage import open_or_rebuild


@dataclass(frozen=True)
class Hit:
    doc_id: str
    url: str
    title: str
    text: str
    score: float


class SearchBackend(Protocol):
    name: str

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """The top ``k`` hits of each query, best first."""
        ...


class SearchError(RuntimeError):
    """A search API refused a request for good (bad key, bad request) or kept failing after every retry."""


# ----------------------------------------------------------------------------- local BM25

class LocalBM25:
    name = "local"

    def __init__(self, docs: list[dict], index_dir: Path | None = None) -> None:
        """``docs``: dicts with ``doc_id, url, title, text``; ``index_dir``: where to save/reload the index."""
        if not docs:
            raise ValueError("the local search corpus is empty: the catalogue has no items and web.corpus no files")
        self.docs = docs
        self.reused = False
        if index_dir is None:
            self.index = self._build()
        else:
            self.index = open_or_rebuild(index_dir, lambda: self._load_or_build(index_dir), "bm25 index")

    def _build(self):
        import bm25s

        index = bm25s.BM25()
        corpus = [f"{d['title']} {d['text']}" for d in self.docs]
        index.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
        return index

    def _load_or_build(self, index_dir: Path):
        """The index saved in ``index_dir``, checked whole (it loads, it holds every document); built and saved
        when the folder is absent or empty."""
        import bm25s

        if index_dir.is_dir() and any(index_dir.iterdir()):
            index = bm25s.BM25.load(str(index_dir))
            n = index.scores.get("num_docs") if isinstance(index.scores, dict) else None
            if n != len(self.docs):
                raise ValueError(f"it indexes {n} documents, the corpus has {len(self.docs)}")
            self.reused = True
            return index
        import os
        import shutil

        index = self._build()
        if index_dir.is_dir():  # an empty folder (made by hand, or left over): the rename below needs its place
            index_dir.rmdir()
        tmp = index_dir.with_name(f"{index_dir.name}.tmp-{os.getpid()}")  # written aside, renamed into place: a
        index.save(str(tmp))                                              # killed run leaves no half index
        try:
            tmp.rename(index_dir)
        except OSError:  # another process saved it first
            shutil.rmtree(tmp, ignore_errors=True)
        return index

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        import bm25s

        if not queries:
            return []
        k = min(k, len(self.docs))
        toks = bm25s.tokenize(list(queries), stopwords="en", show_progress=False)
        idx, scores = self.index.retrieve(toks, k=k, show_progress=False, n_threads=1)
        out = []
        for row_i, row_s in zip(np.asarray(idx), np.asarray(scores), strict=True):
            out.append([Hit(self.docs[i]["doc_id"], self.docs[i]["url"], self.docs[i]["title"], self.docs[i]["text"],
                            float(s)) for i, s in zip(row_i, row_s, strict=True) if s > 0])
        return out


def corpus_hash(docs: list[dict]) -> str:
    return content_hash("bm25s-v1", [(d["doc_id"], d["title"], d["text"]) for d in docs])[:16]


def read_corpus(path: Path) -> list[dict]:
    """A user corpus (JSONL or Parquet, columns ``doc_id, url, title, text``) as dicts; bad rows name the file and
    the row."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"web.corpus: {path} does not exist; give JSONL or Parquet files with columns "
                                "doc_id, url, title, text")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {n}: not a JSON object ({exc.msg}); each line must be one "
                                 '{"doc_id": ..., "url": ..., "title": ..., "text": ...}') from None
    out = []
    for n, r in enumerate(rows, 1):
        if not isinstance(r, dict) or not r.get("doc_id") or not (r.get("text") or r.get("title")):
            raise ValueError(f"{path}, row {n}: needs a non-empty 'doc_id' and a 'text' or 'title'; got "
                             f"{str(r)[:120]!r}")
        out.append({"doc_id": str(r["doc_id"]), "url": str(r.get("url") or ""), "title": str(r.get("title") or ""),
                    "text": str(r.get("text") or "")})
    return out


# ----------------------------------------------------------------------------- web APIs

class HttpSearch:
    """The shared part of the web search clients: key, cache, spacing, retries; subclasses build the request and
    parse the answer."""

    name = "http"
    default_url = ""
    RETRYABLE = {408, 425, 429, 500, 502, 503, 504}

    def __init__(self, api_key: str, cache_path: Path, base_url: str = "", requests_per_second: float = 1.0,
                 timeout_s: float = 30.0, max_retries: int = 5, backoff_s: float = 1.0,
                 max_backoff_s: float = 60.0) -> None:
        import httpx

        if not api_key:
            raise SearchError(f"web.backend={self.name} needs an API key: set the environment variable named by "
                              f"web.{self.name}.api_key_env (or the Airflow connection recpipe_search)")
        self.url = (base_url or self.default_url).rstrip("/")
        self._key = api_key
        self.cache = Cache(cache_path)
        self.interval = 1.0 / requests_per_second if requests_per_second > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()
        self.attempts = retrying(max_retries, backoff_s, max_backoff_s, self._count_retry)
        self.max_retries = max_retries
        self.stats = {"requests": 0, "cached": 0, "retries": 0}
        self._client = httpx.Client(timeout=timeout_s)

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}(url={self.url!r})"

    def _count_retry(self, state) -> None:
        self.stats["retries"] += 1

    def _space(self) -> None:
        with self._lock:
            now = time.monotonic()
            wait = self._next - now
            self._next = max(now, self._next) + self.interval
        if wait > 0:
            time.sleep(wait)

    def _request(self, query: str, k: int):  # -> httpx.Request
        raise NotImplementedError

    def _parse(self, data: dict, k: int) -> list[Hit]:
        raise NotImplementedError

    def _call(self, query: str, k: int) -> list[Hit]:
        import httpx

        self._space()
        self.stats["requests"] += 1
        try:
            r = self._client.send(self._request(query, k))
        except httpx.TimeoutException:
            raise Retryable(f"timed out after {self._client.timeout.read} s") from None
        except httpx.TransportError as exc:
            raise Retryable(f"{type(exc).__name__}: {exc}") from None
        if r.status_code in self.RETRYABLE:
            raise Retryable(f"HTTP {r.status_code}: {r.text[:200]}", r.headers.get("retry-after"))
        if r.status_code != 200:
            hint = (f" (check the key in the variable named by web.{self.name}.api_key_env)"
                    if r.status_code in (401, 403) else "")
            raise SearchError(f"{self.url} answered HTTP {r.status_code}: {r.text[:200]}{hint}")
        try:
            return self._parse(r.json(), k)
        except (ValueError, LookupError, TypeError, AttributeError):
            raise SearchError(f"{self.url} answered HTTP 200 but not a {self.name} search result: "
                              f"{r.text[:200]!r}") from None

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        keys = [content_hash(self.name, q, k) for q in queries]
        found = self.cache.get_many(keys)
        out = []
        for q, key in zip(queries, keys, strict=True):
            if key in found:
                self.stats["cached"] += 1                                       # this call's repeats count too
                out.append([Hit(**h) for h in json.loads(found[key])])
                continue
            try:
                hits = self.attempts(self._call, q, k)
            except Retryable as exc:
                raise SearchError(f"{self.url}: gave up after {self.max_retries + 1} attempts; last: {exc}") from None
            found[key] = json.dumps([asdict(h) for h in hits]).encode()  # the same query twice is asked once
            self.cache.put_many({key: found[key]})
            out.append(hits)
        return out


class TavilySearch(HttpSearch):
    """Tavily's search API: ``POST {base}/search`` with a bearer key; answer ``{"results": [{"title", "url",
    "content", "score"}]}``."""

    name = "tavily"
    default_url = "https://api.tavily.com"

    def _request(self, query: str, k: int):
        return self._client.build_request("POST", f"{self.url}/search",
                                          headers={"Authorization": f"Bearer {self._key}"},
                                          json={"query": query, "max_results": k, "search_depth": "basic"})

    def _parse(self, data: dict, k: int) -> list[Hit]:
        return [Hit(str(r.get("url") or f"tavily:{i}"), str(r.get("url") or ""), str(r.get("title") or ""),
                    str(r.get("content") or ""), float(r.get("score") or 0.0))
                for i, r in enumerate(data["results"][:k])]


class BraveSearch(HttpSearch):
    """Brave's web search API: ``GET {base}/res/v1/web/search?q=..&count=..`` with ``X-Subscription-Token``; answer
    ``{"web": {"results": [{"title", "url", "description"}]}}`` (ranked, no score: 1 / rank)."""

    name = "brave"
    default_url = "https://api.search.brave.com"

    def _request(self, query: str, k: int):
        return self._client.build_request("GET", f"{self.url}/res/v1/web/search",
                                          params={"q": query, "count": min(k, 20)},
                                          headers={"X-Subscription-Token": self._key, "Accept": "application/json"})

    def _parse(self, data: dict, k: int) -> list[Hit]:
        results = (data.get("web") or {"results": []})["results"]
        return [Hit(str(r.get("url") or f"brave:{i}"), str(r.get("url") or ""), str(r.get("title") or ""),
                    str(r.get("description") or ""), 1.0 / (i + 1)) for i, r in enumerate(results[:k])]


WEB_BACKENDS = {"tavily": TavilySearch, "brave": BraveSearch}
