"""Every cache and conversion a run reads, cut short by hand (issue 44, 3): written for real through the code, the
file cut to half, opened again. Each is detected, named in a warning, moved aside as ``<name>.corrupt-<time>`` and
built again, instead of failing every later run with a raw traceback."""
from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest

from pipelines.cache import Cache

pytestmark = pytest.mark.usefixtures("private_model_cache")  # conversions are damaged here: each test's own


def _cut_to_half(path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _aside(path) -> list:
    return sorted(path.parent.glob(f"{path.name}.corrupt-*"))


@pytest.mark.parametrize("name", ["describe", "embed", "web_queries", "search"])
def test_a_cache_cut_to_half_is_named_moved_aside_and_started_empty(tmp_path, capsys, name):
    """describe.sqlite, embed.sqlite, web_queries.sqlite and search.sqlite are all opened through Cache."""
    path = tmp_path / "cache" / f"{name}.sqlite"
    rng = np.random.default_rng(0)
    with Cache(path) as c:
        c.put_many({f"k{i}": rng.bytes(300) for i in range(3000)})
    _cut_to_half(path)
    with Cache(path) as c:                                  # before: sqlite3.DatabaseError: ... malformed
        assert len(c) == 0
        c.put_many({"k1": b"again"})
        assert c.get_many(["k1", "k2"]) == {"k1": b"again"}
    err = capsys.readouterr().err
    moved = _aside(path)
    assert len(moved) == 1
    assert f"WARNING: the cache {path} is damaged (DatabaseError: database disk image is malformed): moved " \
           f"aside as {moved[0].name}; starting with an empty cache" in err
    with Cache(path) as c:                                  # the next night: the rebuilt cache, no warning
        assert c.get_many(["k1"]) == {"k1": b"again"}
    assert "WARNING" not in capsys.readouterr().err


def test_a_file_that_is_not_a_database_is_moved_aside_and_its_wal_never_meets_the_new_one(tmp_path, capsys):
    path = tmp_path / "embed.sqlite"
    path.write_bytes(b"not a database, " * 400)
    wal = tmp_path / "embed.sqlite-wal"
    wal.write_bytes(b"x" * 100)
    with Cache(path) as c:
        c.put_many({"a": b"1"})
        assert c.get_many(["a"]) == {"a": b"1"}
    assert len(_aside(path)) == 1
    assert not wal.exists() or b"x" * 100 not in wal.read_bytes()
    assert "file is not a database" in capsys.readouterr().err


def test_a_lock_or_a_full_disk_is_not_damage():
    from pipelines.cache import sqlite_damage

    assert sqlite_damage(sqlite3.OperationalError("database is locked")) is None
    assert sqlite_damage(sqlite3.OperationalError("database or disk is full")) is None
    assert sqlite_damage(sqlite3.DatabaseError("database disk image is malformed")).endswith("malformed")


def test_open_or_rebuild_raises_what_is_not_damage_and_a_second_failure(tmp_path):
    from pipelines.damage import open_or_rebuild

    path = tmp_path / "thing"
    path.write_text("x")

    def denied():
        raise PermissionError("no")

    with pytest.raises(PermissionError):
        open_or_rebuild(path, denied, "thing")
    assert path.exists()                                    # not moved: moving it would not cure a permission

    def always_bad():
        raise ValueError("bad input, not a bad file")

    with pytest.raises(ValueError, match="not a bad file"):
        open_or_rebuild(path, always_bad, "thing")          # moved once, then the rebuild's failure is raised


DOCS = [{"doc_id": f"d{i}", "url": f"https://x/{i}", "title": f"item {i}",
         "text": f"{w} for dry skin, number {i}"} for i, w in enumerate(["rose water toner", "shea butter cream",
                                                                           "mascara", "lip balm", "eyeliner"] * 20)]


@pytest.mark.parametrize("part", ["data.csc.index.npy", "indices.csc.index.npy", "params.index.json",
                                  "vocab.index.json", "missing params.index.json"])
def test_a_bm25_index_cut_short_is_named_and_built_again(tmp_path, capsys, part):
    from pipelines.backends.search import LocalBM25

    idx = tmp_path / "cache" / "bm25" / "abc"
    first = LocalBM25(DOCS, idx)
    expected = first.search(["rose toner", "lip balm 7"], 5)
    if part.startswith("missing "):
        (idx / part.split()[1]).unlink()                    # before: rebuilt in memory every night, never saved
    else:
        _cut_to_half(idx / part)                            # before: ValueError / JSONDecodeError every night
    again = LocalBM25(DOCS, idx)
    assert not again.reused and again.search(["rose toner", "lip balm 7"], 5) == expected
    moved = _aside(idx)
    assert len(moved) == 1
    assert f"WARNING: the bm25 index {idx} is damaged (" in capsys.readouterr().err
    third = LocalBM25(DOCS, idx)                            # saved whole again: reused, no warning
    assert third.reused and "WARNING" not in capsys.readouterr().err


def test_a_bm25_index_of_another_corpus_size_is_not_used(tmp_path, capsys):
    from pipelines.backends.search import LocalBM25

    idx = tmp_path / "abc"
    LocalBM25(DOCS[:50], idx)
    again = LocalBM25(DOCS, idx)
    assert not again.reused and "it indexes 50 documents, the corpus has 100" in capsys.readouterr().err


PROMPTS = [[{"role": "user", "content": f"Describe item {i}: a {w} for dry skin."}]
           for i, w in enumerate(["cream", "serum", "lotion"])]


@pytest.mark.parametrize("part", ["model.bin", "config.json"])
def test_a_ctranslate2_conversion_cut_short_is_named_and_converted_again(tiny_llm_dir, tmp_path, capsys, part):
    from pipelines.backends.llm import CTranslate2Backend, converted_dir

    kw = dict(batch_size=4, max_new_tokens=6, quantization="float32")
    before = dict(CTranslate2Backend(tiny_llm_dir, "c", tmp_path, **kw).stream(PROMPTS))
    target = converted_dir(tmp_path, tiny_llm_dir, "float32")
    _cut_to_half(target / part)                             # before: RuntimeError: File model.bin is incomplete
    after = dict(CTranslate2Backend(tiny_llm_dir, "c", tmp_path, **kw).stream(PROMPTS))
    assert [after[i].text for i in range(3)] == [before[i].text for i in range(3)]
    assert len(_aside(target)) == 1 and (target / "model.bin").exists()
    err = capsys.readouterr().err
    assert f"WARNING: the CTranslate2 conversion {target} is damaged (RuntimeError: " in err
    assert "converted again" in err


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory):
    """A 1-layer, 32-wide BERT as a sentence-transformers folder (mean pooling) with all-MiniLM's real tokenizer:
    the ONNX export takes seconds."""
    import torch
    from transformers import BertConfig, BertModel

    from pipelines.backends.weights import default_encoder_dir

    src, out = default_encoder_dir(), tmp_path_factory.mktemp("tiny_encoder")
    for f in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
              "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(src / f, out / f)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=512)).save_pretrained(out)
    (out / "1_Pooling").mkdir()
    pooling = json.loads((src / "1_Pooling" / "config.json").read_text())
    (out / "1_Pooling" / "config.json").write_text(json.dumps({**pooling, "word_embedding_dimension": 32}))
    return out


