"""``SelfSkipSpeculativeConfig``: vLLM's speculative config, extended with the ``self_skip`` method."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict
import vllm.envs as envs
from vllm.config.speculative import SpeculativeConfig, SpeculativeMethod
from vllm.config.utils import config
from vllm.logger import init_logger
from vllm.utils.hashing import safe_hash

from vllm_selfspec.core.draft_settings import DraftSettings, SelfSkipOptions
from vllm_selfspec.core.resolve import resolve_self_skip
from vllm_selfspec.core.skip_set import SelfSkipConfigError, SkipSet
from vllm_selfspec.glue.identity import (
    SUPPORTED_ARCHITECTURES,
    attention_kinds,
    mixed_attention_error,
    model_identity,
)

logger = init_logger(f"vllm.{__name__}")  # under "vllm", so vLLM's handlers and level apply

SELF_SKIP_METHOD = "self_skip"
SELF_SKIP_ALIASES = ("self_skip", "self-skip")
"""Spellings accepted wherever a speculative method or ``--speculative-model`` is given."""

NO_ASYNC_SCHEDULING_REASON = (
    "under async scheduling vLLM's scheduler books each step's drafts a step ahead, and the "
    "workers must draft exactly that many, while adaptive exit stops drafting inside the step"
)
"""Why a self_skip engine with adaptive exit runs without async scheduling."""


@config(config=ConfigDict(arbitrary_types_allowed=True))
class SelfSkipSpeculativeConfig(SpeculativeConfig):
    """Speculative config for ``method="self_skip"``: the target drafts for itself, skipping sublayers.

    Built only for ``self_skip`` (by ``PatchEngineArgs``, which moves the user's
    ``self_skip`` options into ``self_skip_options``); every other method keeps vLLM's
    own ``SpeculativeConfig``. Construction resolves them into ``draft`` and sets vLLM's
    ``num_speculative_tokens`` and ``num_speculative_tokens_per_batch_size`` from it.
    """

    method: Literal[SpeculativeMethod, "self_skip"] | None = None  # type: ignore[assignment]
    self_skip_options: SelfSkipOptions | None = None
    """What the user gave for the options self_skip adds (skip sets, profile, draft head, exit rule)."""
    draft: DraftSettings | None = None
    """The resolved draft settings; filled in at construction."""
    skip_source: str = ""
    """Where the skip set came from; filled in at construction, for logs."""
    adaptive_exit_chosen: bool = False
    """Whether adaptive exit was set by the user or a profile; filled in at construction. Otherwise
    it is on by default only where the engine schedules synchronously (``PatchVllmConfigScheduling``)."""

    def __post_init__(self) -> None:
        if self.method != SELF_SKIP_METHOD:
            raise ValueError(f"{type(self).__name__} is only for method {SELF_SKIP_METHOD!r}")
        target = self.target_model_config
        if target is None:
            raise ValueError("self_skip needs target_model_config")
        if self.model not in (None, target.model):
            raise SelfSkipConfigError(
                f"speculative_config.model: self_skip drafts with the target model itself; "
                f"remove model={self.model!r}"
            )
        if envs.VLLM_USE_V2_MODEL_RUNNER:
            raise SelfSkipConfigError(
                "VLLM_USE_V2_MODEL_RUNNER=1: Model Runner V2 cannot host the self_skip "
                "proposer; unset it and vLLM uses the V1 model runner"
            )
        for name in ("parallel_drafting", "use_heterogeneous_vocab"):
            if getattr(self, name):
                raise SelfSkipConfigError(f"speculative_config.{name}: not supported by self_skip")
        parallel = self.target_parallel_config
        for name in ("pipeline_parallel_size", "data_parallel_size"):
            if getattr(parallel, name) > 1:
                raise SelfSkipConfigError(
                    f"{name}={getattr(parallel, name)}: self_skip supports tensor parallelism "
                    "only; set it to 1"
                )
        architectures = list(target.architectures or [])
        if not set(architectures) & set(SUPPORTED_ARCHITECTURES):
            raise SelfSkipConfigError(
                f"self_skip cannot drive architecture {'/'.join(architectures) or 'unknown'}; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        kinds = attention_kinds(target.hf_text_config)
        if len(kinds) > 1:
            raise SelfSkipConfigError(mixed_attention_error(str(target.model), kinds))
        identity = model_identity(target)
        draft, self.skip_source = resolve_self_skip(
            identity,
            max_model_len=target.max_model_len,
            options=self.self_skip_options or SelfSkipOptions(),
            num_speculative_tokens=self.num_speculative_tokens,
            batch_size_schedule=self.num_speculative_tokens_per_batch_size,
        )
        if draft.draft_vocab and self.target_parallel_config.tensor_parallel_size > 1:
            raise SelfSkipConfigError(
                f"draft_vocab_size={len(draft.draft_vocab)}: the cheap draft head needs "
                "tensor_parallel_size=1 (the LM head is split across ranks); set draft_vocab_size=0"
            )
        self.draft = draft
        self.adaptive_exit_chosen = (self.self_skip_options is not None and (
            self.self_skip_options.adaptive_exit is not None or self.self_skip_options.skip_profile is not None)
        ) or self.skip_source.startswith("shipped profile")
        self.num_speculative_tokens = draft.num_speculative_tokens
        schedule = draft.num_speculative_tokens_per_batch_size
        self.num_speculative_tokens_per_batch_size = None if schedule is None else list(schedule)
        self.model = target.model
        self.draft_model_config = target
        self.draft_parallel_config = self.target_parallel_config
        self.draft_tensor_parallel_size = self.target_parallel_config.tensor_parallel_size
        if draft.never_drafts():
            logger.warning(
                "self_skip: num_speculative_tokens_per_batch_size %s turns drafting off at every batch "
                "size (where it was measured, drafting did not beat decoding without drafts), so vLLM "
                "runs without speculative decoding. Run `vllm-selfspec tune` on this machine, or set "
                "num_speculative_tokens_per_batch_size to draft anyway.",
                self.num_speculative_tokens_per_batch_size,
            )
        logger.info(
            "self_skip: K=%d, %s, %s (from %s)",
            draft.num_speculative_tokens,
            self.skip_set().describe(),
            draft.describe_head_and_exit(),
            self.skip_source,
        )

    def compute_hash(self) -> str:
        """vLLM's hash, plus what shapes the draft's graph (skip set, draft head).

        vLLM keys its compile caches on the config hash, so each skip set's compiled
        draft is cached apart.
        """
        return safe_hash(f"{super().compute_hash()}|{self.draft.graph_digest()}".encode(),
                         usedforsecurity=False).hexdigest()

    def skip_set(self) -> SkipSet:
        """The resolved skip set."""
        return self.draft.skip_set(self.target_model_config.hf_text_config.num_hidden_layers)

    def uses_draft_model(self) -> bool:
        """True: the draft is a model (the target, skipping sublayers).

        This routes vLLM's V1 runner through its draft-model path: lookahead KV
        slots for the drafts, the padded drafter batch, and ``DraftModelProposer``.
        """
        return True

    @property
    def max_num_new_slots_for_drafting(self) -> int:
        """0: each draft step feeds one token per request, so no extra query slots."""
        return 0
