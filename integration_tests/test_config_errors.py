"""Bad self_skip input is refused while vLLM builds its config, before any worker starts."""

from __future__ import annotations

import json

import pytest
from vllm.engine.arg_utils import EngineArgs
from vllm.utils.argparse_utils import FlexibleArgumentParser

from vllm_selfspec.core.draft_settings import DraftSettings
from vllm_selfspec.core.profile import ModelIdentity, SkipProfile, save_profile
from vllm_selfspec.glue.config import SelfSkipSpeculativeConfig


def build_config(model: str, spec: dict | None = None, **kwargs):
    kwargs.setdefault("max_model_len", 512)
    return EngineArgs(model=model, speculative_config=spec, **kwargs).create_engine_config()


@pytest.fixture(scope="module")
def tiny_llama(tiny_model_factory):
    return tiny_model_factory("llama")


def test_valid_config_resolves_skip_set_and_runner(tiny_llama):
    config = build_config(tiny_llama, {"method": "self-skip", "skip_attn": [1, 2], "skip_mlp": [3]})
    spec = config.speculative_config
    assert isinstance(spec, SelfSkipSpeculativeConfig) and spec.method == "self_skip"
    assert (spec.draft.skip_attn, spec.draft.skip_mlp, spec.skip_source) == ((1, 2), (3,), "explicit")
    assert spec.num_speculative_tokens == 4  # documented default without a profile
    # Model Runner V2 (vLLM's GPU default) cannot host the proposer: vLLM is told so
    # and falls back to the V1 runner.
    assert any("self_skip" in f for f in config._get_v2_model_runner_unsupported_features())
    assert config.use_v2_model_runner is False
    assert config.num_lookahead_tokens == 4  # KV slots for the drafts are reserved
    heuristic = build_config(tiny_llama, {"method": "self_skip", "num_speculative_tokens": 2})
    assert heuristic.speculative_config.skip_source == "heuristic"
    assert heuristic.speculative_config.num_speculative_tokens == 2


def test_other_methods_are_untouched(tiny_llama):
    config = build_config(tiny_llama, {"method": "ngram", "num_speculative_tokens": 2})
    assert type(config.speculative_config).__name__ == "SpeculativeConfig"
    assert not any("self_skip" in f for f in config._get_v2_model_runner_unsupported_features())
    assert build_config(tiny_llama).speculative_config is None


@pytest.mark.parametrize(
    "spec, field, words",
    [
        ({"skip_attn": [4]}, "skip_attn", "out of range"),
        ({"skip_attn": [-1]}, "skip_attn", "out of range"),
        ({"skip_mlp": [1, 1]}, "skip_mlp", "listed twice"),
        ({"skip_attn": [0, 1, 2, 3], "skip_mlp": [0, 1, 2, 3]}, "skip_attn/skip_mlp", "every sublayer"),
        ({"num_speculative_tokens": 512}, "num_speculative_tokens", "max_model_len=512"),
        ({"skip_atn": [1]}, "skip_atn", "did you mean 'skip_attn'"),
        ({"skip_profile": "/nonexistent.json"}, "skip_profile", "does not exist"),
        ({"model": "some/draft-model"}, "speculative_config.model", "drafts with the target model"),
        ({"draft_vocab_size": 10**6}, "draft_vocab_size", "larger than the model's vocabulary"),
        ({"draft_exit_target_acceptance": 1.5}, "draft_exit_target_acceptance", "strictly between 0 and 1"),
        ({"adaptive_exit": "sometimes"}, "adaptive_exit", "expected true or false"),
        ({"num_speculative_tokens_per_batch_size": [[4, 8, 2]]}, "num_speculative_tokens_per_batch_size",
         "must start at batch size 1"),
        ({"draft_vocab_sizee": 10}, "draft_vocab_sizee", "did you mean 'draft_vocab_size'"),
    ],
)
def test_bad_self_skip_options(tiny_llama, spec, field, words):
    with pytest.raises(ValueError) as info:
        build_config(tiny_llama, {"method": "self_skip", **spec})
    assert field in str(info.value) and words in str(info.value)


def test_schedule_that_never_drafts_means_plain_vllm(tiny_llama, tmp_path):
    from transformers import AutoConfig

    from vllm_selfspec.glue.identity import identity_from_hf_config

    identity = identity_from_hf_config(tiny_llama, AutoConfig.from_pretrained(tiny_llama))
    path = tmp_path / "never.json"
    save_profile(SkipProfile(model=identity, draft=DraftSettings(
        skip_attn=(1,), skip_mlp=(), num_speculative_tokens=3, num_speculative_tokens_per_batch_size=((1, 8, 0),))), path)
    assert build_config(tiny_llama, {"method": "self_skip", "skip_profile": str(path)}).speculative_config is None
    # The user's own schedule wins over the profile's; one that holds K everywhere is not handed to vLLM.
    config = build_config(tiny_llama, {"method": "self_skip", "skip_profile": str(path),
                                       "num_speculative_tokens_per_batch_size": [[1, 1, 3], [2, 4, 1]]}).speculative_config
    assert config.method == "self_skip" and config.num_speculative_tokens_per_batch_size == [(1, 1, 3), (2, 4, 1)]
    held = build_config(tiny_llama, {"method": "self_skip", "skip_profile": str(path),
                                     "num_speculative_tokens_per_batch_size": [[1, 1, 3]]}).speculative_config
    assert held.num_speculative_tokens == 3 and held.num_speculative_tokens_per_batch_size is None