@pytest.mark.parametrize("part", ["model.onnx", "tokenizer.json"])
def test_an_onnx_export_cut_short_is_named_and_exported_again(tiny_encoder_dir, tmp_path, capsys, part):
    from pipelines.backends.encoder import Encoder

    texts = ["Rose water toner, 8 oz", "a", "Shea butter hand cream for very dry hands"]
    first = Encoder(str(tiny_encoder_dir), engine="onnx", home=tmp_path)
    before = first.encode(texts)
    folder = first.onnx_path().parent
    _cut_to_half(folder / part)                             # before: InvalidProtobuf / JSONDecodeError every night
    after = Encoder(str(tiny_encoder_dir), engine="onnx", home=tmp_path).encode(texts)
    assert np.allclose(after, before, atol=1e-6)
    assert len(_aside(folder)) == 1
    err = capsys.readouterr().err
    assert f"WARNING: the ONNX export {folder} is damaged (" in err and "exported again" in err


@pytest.mark.parametrize("part", ["model.safetensors", "config.json", "tokenizer.json"])
def test_the_converted_default_llm_cut_short_is_named_and_converted_again(tiny_llm_dir, tmp_path, capsys,
                                                                           monkeypatch, part):
    """The default LLM converted into the home (models/SmolLM2-135M-Instruct) is read by describe, web_queries and
    train_llmrec. The GGUF conversion (about 30 s) is replaced by a copy of a tiny model; the check is the real one."""
    from pipelines.backends import weights

    made = []

    def convert(gguf, target):
        made.append(gguf.name)
        shutil.copytree(tiny_llm_dir, target)
        return target

    monkeypatch.setattr(weights, "convert_gguf", convert)
    target = weights.default_model_dir(tmp_path)
    assert made == [weights.SMOLLM2_GGUF] and weights.default_model_dir(tmp_path) == target and len(made) == 1
    _cut_to_half(target / part)                             # before: every reader failed on it, every night
    assert weights.default_model_dir(tmp_path) == target and len(made) == 2
    assert len(_aside(target)) == 1
    err = capsys.readouterr().err
    assert f"WARNING: the converted default LLM {target} is damaged (ValueError: {part}" in err
    assert "converted again from the packaged GGUF" in err
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(target).hidden_size == 64
