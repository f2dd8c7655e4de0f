"""Every vLLM member the proposer and the draft model rely on that vLLM does not promise to keep.

Private methods and attributes of the draft-model proposer, fields of the runner's
batch and metadata objects, and helpers imported from inside vLLM's sampler. A vLLM
upgrade that renames or drops one fails here, by name, rather than deep inside an
engine. (The patches' own targets are checked in test_patches.py.)
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re

import pytest

PROPOSER_METHODS = (
    "_determine_batch_execution_and_padding", "_update_positions_dependent_metadata",
    "build_per_group_and_layer_attn_metadata", "_get_slot_mapping", "_get_positions", "_greedy_sample",
    "take_last_draft_probs", "validate_same_kv_cache_group", "dummy_run",
)
"""Methods of ``DraftModelProposer`` (and its bases) that ``SelfSkipProposer`` calls or overrides."""
PROPOSER_ATTRIBUTES = (
    "_enable_probabilistic_draft_probs", "_last_draft_probs", "arange", "token_arange_np", "input_ids",
    "use_fp64_gumbel", "supports_mm_inputs", "speculative_config", "block_size", "num_speculative_tokens",
    "model", "device", "vllm_config", "cudagraph_dispatcher", "max_num_tokens",
)
"""Attributes the base proposer sets in ``__init__`` and ``SelfSkipProposer`` reads or sets."""
DISPATCHER_MEMBERS = ("initialize_cudagraph_keys", "get_capture_descs", "cudagraph_mode")
"""The draft's ``CudagraphDispatcher``: its capture sizes (captured again for a switched draft), turned to
NONE when a capture fails."""
COMPILED_MODEL_ATTRIBUTES = ("do_not_compile", "compiled")
"""Set on a ``@support_torch_compile`` model: whether vLLM compiles it, and whether it has been traced."""
INPUT_BATCH_ATTRIBUTES = ("spec_token_ids", "num_reqs", "req_ids")
"""The runner's ``InputBatch``: the spec tokens scheduled per row feed adaptive exit's drafted count."""
DATACLASS_FIELDS = {
    "vllm.v1.attention.backend:CommonAttentionMetadata": (
        "seq_lens", "seq_lens_cpu_upper_bound", "query_start_loc", "query_start_loc_cpu", "num_actual_tokens",
        "max_query_len", "is_prefilling", "positions",
    ),
    "vllm.v1.sample.metadata:SamplingMetadata": ("temperature", "top_k", "top_p", "all_greedy"),
    # Read when a switched draft's CUDA graphs are captured, as vLLM's runner reads it.
    "vllm.config:CompilationConfig": ("cudagraph_num_of_warmups",),
}
MODULE_MEMBERS = {
    "vllm.v1.sample.sampler": ("_SAMPLING_EPS",),
    "vllm.v1.sample.ops.topk_topp_sampler": (
        "apply_top_k_top_p", "empty_exponential_noise_like", "sample_with_exponential_noise",
    ),
    "vllm.v1.spec_decode.draft_model": ("DraftModelProposer",),
    "vllm.forward_context": ("set_forward_context",),
    "vllm.config": ("get_layers_from_vllm_config", "CUDAGraphMode", "CompilationMode", "set_current_vllm_config"),
    "vllm.compilation.backends": ("set_model_tag",),
    "vllm.compilation.monitor": ("set_cudagraph_capturing_enabled",),
    "vllm.distributed.parallel_state": ("graph_capture",),
    "vllm.utils.gc_utils": ("freeze_gc_for_cudagraph_capture",),
    "vllm.compilation.decorators": ("support_torch_compile",),
    "vllm.utils.hashing": ("safe_hash",),
}
LOGITS_PROCESSOR_ATTRIBUTES = ("org_vocab_size", "soft_cap", "scale")
"""Read by the cheap draft head, which scales its logits as the target's LM head does."""


def _assigned_in(cls: type, name: str) -> bool:
    """Whether some class in ``cls``'s MRO assigns ``self.<name>`` or defines it."""
    pattern = re.compile(rf"self\.{re.escape(name)}\s*(:[^=\n]+)?=")
    for klass in cls.__mro__:
        if klass is object:
            continue
        if name in vars(klass):
            return True
        try:
            if pattern.search(inspect.getsource(klass)):
                return True
        except (OSError, TypeError):
            continue
    return False


def _missing(names, present) -> list[str]:
    return [name for name in names if not present(name)]


def test_draft_model_proposer_members():
    from vllm.v1.spec_decode.draft_model import DraftModelProposer

    assert _missing(PROPOSER_METHODS, lambda n: callable(getattr(DraftModelProposer, n, None))) == []
    assert _missing(PROPOSER_ATTRIBUTES, lambda n: _assigned_in(DraftModelProposer, n)) == []


def test_runner_batch_and_logits_processor_members():
    from vllm.model_executor.layers.logits_processor import LogitsProcessor
    from vllm.v1.worker.gpu_input_batch import InputBatch
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    assert _missing(("drafter", "input_batch"), lambda n: _assigned_in(GPUModelRunner, n)) == []
    # Wrapped by the bench's timers and the test-only target delay.
    assert _missing(("_model_forward", "execute_model"), lambda n: callable(getattr(GPUModelRunner, n, None))) == []
    assert _missing(INPUT_BATCH_ATTRIBUTES, lambda n: _assigned_in(InputBatch, n)) == []
    assert _missing(LOGITS_PROCESSOR_ATTRIBUTES, lambda n: _assigned_in(LogitsProcessor, n)) == []


def test_cuda_graph_dispatcher_and_compiled_model_members():
    import vllm.compilation.decorators as decorators
    from vllm.v1.cudagraph_dispatcher import CudagraphDispatcher

    assert _missing(DISPATCHER_MEMBERS,
                    lambda n: hasattr(CudagraphDispatcher, n) or _assigned_in(CudagraphDispatcher, n)) == []
    # Set by the decorator's generated __init__ and __call__, in its module's source.
    source = inspect.getsource(decorators)
    assert _missing(COMPILED_MODEL_ATTRIBUTES, lambda n: f"self.{n} =" in source) == []


def test_compiled_draft_can_release_its_bytecode_hook():
    """A replaced draft is freed only once the bytecode hook vLLM's compile wrapper registered is
    removed (``release_draft_model``): the draft must be such a wrapper, and the wrapper keep ``cleanup``."""
    from vllm.compilation.wrapper import TorchCompileWithNoGuardsWrapper

    from vllm_selfspec.glue.draft_compilation import CompiledLayerSkipDraftModel

    assert issubclass(CompiledLayerSkipDraftModel, TorchCompileWithNoGuardsWrapper)
    assert callable(getattr(TorchCompileWithNoGuardsWrapper, "cleanup", None))


@pytest.mark.parametrize("qualified", sorted(DATACLASS_FIELDS))
def test_metadata_fields(qualified):
    module, name = qualified.split(":")
    fields = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
    assert _missing(DATACLASS_FIELDS[qualified], fields.__contains__) == [], qualified


@pytest.mark.parametrize("module", sorted(MODULE_MEMBERS))
def test_module_members(module):
    loaded = importlib.import_module(module)
    assert _missing(MODULE_MEMBERS[module], lambda n: hasattr(loaded, n)) == [], module


def test_the_check_names_what_is_missing():
    """The checks above can fail: a made-up member is reported by name."""
    from vllm.v1.spec_decode.draft_model import DraftModelProposer

    assert _missing(("_made_up_member", "arange"), lambda n: _assigned_in(DraftModelProposer, n)) == ["_made_up_member"]
