"""Time one engine start and a first request: ``python start_time.py plain|self_skip``.

The start-up figures in ../../README.md ("The draft step and start-up, measured") time
this whole process from outside, plain and self_skip in turn (A B A B ...), 3 runs each
after one warm-up run each; the ratio is taken pair by pair.
"""

import sys
import time


def main() -> None:
    started = time.perf_counter()
    from vllm import SamplingParams

    from vllm_selfspec.tools.engine_runs import make_llm
    from vllm_selfspec.tools.model_prep import prepare_default_model

    model = str(prepare_default_model())
    spec = None if sys.argv[1] == "plain" else {
        "method": "self_skip", "skip_attn": [7], "skip_mlp": [], "num_speculative_tokens": 3}
    llm = make_llm(model, spec)
    ready = time.perf_counter()
    llm.generate(["Hello, my name is"], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    print(f"START {sys.argv[1]} engine={ready - started:.1f}s first_generate={time.perf_counter() - ready:.1f}s")


if __name__ == "__main__":  # engine processes are spawned, and re-import this file
    main()
