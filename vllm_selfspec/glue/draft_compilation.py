"""The draft compiled by vLLM's own machinery: one compiled graph per skip set, cached on disk.

``CompiledLayerSkipDraftModel`` is :class:`LayerSkipDraftModel` under vLLM's
``@support_torch_compile``, the decorator vLLM's models (its draft models included)
compile through. So the draft gets what the target gets:

- the engine's compilation mode and backend: on GPUs vLLM's piecewise backend, whose
  pieces vLLM's CUDA-graph wrapper captures and replays (the proposer's dispatcher
  picks the mode); on the CPU one Inductor graph, traced once;
- no dynamo guards after the first trace, and the batch dimension dynamic, so the
  first call (vLLM's profiling run, a batch of ``max_num_seqs``) compiles the only graph;
- vLLM's compile caches, kept apart per skip set by the model tag (the piecewise
  backend's cache folder) and by the config hash (the AOT cache key), both from
  :meth:`DraftSettings.graph_digest`.

``enforce_eager`` (the engine's or the speculative config's) and ``mode=NONE`` leave
the draft eager, as they leave a vLLM draft model.
"""

from __future__ import annotations

import copy

from vllm.compilation.backends import set_model_tag
from vllm.compilation.decorators import support_torch_compile
from vllm.compilation.wrapper import TorchCompileWithNoGuardsWrapper
from vllm.config import CompilationMode, VllmConfig, set_current_vllm_config

from vllm_selfspec.core.draft_settings import DraftSettings
from vllm_selfspec.glue.draft_model import LayerSkipDraftModel


def _draft_compile_enabled(vllm_config: VllmConfig) -> bool:
    spec = vllm_config.speculative_config
    return not (spec is not None and spec.enforce_eager)


@support_torch_compile(
    dynamic_arg_dims={"input_ids": 0, "positions": -1, "inputs_embeds": 0},
    enable_if=_draft_compile_enabled,
)
class CompiledLayerSkipDraftModel(LayerSkipDraftModel):
    """A :class:`LayerSkipDraftModel` compiled through vLLM's ``@support_torch_compile``."""

    def forward(self, input_ids, positions, inputs_embeds=None):
        # Defined here so that vLLM's per-instance dispatch to compiled code swaps this
        # class's function only, never the uncompiled base class's.
        return super().forward(input_ids, positions, inputs_embeds)


def build_draft_model(vllm_config: VllmConfig, target, settings: DraftSettings, skip_set) -> LayerSkipDraftModel:
    """The draft over ``target`` for ``settings``, compiled as the engine's config says.

    It is built under a copy of the engine's config whose speculative config carries
    ``settings`` (so the config hash, and with it vLLM's AOT cache key, names this skip
    set) and under the model tag ``self_skip_draft_<digest>`` (the piecewise backend's
    cache folder). Compilation itself happens at the first call.
    """
    draft_config = copy.copy(vllm_config)
    spec = copy.copy(vllm_config.speculative_config)
    object.__setattr__(spec, "draft", settings)
    object.__setattr__(draft_config, "speculative_config", spec)
    with set_current_vllm_config(draft_config), set_model_tag(f"self_skip_draft_{settings.graph_digest()}"):
        return CompiledLayerSkipDraftModel(target=target, skip_set=skip_set, draft_vocab=settings.draft_vocab)


def release_draft_model(model: LayerSkipDraftModel | None) -> None:
    """Let a replaced draft be freed, with its compiled graph (and, on a GPU, its CUDA graphs).

    vLLM's compile wrapper registers a Dynamo bytecode hook per compiled model, which pins
    the model for the life of the process; ``cleanup`` removes it, as vLLM's ``LLMEngine``
    does for its own models at shutdown.
    """
    if isinstance(model, TorchCompileWithNoGuardsWrapper):
        model.cleanup()


def is_compiled(model: LayerSkipDraftModel) -> bool:
    """Whether vLLM compiles this draft (False: it runs eagerly)."""
    return isinstance(model, CompiledLayerSkipDraftModel) and not model.do_not_compile


def compilation_description(vllm_config: VllmConfig, model: LayerSkipDraftModel) -> str:
    """How the draft is compiled, for logs and ``doctor``."""
    if not is_compiled(model):
        return "eager"
    compilation = vllm_config.compilation_config
    backend = "vLLM's piecewise backend" if compilation.mode == CompilationMode.VLLM_COMPILE \
        else f"{compilation.backend or 'inductor'}, traced once"
    return f"vLLM @support_torch_compile ({compilation.mode.name}, {backend}), one graph per skip set"