def test_draft_head_under_tensor_parallelism_is_refused(tiny_llama):
    with pytest.raises(ValueError, match="draft_vocab_size=64: the cheap draft head needs tensor_parallel_size=1"):
        build_config(tiny_llama, {"method": "self_skip", "draft_vocab_size": 64}, tensor_parallel_size=2)


def test_draft_length_below_one(tiny_llama):
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        build_config(tiny_llama, {"method": "self_skip", "num_speculative_tokens": 0})


def test_profiles_for_another_model_or_malformed(tiny_llama, default_model, tmp_path):
    other = ModelIdentity("SmolLM2-135M-Instruct", "LlamaForCausalLM", 30, 576, 1536, 9, 3, 49152)
    path = tmp_path / "other.json"
    save_profile(SkipProfile(model=other, draft=DraftSettings(skip_attn=(7,), skip_mlp=(), num_speculative_tokens=3)), path)
    with pytest.raises(ValueError, match="skip_profile.*made for another model"):
        build_config(tiny_llama, {"method": "self_skip", "skip_profile": str(path)})
    # The same profile is accepted for the model it was made for.
    ok = build_config(default_model, {"method": "self_skip", "skip_profile": str(path)})
    assert ok.speculative_config.draft.skip_attn == (7,) and ok.speculative_config.num_speculative_tokens == 3
    path.write_text(json.dumps({"model": "x"}))
    with pytest.raises(ValueError, match="skip_profile.*not a valid profile"):
        build_config(tiny_llama, {"method": "self_skip", "skip_profile": str(path)})


def test_unsupported_architecture_is_named(tiny_model_factory):
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        build_config(tiny_model_factory("gpt2"), {"method": "self_skip"})


def test_model_runner_v2_forced_is_refused(tiny_llama, monkeypatch):
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    with pytest.raises(ValueError, match="VLLM_USE_V2_MODEL_RUNNER"):
        build_config(tiny_llama, {"method": "self_skip"})


def _serve_parser():
    from vllm.entrypoints.launchers.cli_args import make_arg_parser

    return make_arg_parser(FlexibleArgumentParser())


def _engine_args(argv):
    return EngineArgs.from_cli_args(_serve_parser().parse_args(argv))


def test_serve_flags(tiny_llama):
    args = _engine_args(["--model", tiny_llama, "--speculative-model", "self-skip", "--num-speculative-tokens", "3",
                         "--max-model-len", "512"])
    assert (args.spec_method, args.spec_tokens) == ("self_skip", 3)
    spec = args.create_engine_config().speculative_config
    assert spec.method == "self_skip" and spec.num_speculative_tokens == 3
    args = _engine_args(["--model", tiny_llama, "--spec-method", "self_skip", "--max-model-len", "512", "-sc",
                         json.dumps({"skip_attn": [1], "num_speculative_tokens": 2})])
    spec = args.create_engine_config().speculative_config
    assert spec.draft.skip_attn == (1,) and spec.num_speculative_tokens == 2
    # Any other --speculative-model value is a draft model, as --spec-model.
    assert _engine_args(["--model", tiny_llama, "--speculative-model", tiny_llama]).spec_model == tiny_llama


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--num-speculative-tokens", "0"], "--num-speculative-tokens: must be at least 1"),
        (["--num-speculative-tokens", "four"], "--num-speculative-tokens: expected an integer"),
        (["--speculative-model", ""], "expected 'self-skip'"),
        (["--speculative-model", "selfskip"], "did you mean 'self-skip'?"),
        (["--speculative-model", "Self_Skp"], "did you mean 'self-skip'?"),
        (["--spec-method", "self_skipp"], "invalid choice"),
    ],
)
def test_bad_serve_flags(tiny_llama, capsys, argv, words):
    with pytest.raises(SystemExit):
        _serve_parser().parse_args(["--model", tiny_llama, *argv])
    assert words in capsys.readouterr().err


def test_pipeline_parallelism_is_refused(tiny_llama):
    with pytest.raises(ValueError, match="pipeline_parallel_size=2: self_skip supports tensor parallelism only"):
        build_config(tiny_llama, {"method": "self_skip"}, pipeline_parallel_size=2)


@pytest.mark.parametrize("spec", [{"model": "self-skip"}, {"method": "self-skip"}, {"method": "self_skip"}])
def test_every_spelling_selects_self_skip(tiny_llama, spec):
    config = build_config(tiny_llama, {**spec, "num_speculative_tokens": 2})
    assert isinstance(config.speculative_config, SelfSkipSpeculativeConfig)
    assert config.speculative_config.method == "self_skip"


