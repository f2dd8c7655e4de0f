"""``vllm-selfspec prepare-model`` makes a loadable folder once and then does nothing."""

import json
import subprocess
import sys
from pathlib import Path


def test_prepare_model_is_idempotent_and_prints_the_folder(default_model):
    folder = Path(default_model)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 30
    assert "quantization_config" not in config
    weights = folder / "model.safetensors"
    before = weights.stat().st_mtime_ns
    cli = Path(sys.executable).parent / "vllm-selfspec"
    out = subprocess.run([str(cli), "prepare-model"], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == str(folder)
    assert weights.stat().st_mtime_ns == before
