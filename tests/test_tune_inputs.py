"""`vllm-selfspec tune` and the new profile fields refuse bad input before any engine starts."""

import argparse
import json

import msgspec
import pytest

from vllm_selfspec.core.draft_settings import DraftSettings, SelfSkipOptions
from vllm_selfspec.core.profile import ModelIdentity, SkipProfile, load_profile, save_profile
from vllm_selfspec.core.resolve import resolve_self_skip
from vllm_selfspec.core.skip_set import SelfSkipConfigError
from vllm_selfspec.tools.options import OptionError
from vllm_selfspec.tools.tune import add_arguments, validate

TINY = ModelIdentity("tiny", "LlamaForCausalLM", 4, 64, 128, 4, 2, 1000)
TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 4, "hidden_size": 64,
    "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
}


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG))
    return folder


def _args(model_dir, tmp_path, *argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    sizes = [] if "--draft-vocab-sizes" in argv else ["--draft-vocab-sizes", "0,500"]
    return parser.parse_args([str(model_dir), "--out", str(tmp_path / "out" / "profile.json"), *sizes, *argv])


def test_valid_settings(model_dir, tmp_path):
    settings = validate(_args(model_dir, tmp_path, "--draft-vocab-sizes", "0,500,1000"))
    assert settings.identity == TINY
    assert settings.draft_vocab_sizes == (0, 500, 1000)
    assert settings.journal.name == "profile.json.optuna-journal"
    assert len(settings.prompts) >= 8


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--budget", "0"], "--budget: must be at least 1 trial, got 0"),
        (["--draft-vocab-sizes", "0,4096"], "--draft-vocab-sizes: 4096 is larger than the model's vocabulary of 1000"),
        (["--draft-lengths", "0,2"], "--draft-lengths: every value must be at least 1, got 0"),
        (["--max-tokens", "0"], "--max-tokens: must be at least 1"),
    ],
)
def test_bad_options_are_refused(model_dir, tmp_path, argv, words):
    with pytest.raises(OptionError, match=words.replace("(", r"\(")):
        validate(_args(model_dir, tmp_path, *argv))


def test_empty_prompts_file_is_refused(model_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(OptionError, match="--prompts: .*empty.jsonl' holds no prompts"):
        validate(_args(model_dir, tmp_path, "--prompts", str(empty)))


def test_profile_for_another_model_at_out_is_refused(model_dir, tmp_path):
    other = ModelIdentity("other", "LlamaForCausalLM", 6, 64, 128, 4, 2, 1000)
    save_profile(SkipProfile(model=other, draft=DraftSettings(skip_attn=(1,), skip_mlp=(), num_speculative_tokens=3)),
                 tmp_path / "out" / "profile.json")
    with pytest.raises(OptionError, match="--out: .* holds a profile for another model .*num_layers: profile has 6, model has 4"):
        validate(_args(model_dir, tmp_path))


def _write_v2_profile(path, **fields):
    """A format-version-2 file (flat fields), as tune wrote before version 3."""
    path.write_text(json.dumps({"model": msgspec.to_builtins(TINY), "skip_attn": [1], "skip_mlp": [],
                                "num_speculative_tokens": 3, "format_version": 2, **fields}))


def test_v2_profile_reads_as_draft_settings_and_resolves(tmp_path):
    path = tmp_path / "p.json"
    _write_v2_profile(path, skip_mlp=[2], draft_vocab_size=4, draft_vocab_ranking=[9, 8, 9], adaptive_exit=True,
                      draft_exit_target_acceptance=0.8, num_speculative_tokens_per_batch_size=[[1, 4, 3], [5, 8, 0]])
    profile = load_profile(path)
    assert profile.format_version == 3 and profile.draft == DraftSettings(
        skip_attn=(1,), skip_mlp=(2,), num_speculative_tokens=3, draft_vocab=(0, 1, 8, 9), adaptive_exit=True,
        draft_exit_target_acceptance=0.8, num_speculative_tokens_per_batch_size=((1, 4, 3), (5, 8, 0)))
    resolved, _ = resolve_self_skip(TINY, 2048, SelfSkipOptions(skip_profile=str(path)))
    assert resolved == profile.draft
    explicit, _ = resolve_self_skip(TINY, 2048, SelfSkipOptions(skip_profile=str(path), draft_vocab_size=2,
                                                                adaptive_exit=False), batch_size_schedule=[[1, 2, 1]])
    assert explicit.draft_vocab == (8, 9) and not explicit.adaptive_exit
    assert explicit.num_speculative_tokens_per_batch_size == ((1, 2, 1),)
    resaved = tmp_path / "v3.json"
    save_profile(profile, resaved)
    assert json.loads(resaved.read_text())["draft"]["draft_vocab"] == [0, 1, 8, 9]
    assert load_profile(resaved) == profile


@pytest.mark.parametrize(
    "options, words",
    [
        ({"draft_vocab_size": 1001}, "draft_vocab_size: 1001 is larger than the model's vocabulary of 1000"),
        ({"adaptive_exit": "yes"}, "adaptive_exit: expected true or false"),
        ({"draft_exit_target_acceptance": 1.2}, "draft_exit_target_acceptance: expected a number strictly between"),
    ],
)
def test_bad_draft_options_are_refused(options, words):
    with pytest.raises(SelfSkipConfigError, match=words):
        resolve_self_skip(TINY, 2048, SelfSkipOptions(skip_attn=[1], **options))


def test_bad_schedule_is_refused():
    with pytest.raises(SelfSkipConfigError, match="num_speculative_tokens_per_batch_size: entry \\[2, 4, 1\\] is out of order"):
        resolve_self_skip(TINY, 2048, SelfSkipOptions(skip_attn=[1]), batch_size_schedule=[[2, 4, 1]])


def test_profile_with_oversized_draft_vocab_is_refused(tmp_path):
    path = tmp_path / "p.json"
    _write_v2_profile(path, draft_vocab_size=5000)
    with pytest.raises(SelfSkipConfigError, match="draft_vocab_size: 5000 is larger"):
        load_profile(path)
    save_profile(SkipProfile(model=TINY, draft=DraftSettings(skip_attn=(1,), skip_mlp=(), num_speculative_tokens=3,
                                                             draft_vocab=(5, 2))), path)
    with pytest.raises(SelfSkipConfigError, match="draft.draft_vocab: token ids must be distinct, ascending"):
        load_profile(path)


def test_a_schedule_that_holds_one_k_is_not_handed_to_vllm():
    held, _ = resolve_self_skip(TINY, 2048, SelfSkipOptions(skip_attn=[1]), num_speculative_tokens=3,
                                batch_size_schedule=[[1, 4, 3], [5, 8, 3]])
    assert held.num_speculative_tokens_per_batch_size is None
    for varies in ([[1, 4, 3], [5, 8, 2]], [[1, 4, 3], [6, 8, 3]], [[1, 4, 2]]):
        resolved, _ = resolve_self_skip(TINY, 2048, SelfSkipOptions(skip_attn=[1]), num_speculative_tokens=3,
                                        batch_size_schedule=varies)
        assert resolved.num_speculative_tokens_per_batch_size == tuple(map(tuple, varies))