def test_layers_in_several_kv_cache_groups_are_refused(tiny_model_factory, tmp_path):
    """Sliding-window layers beside full-attention ones: refused naming the model and why; the
    same model with one kind of attention builds."""
    import shutil

    source = tiny_model_factory("qwen3")
    assert build_config(source, {"method": "self_skip"}).speculative_config.method == "self_skip"
    mixed = tmp_path / "tiny-qwen3-sliding"
    shutil.copytree(source, mixed)
    config = json.loads((mixed / "config.json").read_text())
    config.update(use_sliding_window=True, sliding_window=64,
                  layer_types=["sliding_attention", "full_attention"] * (config["num_hidden_layers"] // 2))
    (mixed / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"self_skip cannot run {mixed}: its layers use 2 kinds of attention "
                                         r"\(full_attention, sliding_attention\), which vLLM keeps in separate"):
        build_config(str(mixed), {"method": "self_skip"})
    # The user's disable_sliding_window makes every layer attend in full (vLLM then caps the
    # context at the window): one group.
    assert build_config(str(mixed), {"method": "self_skip"}, disable_sliding_window=True, max_model_len=64) \
        .speculative_config.method == "self_skip"


FIXED_LENGTH = {"method": "self_skip", "num_speculative_tokens": 3, "adaptive_exit": False,
                "draft_length_controller": False}


def test_async_scheduling_follows_vllms_draft_model_rules_for_fixed_length_drafts(
        tiny_llama, async_scheduling_kept_on_cpu):
    assert build_config(tiny_llama).scheduler_config.async_scheduling is True  # plain vLLM: on by default
    for asked in (None, True):
        config = build_config(tiny_llama, FIXED_LENGTH, async_scheduling=asked)
        assert config.scheduler_config.async_scheduling is True, asked
        assert config.speculative_config.method == "self_skip"
    assert build_config(tiny_llama, FIXED_LENGTH, async_scheduling=False).scheduler_config.async_scheduling is False
    # vLLM's own draft_model rule, applied to self_skip.
    with pytest.raises(ValueError, match="disable_padded_drafter_batch"):
        build_config(tiny_llama, {**FIXED_LENGTH, "disable_padded_drafter_batch": True}, async_scheduling=True)


def test_adaptive_exit_set_on_keeps_async_scheduling_off(tiny_llama, async_scheduling_kept_on_cpu, caplog):
    spec = {**FIXED_LENGTH, "adaptive_exit": True}
    with caplog.at_level("INFO", logger="vllm"):
        config = build_config(tiny_llama, spec)
    assert config.scheduler_config.async_scheduling is False
    assert config.scheduler_config.scheduler_cls.endswith(".SelfSkipScheduler")
    assert "self_skip runs without async scheduling" in caplog.text
    assert config.speculative_config.draft.adaptive_exit
    with pytest.raises(ValueError, match=r"async_scheduling=True \(--async-scheduling\).*set adaptive_exit=false"):
        build_config(tiny_llama, spec, async_scheduling=True)


def test_the_default_config_keeps_async_scheduling_and_books_in_the_scheduler(
        tiny_llama, async_scheduling_kept_on_cpu, caplog):
    """No K, no profile: the controller books K in the async scheduler, and adaptive exit, on by
    default, gives way; with async scheduling off it stays on."""
    with caplog.at_level("INFO", logger="vllm"):
        config = build_config(tiny_llama, {"method": "self_skip"})
    assert config.scheduler_config.async_scheduling is True
    assert config.scheduler_config.scheduler_cls.endswith(".SelfSkipAsyncScheduler")
    draft = config.speculative_config.draft
    assert draft.draft_length_controller is not None and not draft.adaptive_exit
    assert "adaptive exit is off by default under async scheduling" in caplog.text
    synchronous = build_config(tiny_llama, {"method": "self_skip"}, async_scheduling=False)
    assert synchronous.scheduler_config.scheduler_cls.endswith(".SelfSkipScheduler")
    assert synchronous.speculative_config.draft.adaptive_exit
    # The controller with async scheduling asked for: accepted.
    asked = build_config(tiny_llama, {"method": "self_skip", "draft_length_controller": True}, async_scheduling=True)
    assert asked.scheduler_config.async_scheduling is True


def test_a_scheduler_class_of_the_users_is_refused(tiny_llama):
    with pytest.raises(ValueError, match=r"scheduler_cls='my.Scheduler': self_skip books each step's draft length"):
        build_config(tiny_llama, {"method": "self_skip"}, scheduler_cls="my.Scheduler")
    # Without self_skip vLLM takes it as given.
    assert build_config(tiny_llama, scheduler_cls="my.Scheduler").scheduler_config.scheduler_cls == "my.Scheduler"


def test_without_the_shim_the_cpu_platform_turns_async_scheduling_off(tiny_llama):
    assert build_config(tiny_llama, FIXED_LENGTH, async_scheduling=True).scheduler_config.async_scheduling is False
