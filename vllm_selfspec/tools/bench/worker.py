"""Timers the bench adds to vLLM's workers, through vLLM's ``worker_extension_cls``.

The methods become methods of every worker, so the bench calls them by name with
``LLM.collective_rpc``. They wrap the runner's own calls with timers and change
nothing else. Each engine step is recorded with its start time, whether it prefills
(it starts a request or carries a prompt chunk), and the time spent in the target's forward and LM head,
in the proposer's ``propose``, and in the draft model's forward and LM head.
"""

from __future__ import annotations

import contextlib
import resource
import time

import torch

from vllm_selfspec.glue.identity import model_identity


class BenchWorkerExtension:
    """Per-step timers, read and reset by the bench around every ``generate`` call."""

    def selfspec_install_step_timers(self) -> None:
        """Wrap the runner's step, model and proposer calls with timers (idempotent).

        ``forward_s`` is the target's forward and LM head outside drafting; inside the
        proposer's ``propose`` (``draft_s``), ``draft_forward_s`` is the draft model's
        forward and LM head, and the rest is draft sampling, metadata and input handling.
        """
        runner = self.model_runner
        if getattr(runner, "_selfspec_steps", None) is not None:
            return
        steps: list[dict] = []
        state = {"drafting": False, "depth": 0}
        synchronize = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

        @contextlib.contextmanager
        def adding_time_to(key):
            synchronize()
            start = time.perf_counter()
            try:
                yield
            finally:
                synchronize()
                if steps:
                    steps[-1][key] += time.perf_counter() - start

        def timed_model_call(function):
            def wrapper(*args, **kwargs):
                if state["depth"] or not steps:  # a nested call is already being timed
                    return function(*args, **kwargs)
                state["depth"] += 1
                try:
                    with adding_time_to("draft_forward_s" if state["drafting"] else "forward_s"):
                        return function(*args, **kwargs)
                finally:
                    state["depth"] -= 1

            return wrapper

        def timed_propose(function):
            def wrapper(*args, **kwargs):
                state["drafting"] = True
                try:
                    with adding_time_to("draft_s"):
                        return function(*args, **kwargs)
                finally:
                    state["drafting"] = False

            return wrapper

        execute_model = runner.execute_model
        spec = runner.speculative_config
        decode_tokens_per_request = 1 + (spec.num_speculative_tokens if spec is not None else 0)

        def recorded_step(scheduler_output, *args, **kwargs):
            scheduled = scheduler_output.total_num_scheduled_tokens
            if scheduled:
                # A step prefills if it starts a request or carries a prompt chunk (more tokens
                # than a decode step schedules).
                prefill = bool(scheduler_output.scheduled_new_reqs) or (
                    scheduled > len(scheduler_output.num_scheduled_tokens) * decode_tokens_per_request)
                steps.append({"start": time.perf_counter(), "prefill": prefill,
                              "forward_s": 0.0, "draft_s": 0.0, "draft_forward_s": 0.0})
            return execute_model(scheduler_output, *args, **kwargs)

        runner.execute_model = recorded_step
        runner._model_forward = timed_model_call(runner._model_forward)
        target = runner.get_model()
        target.compute_logits = timed_model_call(target.compute_logits)
        drafter = getattr(runner, "drafter", None)
        if drafter is not None:
            drafter.propose = timed_propose(drafter.propose)
            draft_model = getattr(drafter, "model", None)
            if draft_model is not None and draft_model is not target:
                draft_model.forward = timed_model_call(draft_model.forward)
                draft_model.compute_logits = timed_model_call(draft_model.compute_logits)
        runner._selfspec_steps = steps

    def selfspec_read_and_reset_step_timers(self, start: float, end: float) -> dict:
        """Prefill and decode totals for the steps between ``start`` and ``end`` (``perf_counter``).

        A step lasts from its start to the next step's start, so engine overhead outside
        the worker counts too; the first step also carries the time from ``start``, the
        last runs until ``end``. The worker's peak resident memory (MiB) comes along.
        """
        steps = self.model_runner._selfspec_steps
        totals = {f"{phase}_{key}": 0.0 for phase in ("prefill", "decode")
                  for key in ("steps", "s", "forward_s", "draft_s", "draft_forward_s")}
        for index, step in enumerate(steps):
            begin = start if index == 0 else step["start"]
            finish = steps[index + 1]["start"] if index + 1 < len(steps) else end
            phase = "prefill" if step["prefill"] else "decode"
            totals[f"{phase}_steps"] += 1
            totals[f"{phase}_s"] += finish - begin
            for key in ("forward_s", "draft_s", "draft_forward_s"):
                totals[f"{phase}_{key}"] += step[key]
        steps.clear()
        totals["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return totals

    def selfspec_model_shape(self) -> dict:
        """Weights that set a forward's compute, from the model's config: one attention and one MLP
        sublayer (a gated MLP), the LM head. (The loaded modules may not show them: on the CPU vLLM
        repacks linear weights into buffers that are not parameters.)"""
        model = model_identity(self.model_runner.model_config)
        hidden, heads = model.hidden_size, model.num_attention_heads
        head_dim = self.model_runner.model_config.get_head_size()
        return {
            "num_layers": model.num_layers,
            "attn_params": 2 * hidden * heads * head_dim + 2 * hidden * model.num_kv_heads * head_dim,
            "mlp_params": 3 * hidden * model.intermediate_size,
            "lm_head_params": model.vocab_size * hidden,
            "hidden_size": hidden,
        }
