"""Search backends: the local bm25s index, the user corpus reader, and the Tavily and Brave clients against a fake
server on 127.0.0.1 (key in the header only, retries honouring Retry-After, the cache, clear errors)."""
from __future__ import annotations

import json

import pytest

from pipelines.backends.search import BraveSearch, LocalBM25, SearchError, TavilySearch, corpus_hash, read_corpus
from tests.search_server import KEY, Behaviour, LocalSearchServer

DOCS = [{"doc_id": f"item:{i}", "url": "", "title": t, "text": x} for i, (t, x) in enumerate([
    ("Argan oil", "cold pressed oil for dry frizzy hair"),
    ("Retinol cream", "night cream with retinol for fine lines and wrinkles"),
    ("Mineral sunscreen", "zinc oxide sunscreen spf 50 for sensitive skin"),
    ("Nail polish", "glossy red nail lacquer"),
])]


def test_local_bm25_ranks_the_matching_document_first_and_reloads_its_saved_index(tmp_path):
    idx = tmp_path / "bm25" / corpus_hash(DOCS)
    first = LocalBM25(DOCS, idx)
    hits = first.search(["retinol wrinkles night", "sunscreen for sensitive skin", "zzz"], 2)
    assert hits[0][0].doc_id == "item:1" and hits[1][0].doc_id == "item:2" and hits[2] == []
    assert not first.reused and idx.exists()
    again = LocalBM25(DOCS, idx)
    assert again.reused and [h.doc_id for h in again.search(["dry hair oil"], 1)[0]] == ["item:0"]
    assert corpus_hash(DOCS) != corpus_hash(DOCS[:3])                          # a changed corpus: a new index


def test_user_corpus_jsonl_and_parquet_and_errors_name_the_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "crawl.jsonl"
    good.write_text(json.dumps({"doc_id": "w1", "url": "https://x", "title": "T", "text": "body"}) + "\n\n")
    assert read_corpus(good) == [{"doc_id": "w1", "url": "https://x", "title": "T", "text": "body"}]
    pq.write_table(pa.table({"doc_id": ["p1"], "url": [None], "title": ["Pq"], "text": ["x"]}), tmp_path / "c.parquet")
    assert read_corpus(tmp_path / "c.parquet")[0]["url"] == ""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"doc_id": "a", "text": "ok"}\n{"doc_id": "b", "text": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: not a JSON object"):
        read_corpus(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"doc_id": "", "text": "no id"}\n')
    with pytest.raises(ValueError, match=r"row 1: needs a non-empty 'doc_id'"):
        read_corpus(empty)
    with pytest.raises(FileNotFoundError, match="web.corpus"):
        read_corpus(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("cls", [TavilySearch, BraveSearch])
def test_web_clients_retry_429_and_503_then_cache_the_answer(tmp_path, cls):
    with LocalSearchServer(Behaviour(n_429=2, n_503=1)) as srv:
        client = cls(KEY, tmp_path / "search.sqlite", srv.base_url, requests_per_second=0, backoff_s=0.01)
        hits = client.search(["argan oil dry hair", "argan oil dry hair"], 2)
        assert hits[0][0].url == "https://shop.example/argan" and hits[0] == hits[1]
        assert client.stats["retries"] == 3 and srv.behaviour.requests == 4  # the repeated query asked once
        again = cls(KEY, tmp_path / "search.sqlite", srv.base_url, requests_per_second=0)
        assert again.search(["argan oil dry hair"], 2) == [hits[0]] and srv.behaviour.requests == 4
        assert again.stats["cached"] == 1 and client.stats["cached"] == 1
        assert KEY not in repr(client)


@pytest.mark.parametrize("cls", [TavilySearch, BraveSearch])
def test_web_clients_fail_clearly_without_leaking_the_key(tmp_path, cls):
    with pytest.raises(SearchError, match="api_key_env"):
        cls("", tmp_path / "s.sqlite", "http://127.0.0.1:9")
    with LocalSearchServer() as srv:
        wrong = cls("wrong-key-abcdef", tmp_path / "s.sqlite", srv.base_url, requests_per_second=0)
        with pytest.raises(SearchError, match="HTTP 401.*check the key") as err:
            wrong.search(["argan"], 2)
        assert "wrong-key-abcdef" not in str(err.value)
    with LocalSearchServer(Behaviour(n_429=10)) as srv:
        busy = cls(KEY, tmp_path / "s2.sqlite", srv.base_url, requests_per_second=0, max_retries=2, backoff_s=0.01)
        with pytest.raises(SearchError, match="gave up after 3 attempts"):
            busy.search(["argan"], 2)
    with LocalSearchServer(Behaviour(raw_body="<html>captcha</html>")) as srv:
        with pytest.raises(SearchError, match="not a .* search result"):
            cls(KEY, tmp_path / "s3.sqlite", srv.base_url, requests_per_second=0).search(["argan"], 2)


def test_web_client_times_out_then_succeeds_and_spaces_requests(tmp_path):
    import time

    with LocalSearchServer(Behaviour(slow_first=1, slow_s=1.0)) as srv:
        client = TavilySearch(KEY, tmp_path / "s.sqlite", srv.base_url, requests_per_second=20, timeout_s=0.3,
                              backoff_s=0.01)
        t0 = time.perf_counter()
        hits = client.search(["retinol", "sunscreen", "argan"], 1)
        assert [h[0].title for h in hits] == ["Retinol night cream", "Mineral sunscreen SPF 50", "Argan oil for dry hair"]
        assert client.stats["retries"] == 1 and time.perf_counter() - t0 >= 3 / 20
