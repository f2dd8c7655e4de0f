"""GPU memory plan: self-skip against a separate draft model, per tensor-parallel size.

Self-skip drafts with the target's own weights and KV cache, so all memory left after
the target's weights holds KV. A separate draft model costs its weights on every GPU
(sharded at the target's tensor-parallel size, as vLLM's ``draft_model`` runs it) and
its own KV for every cached token. The figures are arithmetic from the model shapes;
``python -m vllm_selfspec.core.memory_plan`` prints the table in ``deploy/README.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on: parameter count and the KV cache's per-token shape."""

    name: str
    params: float
    num_layers: int
    num_kv_heads: int
    head_dim: int

    def weight_bytes(self, dtype_bytes: int) -> float:
        """Bytes of all weights."""
        return self.params * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: int) -> float:
        """Bytes of K and V for one token over all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes


LLAMA_65B = ModelShape("LLaMA-65B", 65.2e9, 80, 64, 128)
LLAMA_7B = ModelShape("LLaMA-7B", 6.74e9, 32, 32, 128)
"""LLaMA-7B shares LLaMA-65B's tokenizer: the usual separate draft for it."""


@dataclass(frozen=True)
class GpuBudget:
    """One GPU as vLLM sees it."""

    memory_gb: float = 80.0
    utilization: float = 0.90  # vLLM's gpu_memory_utilization
    activation_reserve_gb: float = 4.0  # activations, sampler and CUDA-graph pools (measured per deployment)
    dtype_bytes: int = 2  # bfloat16 weights and KV


@dataclass(frozen=True)
class MemoryPlanRow:
    """Per-GPU memory and whole-replica KV capacity for one deployment option."""

    option: str
    tensor_parallel_size: int
    weights_gb_per_gpu: float
    kv_gb_per_gpu: float
    kv_tokens: int
    sequences_at_context: int


def plan_row(target: ModelShape, draft: ModelShape | None, tensor_parallel_size: int,
             gpu: GpuBudget = GpuBudget(), context_len: int = 2048) -> MemoryPlanRow:
    """Memory of ``target`` with self-skip (``draft=None``) or with a separate ``draft``."""
    if tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be at least 1, got {tensor_parallel_size}")
    models = [target] if draft is None else [target, draft]
    weights = sum(m.weight_bytes(gpu.dtype_bytes) for m in models) / tensor_parallel_size
    usable = gpu.memory_gb * GB * gpu.utilization - gpu.activation_reserve_gb * GB
    kv_per_gpu = usable - weights
    if kv_per_gpu <= 0:
        raise ValueError(f"{target.name} does not fit at tensor-parallel size {tensor_parallel_size}")
    per_token = sum(m.kv_bytes_per_token(gpu.dtype_bytes) for m in models)
    tokens = int(kv_per_gpu * tensor_parallel_size // per_token)
    option = "self-skip (no draft weights, no draft KV)" if draft is None else f"separate draft: {draft.name}"
    return MemoryPlanRow(option, tensor_parallel_size, weights / GB, kv_per_gpu / GB, tokens,
                         tokens // context_len)


def markdown_table(target: ModelShape = LLAMA_65B, draft: ModelShape = LLAMA_7B,
                   sizes: tuple[int, ...] = (4, 8), gpu: GpuBudget = GpuBudget(),
                   context_len: int = 2048) -> str:
    """The memory plan as a markdown table, self-skip first at each tensor-parallel size."""
    lines = [
        f"| {target.name}, TP | option | weights / GPU | KV cache / GPU | KV tokens / replica "
        f"| {context_len}-token sequences | vs self-skip |",
        "|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        own = plan_row(target, None, size, gpu, context_len)
        other = plan_row(target, draft, size, gpu, context_len)
        for row in (own, other):
            change = "" if row is own else f"{row.kv_tokens / own.kv_tokens - 1:+.0%} tokens"
            lines.append(
                f"| {size} | {row.option} | {row.weights_gb_per_gpu:.1f} GB | {row.kv_gb_per_gpu:.1f} GB "
                f"| {row.kv_tokens:,} | {row.sequences_at_context} | {change} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
