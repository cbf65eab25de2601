"""``RECPIPE_MODEL_CACHE``: converted and exported models in one folder shared by homes, else under each home."""
from __future__ import annotations

from pipelines.backends.encoder import Encoder
from pipelines.backends.llm import converted_dir
from pipelines.backends.weights import models_dir


def test_without_the_variable_each_home_keeps_its_own(tmp_path, monkeypatch):
    monkeypatch.delenv("RECPIPE_MODEL_CACHE", raising=False)
    assert models_dir(tmp_path / "a") == tmp_path / "a" / "models"
    assert converted_dir(tmp_path / "a", tmp_path / "m", "int8").parent == tmp_path / "a" / "models" / "ctranslate2"


def test_with_it_two_homes_share_one_export(tmp_path, monkeypatch):
    monkeypatch.setenv("RECPIPE_MODEL_CACHE", str(tmp_path / "shared"))
    a, b = Encoder(home=tmp_path / "a"), Encoder(home=tmp_path / "b")
    assert a.onnx_path() == b.onnx_path() and a.onnx_path().is_relative_to(tmp_path / "shared" / "onnx")
    assert converted_dir(tmp_path / "a", tmp_path / "m", "int8") == converted_dir(tmp_path / "b", tmp_path / "m", "int8")
