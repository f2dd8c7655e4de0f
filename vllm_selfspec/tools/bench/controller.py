"""``vllm-selfspec bench-controller``: the draft-length controller against plain vLLM and every fixed K.

Two engines, both loaded with the test-only target-delay extension: plain vLLM, and
``self_skip`` as a user without a profile gets it (the given or heuristic skip set,
the controller on by default). Each round measures, at each batch size on held-out
prompts: plain vLLM; the controller, fresh and after a stated warm-up on the
calibration prompts; and each fixed K, switched in the same engine (each round starts
with the next of these arms). Speeds are medians over rounds with their range; the K the controller chose at every step is
plotted over time. ``--target-delay-ms`` adds a fixed delay to every target forward
(never to drafts), to emulate a large memory-bound model where drafting pays.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from vllm_selfspec.glue.engine_calls import configure_draft, draft_lengths_record
from vllm_selfspec.tools.options import OptionError, parse_integers

MAX_WARMUP_PASSES = 8
"""Most passes of one batch size's workload, on the calibration prompts, to warm a fresh controller up."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options."""
    parser.add_argument("--out", required=True, help="folder for report.md, results.json and draft_lengths.png")
    parser.add_argument("--model", help="model folder (default: the prepared SmolLM2-135M-Instruct)")
    parser.add_argument("--skip-attn", help="comma-separated attention sublayers to skip (default: the heuristic set)")
    parser.add_argument("--skip-mlp", help="comma-separated MLP sublayers to skip (default: the heuristic set)")
    parser.add_argument("--num-speculative-tokens", type=int, default=4, help="K_max (default 4)")
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated (default 1,8,32)")
    parser.add_argument("--fixed-k", default="1,2,3,4",
                        help="fixed K measured beside the controller ('' for none); K=0 is the self_skip engine "
                             "not drafting, which separates the engine's own overhead from the controller's choices")
    parser.add_argument("--target-delay-ms", type=float, default=0.0,
                        help="TEST-ONLY: sleep this long after every target forward (default 0)")
    parser.add_argument("--num-prompts", type=int, default=8, help="held-out chat prompts at batch 1 (default 8)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtype", help="default: the model's own dtype; float32 on the CPU")
    parser.add_argument("--eager", action="store_true", help="enforce_eager=True (default: compiled)")


def validate(args: argparse.Namespace) -> tuple[list[int], list[int], list[int] | None, list[int] | None]:
    """Batch sizes, fixed K values and skip sets (``None``: the heuristic's); raise
    ``OptionError`` naming the option before any engine starts."""
    batch_sizes = parse_integers("--batch-sizes", args.batch_sizes, 1)
    fixed = parse_integers("--fixed-k", args.fixed_k, 0)
    if not batch_sizes:
        raise OptionError("--batch-sizes: give at least one batch size")
    if args.num_speculative_tokens < 1:
        raise OptionError(f"--num-speculative-tokens: must be at least 1, got {args.num_speculative_tokens}")
    if any(k > args.num_speculative_tokens for k in fixed):
        raise OptionError(f"--fixed-k: values cannot exceed --num-speculative-tokens "
                          f"({args.num_speculative_tokens}), got {args.fixed_k!r}")
    for option, value in (("--rounds", args.rounds), ("--num-prompts", args.num_prompts),
                          ("--max-tokens", args.max_tokens)):
        if value < 1:
            raise OptionError(f"{option}: must be at least 1, got {value}")
    if args.target_delay_ms < 0:
        raise OptionError(f"--target-delay-ms: must not be negative, got {args.target_delay_ms}")
    skip_attn = parse_integers("--skip-attn", args.skip_attn, 0) if args.skip_attn is not None else None
    skip_mlp = parse_integers("--skip-mlp", args.skip_mlp, 0) if args.skip_mlp is not None else None
    return batch_sizes, fixed, skip_attn, skip_mlp


