import json

import msgspec
import pytest

from vllm_selfspec.core.draft_settings import DraftSettings, SelfSkipOptions
from vllm_selfspec.core.profile import (
    SHIPPED_PROFILES_DIR,
    ModelIdentity,
    SkipProfile,
    find_shipped_profile,
    load_profile,
    save_profile,
)
from vllm_selfspec.core.resolve import (
    DEFAULT_NUM_SPECULATIVE_TOKENS,
    reject_unknown_options,
    resolve_self_skip,
)
from vllm_selfspec.core.skip_set import SelfSkipConfigError, heuristic_skip_set

SMOL = ModelIdentity(
    name="SmolLM2-135M-Instruct",
    architecture="LlamaForCausalLM",
    num_layers=30,
    hidden_size=576,
    intermediate_size=1536,
    num_attention_heads=9,
    num_kv_heads=3,
    vocab_size=49152,
)
TINY = ModelIdentity("tiny", "LlamaForCausalLM", 4, 64, 128, 4, 2, 1000)


def _profile(identity=TINY, attn=(1,), mlp=(), k=3, **kw):
    return SkipProfile(model=identity, draft=DraftSettings(skip_attn=tuple(attn), skip_mlp=tuple(mlp),
                                                           num_speculative_tokens=k), **kw)


def test_save_load_roundtrip(tmp_path):
    path = tmp_path / "p.json"
    save_profile(_profile(), path)
    assert load_profile(path) == _profile()
    assert json.loads(path.read_text())["model"]["name"] == "tiny"


@pytest.mark.parametrize(
    "content, words",
    [
        ("{not json", "not valid JSON"),
        ('{"skip_attn": [1]}', "not a valid profile"),
        ('{"model": 1, "skip_attn": [], "skip_mlp": [], "num_speculative_tokens": 2}', "not a valid profile"),
    ],
)
def test_malformed_profile_is_refused(tmp_path, content, words):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SelfSkipConfigError, match="skip_profile") as info:
        load_profile(path)
    assert words in str(info.value)


def test_profile_with_unknown_field_or_bad_indices_is_refused(tmp_path):
    data = {"model": msgspec.structs.asdict(TINY), "skip_attn": [1], "skip_mlp": [],
            "num_speculative_tokens": 2}
    path = tmp_path / "p.json"
    path.write_text(json.dumps({**data, "skip_atn": [1]}))
    with pytest.raises(SelfSkipConfigError, match="skip_atn"):
        load_profile(path)
    path.write_text(json.dumps({**data, "skip_attn": [9]}))
    with pytest.raises(SelfSkipConfigError, match="out of range"):
        load_profile(path)
    path.write_text(json.dumps({**data, "num_speculative_tokens": 0}))
    with pytest.raises(SelfSkipConfigError, match="num_speculative_tokens"):
        load_profile(path)


def test_missing_profile_file():
    with pytest.raises(SelfSkipConfigError, match="does not exist"):
        load_profile("/nonexistent/profile.json")


def test_shipped_profiles_are_valid_and_found_for_default_model():
    files = sorted(SHIPPED_PROFILES_DIR.glob("*.json"))
    assert files, "the default model's profile must ship with the package"
    for f in files:
        load_profile(f)
    assert find_shipped_profile(SMOL) is not None
    assert find_shipped_profile(TINY) is None


def test_resolution_order(tmp_path):
    path = tmp_path / "p.json"
    save_profile(_profile(attn=[2], mlp=[3], k=5), path)
    explicit, source = resolve_self_skip(TINY, 100, SelfSkipOptions(skip_attn=[0], skip_profile=str(path)))
    assert (explicit.skip_attn, explicit.skip_mlp, source) == ((0,), (), "explicit")
    assert explicit.num_speculative_tokens == 5  # the profile still supplies K
    from_profile, source = resolve_self_skip(TINY, 100, SelfSkipOptions(skip_profile=str(path)),
                                             num_speculative_tokens=2)
    assert (from_profile.skip_attn, from_profile.skip_mlp) == ((2,), (3,))
    assert from_profile.num_speculative_tokens == 2 and source.startswith("profile")
    heuristic, source = resolve_self_skip(TINY, 100)
    assert heuristic.skip_set(4) == heuristic_skip_set(4) and source == "heuristic"
    assert heuristic.num_speculative_tokens == DEFAULT_NUM_SPECULATIVE_TOKENS
    shipped, source = resolve_self_skip(SMOL, 2048)
    assert source.startswith("shipped profile")


def test_profile_for_another_model_is_refused(tmp_path):
    path = tmp_path / "p.json"
    save_profile(_profile(identity=SMOL, attn=[7]), path)
    with pytest.raises(SelfSkipConfigError, match="made for another model") as info:
        resolve_self_skip(TINY, 100, SelfSkipOptions(skip_profile=str(path)))
    assert "num_layers" in str(info.value) and "name" in str(info.value)


@pytest.mark.parametrize("k, words", [(0, "at least 1"), (-3, "at least 1"), (100, "max_model_len=100"),
                                      (2.5, "integer")])
def test_bad_draft_length(k, words):
    with pytest.raises(SelfSkipConfigError, match="num_speculative_tokens") as info:
        resolve_self_skip(TINY, 100, num_speculative_tokens=k)
    assert words in str(info.value)


def test_unknown_options_get_a_suggestion():
    reject_unknown_options({"skip_attn": [1], "method": "self_skip"}, {"method"})
    with pytest.raises(SelfSkipConfigError, match="'skip_atn'.*did you mean 'skip_attn'"):
        reject_unknown_options({"skip_atn": [1]}, {"method"})


def test_graph_digest_names_what_shapes_the_draft_graph():
    """vLLM's compile caches are keyed through it: one digest per skip set and draft head."""
    base = DraftSettings(skip_attn=(1, 3), skip_mlp=(2,), num_speculative_tokens=4)
    digest = base.graph_digest()
    # The same graph: order of indices, K, exit rule and schedule do not shape it.
    assert base.replace(skip_attn=(3, 1)).graph_digest() == digest
    assert base.replace(num_speculative_tokens=2, adaptive_exit=True,
                        num_speculative_tokens_per_batch_size=((1, 4, 2),)).graph_digest() == digest
    # Another graph: another skip set or draft head.
    others = [base.replace(skip_attn=(1,)), base.replace(skip_mlp=()), base.replace(skip_mlp=(1,)),
              base.replace(skip_attn=(1, 2), skip_mlp=(3,)), base.replace(draft_vocab=(5, 7))]
    assert len({digest, *(other.graph_digest() for other in others)}) == len(others) + 1

