"""``SelfSkipSpeculativeConfig``: vLLM's speculative config, extended with the ``self_skip`` method."""

from __future__ import annotations

from typing import Literal

import vllm.envs as envs
from vllm.config.speculative import SpeculativeConfig, SpeculativeMethod
from vllm.config.utils import config
from vllm.logger import init_logger

from vllm_selfspec.core.resolve import resolve_self_skip
from vllm_selfspec.core.skip_set import SelfSkipConfigError, SkipSet
from vllm_selfspec.glue.identity import SUPPORTED_ARCHITECTURES, model_identity

logger = init_logger(f"vllm.{__name__}")  # under "vllm", so vLLM's handlers and level apply

SELF_SKIP_METHOD = "self_skip"
SELF_SKIP_ALIASES = ("self_skip", "self-skip")
"""Spellings accepted wherever a speculative method or ``--speculative-model`` is given."""


@config
class SelfSkipSpeculativeConfig(SpeculativeConfig):
    """Speculative config for ``method="self_skip"``: the target drafts for itself, skipping sublayers.

    Built only for ``self_skip``; every other method keeps vLLM's own ``SpeculativeConfig``.
    After construction ``skip_attn``, ``skip_mlp`` and ``num_speculative_tokens`` hold the
    resolved values (explicit lists, a profile, the shipped profile, or the heuristic).
    """

    method: Literal[SpeculativeMethod, "self_skip"] | None = None  # type: ignore[assignment]
    skip_attn: list[int] | None = None
    """Decoder-layer indices whose attention sublayer the draft bypasses."""
    skip_mlp: list[int] | None = None
    """Decoder-layer indices whose MLP sublayer the draft bypasses."""
    skip_profile: str | None = None
    """Path of a skip-profile JSON file made by ``vllm-selfspec tune``."""
    draft_vocab_size: int | None = None
    """Tokens the draft's LM head scores (0: full vocabulary); default from the profile."""
    adaptive_exit: bool | None = None
    """Stop each request's draft when its top-1 probability drops under the adaptive threshold."""
    draft_exit_target_acceptance: float | None = None
    """Acceptance rate the adaptive threshold steers toward (Draft & Verify: 0.85-0.90)."""
    skip_source: str = ""
    """Where the skip set came from; filled in at construction, for logs."""
    draft_vocab: list[int] | None = None
    """The resolved draft-head token ids (ascending); filled in at construction."""

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
        identity = model_identity(target)
        resolved = resolve_self_skip(
            identity,
            max_model_len=target.max_model_len,
            skip_attn=self.skip_attn,
            skip_mlp=self.skip_mlp,
            skip_profile=self.skip_profile,
            num_speculative_tokens=self.num_speculative_tokens,
            draft_vocab_size=self.draft_vocab_size,
            adaptive_exit=self.adaptive_exit,
            draft_exit_target_acceptance=self.draft_exit_target_acceptance,
            batch_size_schedule=self.num_speculative_tokens_per_batch_size,
        )
        if resolved.draft_vocab and self.target_parallel_config.tensor_parallel_size > 1:
            raise SelfSkipConfigError(
                f"draft_vocab_size={len(resolved.draft_vocab)}: the cheap draft head needs "
                "tensor_parallel_size=1 (the LM head is split across ranks); set draft_vocab_size=0"
            )
        self.skip_attn = list(resolved.skip_set.attn)
        self.skip_mlp = list(resolved.skip_set.mlp)
        self.num_speculative_tokens = resolved.num_speculative_tokens
        self.skip_source = resolved.source
        self.draft_vocab = list(resolved.draft_vocab)
        self.draft_vocab_size = len(resolved.draft_vocab)
        self.adaptive_exit = resolved.adaptive_exit
        self.draft_exit_target_acceptance = resolved.draft_exit_target_acceptance
        self.num_speculative_tokens_per_batch_size = resolved.batch_size_schedule
        self.model = target.model
        self.draft_model_config = target
        self.draft_parallel_config = self.target_parallel_config
        self.draft_tensor_parallel_size = self.target_parallel_config.tensor_parallel_size
        if self.never_drafts():
            logger.warning(
                "self_skip: num_speculative_tokens_per_batch_size %s turns drafting off at every batch "
                "size (where it was measured, drafting did not beat decoding without drafts), so vLLM "
                "runs without speculative decoding. Run `vllm-selfspec tune` on this machine, or set "
                "num_speculative_tokens_per_batch_size to draft anyway.",
                self.num_speculative_tokens_per_batch_size,
            )
        logger.info(
            "self_skip: K=%d, %s, %s (from %s)",
            self.num_speculative_tokens,
            resolved.skip_set.describe(),
            resolved.describe_head_and_exit(),
            resolved.source,
        )

    def never_drafts(self) -> bool:
        """Whether the batch-size schedule asks for no drafts at any batch size."""
        schedule = self.num_speculative_tokens_per_batch_size
        return schedule is not None and all(k == 0 for _, _, k in schedule)

    def skip_set(self) -> SkipSet:
        """The resolved skip set."""
        return SkipSet.build(
            self.target_model_config.hf_text_config.num_hidden_layers,
            self.skip_attn or [],
            self.skip_mlp or [],
        )

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
