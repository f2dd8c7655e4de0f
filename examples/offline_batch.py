"""Offline batch generation with self_skip (run: python examples/offline_batch.py [MODEL])."""

import sys

from vllm import LLM, SamplingParams


def main() -> None:
    if len(sys.argv) > 1:
        model = sys.argv[1]
    else:
        from vllm_selfspec.tools.model_prep import prepare_default_model

        model = str(prepare_default_model())
    llm = LLM(model=model, speculative_config={"method": "self_skip"}, max_model_len=2048,
              kv_cache_memory_bytes=1 << 30)
    prompts = ["Explain what a hash table is.", "Write a haiku about autumn."]
    messages = [[{"role": "user", "content": p}] for p in prompts]
    for output in llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=96)):
        print(output.outputs[0].text.strip(), "\n---")


if __name__ == "__main__":
    main()