def run_bench_controller(args: argparse.Namespace) -> int:
    """Measure and write the report; 0 on success."""
    from vllm import SamplingParams

    from vllm_selfspec.core.draft_length_controller import batch_bucket, describe_bucket
    from vllm_selfspec.core.skip_set import heuristic_skip_set
    from vllm_selfspec.tools.bench.target_delay import TARGET_DELAY_EXTENSION
    from vllm_selfspec.tools.engine_runs import (
        chat_prompts, combined_tokens_per_s, default_dtype, describe_draft, make_llm, release, timed_workload,
    )
    from vllm_selfspec.tools.model_prep import prepare_default_model
    from vllm_selfspec.tools.prompts import CALIBRATION_PROMPTS, load_prompt_file, load_prompt_set

    batch_sizes, fixed, skip_attn, skip_mlp = validate(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = args.model or str(prepare_default_model())
    engine = dict(dtype=args.dtype or default_dtype(), enforce_eager=args.eager,
                  worker_extension_cls=TARGET_DELAY_EXTENSION)
    plain = make_llm(model, None, **engine)
    num_layers = plain.llm_engine.vllm_config.model_config.hf_text_config.num_hidden_layers
    heuristic = heuristic_skip_set(num_layers)
    spec = {"method": "self_skip", "num_speculative_tokens": args.num_speculative_tokens,
            "draft_length_controller": True,
            "skip_attn": list(heuristic.attn) if skip_attn is None else skip_attn,
            "skip_mlp": list(heuristic.mlp) if skip_mlp is None else skip_mlp}
    self_skip = make_llm(model, spec, **engine)
    controlled = self_skip.llm_engine.vllm_config.speculative_config.draft
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    held_out = chat_prompts(plain, load_prompt_set("chat"))
    calibration = chat_prompts(plain, load_prompt_file(CALIBRATION_PROMPTS))
    arms = ["plain", "controller", *(f"K={k}" for k in fixed)]
    speeds: dict[str, dict[int, list[float]]] = {arm: {b: [] for b in batch_sizes} for arm in arms}
    histories: list[list] = []
    summaries: list[str] = []
    warmup_passes: list[list[int]] = []
    started = time.time()

    def run(llm, prompts: list[str], batch_size: int) -> list:
        return timed_workload(llm, prompts[: args.num_prompts] if batch_size == 1 else prompts, params, batch_size)

    def measure(llm, arm: str) -> None:
        for batch_size in batch_sizes:
            speeds[arm][batch_size].append(combined_tokens_per_s(run(llm, held_out, batch_size)))

    def warm_up() -> list[int]:
        """Run each batch size's workload on the calibration prompts until the controller has
        chosen a K for that batch size's bucket; return the passes each took."""
        passes = []
        for batch_size in batch_sizes:
            for count in range(1, MAX_WARMUP_PASSES + 1):
                run(self_skip, calibration, batch_size)
                incumbents = draft_lengths_record(self_skip)["incumbents"]
                if incumbents.get(describe_bucket(batch_bucket(batch_size))) is not None:
                    break
            passes.append(count)
        return passes

    def switch(settings) -> None:
        configure_draft(self_skip, settings)

    try:
        for llm in (plain, self_skip):
            llm.collective_rpc("selfspec_delay_target_forward", args=(args.target_delay_ms / 1000,))
            timed_workload(llm, calibration[:2], SamplingParams(temperature=0.0, max_tokens=8), 2)  # compile

        def measure_controller() -> None:
            switch(controlled)  # a fresh controller
            warmup_passes.append(warm_up())
            warmed = len(draft_lengths_record(self_skip)["steps"])
            measure(self_skip, "controller")
            record = draft_lengths_record(self_skip)
            histories.append([warmed, record["steps"]])
            summaries.append(record["summary"])

        def measure_fixed(k: int) -> None:
            switch(controlled.replace(draft_length_controller=None, num_speculative_tokens=k))
            measure(self_skip, f"K={k}")

        arm_runs = [lambda: measure(plain, "plain"), measure_controller,
                    *(lambda k=k: measure_fixed(k) for k in fixed)]
        for round_index in range(args.rounds):
            shift = round_index % len(arm_runs)  # each round starts with the next arm
            for arm_run in arm_runs[shift:] + arm_runs[:shift]:
                arm_run()
        draft = describe_draft(self_skip)
    finally:
        release(plain)
        release(self_skip)

    results = {
        "model": model, "target_delay_ms": args.target_delay_ms, "draft": draft, "rounds": args.rounds,
        "max_tokens": args.max_tokens, "num_prompts_batch_1": args.num_prompts, "warmup_steps_per_k": controlled.draft_length_controller.warmup_steps,
        "warmup_passes": warmup_passes,
        "eager": args.eager, "dtype": engine["dtype"], "speeds": speeds, "controller_summaries": summaries,
        "draft_length_history": histories, "seconds": time.time() - started,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "report.md").write_text(_markdown(results, arms, batch_sizes))
    _plot(histories, out / "draft_lengths.png", args.target_delay_ms)
    print((out / "report.md").read_text())
    return 0


def _markdown(results: dict, arms: list[str], batch_sizes: list[int]) -> str:
    speeds = results["speeds"]
    lines = [
        f"# Draft-length controller: {results['model']}",
        "",
        f"- Command: `vllm-selfspec bench-controller` ({'eager' if results['eager'] else 'compiled'}, "
        f"{results['dtype']}, greedy, {results['max_tokens']} tokens, held-out chat prompts: "
        f"{results['num_prompts_batch_1']} one at a time at batch 1, one batch otherwise; {results['rounds']} rounds, "
        "each starting with the next arm).",
        f"- Target delay: {results['target_delay_ms']:g} ms after every target forward (TEST-ONLY emulation; "
        "drafts not delayed)." if results["target_delay_ms"] else "- No target delay.",
        f"- self_skip: {results['draft']}.",
        f"- The controller starts fresh each round and first warms up, not counted: at each batch size the "
        f"same workload on the calibration prompts until it has chosen a K for that batch size (its warm-up "
        f"climbs K = 0, 1, ... for {results['warmup_steps_per_k']} steps each); passes per round and batch "
        f"size: {results['warmup_passes']}.",
        "",
        "tok/s, median over rounds [lowest-highest]; ratio: median over plain vLLM's median. Each round "
        "measures every arm in turn, so the rounds' own ratios are paired (below each batch size).",
        "",
        "| arm | " + " | ".join(f"batch {b}" for b in batch_sizes) + " |",
        "|---|" + "---|" * len(batch_sizes),
    ]
    plain = {b: statistics.median(speeds["plain"][b]) for b in batch_sizes}
    for arm in arms:
        cells = []
        for b in batch_sizes:
            rates = speeds[arm][b]
            median = statistics.median(rates)
            cells.append(f"{median:.1f} [{min(rates):.1f}-{max(rates):.1f}] ({median / plain[b]:.3f}x)")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    fixed = [arm for arm in arms if arm.startswith("K=")]
    lines.append("")
    for b in batch_sizes:
        controller = statistics.median(speeds["controller"][b])
        if fixed:
            best = max(fixed, key=lambda arm: statistics.median(speeds[arm][b]))
            share = controller / statistics.median(speeds[best][b])
            lines.append(f"- batch {b}: controller {controller / plain[b]:.3f}x plain vLLM, {share:.1%} of the best "
                         f"fixed K ({best})")
        else:
            lines.append(f"- batch {b}: controller {controller / plain[b]:.3f}x plain vLLM")
        if "K=0" in arms:
            not_drafting = statistics.median(speeds["K=0"][b])
            lines.append(f"  - the self_skip engine not drafting (K=0) runs at {not_drafting / plain[b]:.3f}x plain "
                         f"vLLM; the controller at {controller / not_drafting:.3f}x of it")
        comparisons = [("controller", "plain")] + ([("K=0", "plain"), ("controller", "K=0")] if "K=0" in arms else [])
        lines.append("  - paired by round (geometric mean of the rounds' ratios [lowest-highest]): " + "; ".join(
            f"{arm} / {baseline} {_paired_ratio(speeds[arm][b], speeds[baseline][b])}" for arm, baseline in comparisons))
    for index, (warmed, steps) in enumerate(results["draft_length_history"]):
        measured = [k for _, k in steps[warmed:]]
        shares = ", ".join(f"K={k} {measured.count(k) / len(measured):.0%}" for k in sorted(set(measured)))
        lines.append(f"- round {index + 1}: K chosen in the measured steps: {shares}; "
                     f"controller: {results['controller_summaries'][index]}")
    lines += ["", "![K chosen at every step](draft_lengths.png)", ""]
    return "\n".join(lines)


def _paired_ratio(rates: list[float], baselines: list[float]) -> str:
    """Round-by-round ratios (each round measures every arm in turn), summarized."""
    ratios = [rate / baseline for rate, baseline in zip(rates, baselines)]
    return f"{statistics.geometric_mean(ratios):.3f}x [{min(ratios):.3f}-{max(ratios):.3f}]"


def _plot(histories: list[list], path: Path, delay_ms: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(len(histories), 1, figsize=(10, 2.2 * len(histories)), squeeze=False)
    for index, (warmed, steps) in enumerate(histories):
        axis = axes[index][0]
        axis.step(range(len(steps)), [k for _, k in steps], where="post", linewidth=0.8)
        axis.axvline(warmed, color="grey", linestyle="--", linewidth=0.8)
        axis.set_ylabel(f"K (round {index + 1})")
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1][0].set_xlabel("engine step (dashed: end of warm-up)")
    figure.suptitle(f"K chosen by the draft-length controller (target delay {delay_ms:g} ms)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
