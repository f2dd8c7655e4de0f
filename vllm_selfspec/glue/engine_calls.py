"""Calls into a running engine's engine core (the self_skip scheduler's booking), from tools and tests."""

from __future__ import annotations

from typing import Any

from vllm_selfspec.core.draft_settings import DraftSettings


def call_engine_core(llm, method: str, *args) -> Any:
    """Call an ``EngineCore`` method of ``llm`` (an offline ``LLM``): as vLLM's utility call when the
    engine core runs in its own process, directly when it runs in this one."""
    client = llm.llm_engine.engine_core
    if hasattr(client, "call_utility"):
        return client.call_utility(method, *args)
    return getattr(client.engine_core, method)(*args)


def configure_draft(llm, settings: DraftSettings) -> str:
    """Switch a running self_skip engine to ``settings``: the scheduler's draft booking first (it
    refuses what async scheduling cannot run), then every worker's draft; return the draft plan."""
    call_engine_core(llm, "selfspec_configure_draft_booking", settings.to_builtins())
    return llm.collective_rpc("selfspec_configure_draft", args=(settings.to_builtins(),))[0]


def draft_lengths_record(llm) -> dict:
    """The scheduler's draft-length record: ``{"steps": [[batch size, K], ...], "incumbents": {bucket: K},
    "summary": str}`` (``summary`` ``"off"`` without the controller)."""
    return call_engine_core(llm, "selfspec_draft_lengths")
