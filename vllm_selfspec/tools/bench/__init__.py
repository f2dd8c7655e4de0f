"""``vllm-selfspec bench``: the command, its report, and the timers it adds to vLLM's workers."""
