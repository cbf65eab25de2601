"""The CPU engines: CTranslate2 for describe (against transformers on the same tiny model) and the ONNX Runtime
encoder for embed (against sentence-transformers on the real all-MiniLM-L6-v2)."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.backends.encoder import Encoder
from pipelines.backends.llm import CTranslate2Backend, TransformersBackend, converted_dir
from pipelines.config import load_config
from pipelines.stages import describe

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("private_model_cache")]  # the conversions under test: private

PROMPTS = [[{"role": "user", "content": f"Describe item {i}: a {w} for dry skin."}]
           for i, w in enumerate(["cream", "serum", "lotion", "soap bar", "face mask", "toner"])]


def test_ctranslate2_float32_generates_the_transformers_tokens(tiny_llm_dir, tmp_path):
    """Greedy, no repetition penalty, float32: the engine alone must not change what is written."""
    kw = dict(batch_size=4, max_new_tokens=10, repetition_penalty=1.0)
    ref = dict(TransformersBackend(tiny_llm_dir, "t", **kw).stream(PROMPTS))
    ct2 = CTranslate2Backend(tiny_llm_dir, "c", tmp_path, quantization="float32", **kw)
    got = dict(ct2.stream(PROMPTS))
    assert [got[i].text for i in range(len(PROMPTS))] == [ref[i].text for i in range(len(PROMPTS))]
    assert ct2.stats.calls == len(PROMPTS) and ct2.stats.generated_tokens == sum(g.tokens for g in got.values())
    # converted once into the home, reused by the next backend
    path = converted_dir(tmp_path, tiny_llm_dir, "float32")
    assert (path / "model.bin").exists()
    mtime = (path / "model.bin").stat().st_mtime_ns
    again = dict(CTranslate2Backend(tiny_llm_dir, "c", tmp_path, quantization="float32", **kw).stream(PROMPTS[:2]))
    assert again[0].text == got[0].text and (path / "model.bin").stat().st_mtime_ns == mtime


def test_int8_and_retry_sampling_run_and_stay_bounded(tiny_llm_dir, tmp_path):
    import torch

    threads = torch.get_num_threads()
    b = CTranslate2Backend(tiny_llm_dir, "c", tmp_path, batch_size=3, max_new_tokens=6, quantization="int8")
    out = dict(b.stream(PROMPTS, retry=True))
    assert sorted(out) == list(range(len(PROMPTS))) and all(g.tokens <= 6 for g in out.values())
    # CTranslate2 sets OpenMP's thread count when it loads; torch (training later in the same run) must keep its own
    assert torch.get_num_threads() == threads


def test_backend_and_quantisation_are_part_of_the_cache_key():
    keys = {b: describe.backend_key(load_config(None, [f"describe.backend={b}"]).describe)
            for b in ("transformers", "ctranslate2")}
    keys["ct2_f32"] = describe.backend_key(load_config(None, ["describe.backend=ctranslate2",
                                                              "describe.quantization=float32"]).describe)
    assert len(set(keys.values())) == 3
    assert keys["ctranslate2"].startswith("ctranslate2:int8:")
    auto = describe.backend_key(load_config(None, ["describe.backend=auto"]).describe)
    import torch

    assert auto == (keys["transformers"] if torch.cuda.is_available() else keys["ctranslate2"])


def test_onnx_encoder_matches_sentence_transformers(tmp_path):
    texts = ["Rose water toner, 8 oz", "a", "Purchases, newest first:\n- mascara\n- lip balm (Lips, $4.99)",
             "Hydrating night cream with retinol " * 20, "Shea butter hand cream for very dry hands"] * 3
    torch_enc = Encoder(batch_size=4, engine="torch", home=tmp_path)
    onnx_enc = Encoder(batch_size=4, engine="auto", home=tmp_path)
    assert onnx_enc.engine == "onnx" and onnx_enc.key != torch_enc.key
    a, b = torch_enc.encode(texts), onnx_enc.encode(texts)
    assert b.dtype == np.float32 and b.shape == a.shape
    assert float((a * b).sum(1).min()) >= 0.9999
    assert onnx_enc.onnx_path().exists()
    assert not list(onnx_enc.onnx_path().parent.parent.glob(".*tmp*")), "the export left a temporary folder"


def test_onnx_engine_refuses_what_it_cannot_run(tmp_path):
    with pytest.raises(ValueError, match="embed.engine=onnx cannot run"):
        Encoder(engine="onnx", device="cuda", home=tmp_path)
    assert Encoder(engine="auto", device="cuda", home=tmp_path).engine == "torch"
    assert Encoder(engine="auto").engine == "torch"  # no home to keep an export in
