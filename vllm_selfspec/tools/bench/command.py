"""``vllm-selfspec bench``: plain vLLM, self_skip, ngram and draft_model side by side in one run.

Each method gets one engine, started once and reused for every workload (prompt set ×
sampling × batch size). Timers installed in the worker split each engine step into
the target forward, the proposer's ``propose`` call and the rest; the speed model
(:mod:`vllm_selfspec.core.speed_model`) turns them into a predicted speedup that the
report sets beside the measured one.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from vllm_selfspec.tools.options import OptionError, comma_separated, parse_integers
from vllm_selfspec.tools.prompts import PromptSetError, load_prompt_set

METHODS = ("plain", "self_skip", "ngram", "draft_model")
SAMPLING = {"greedy": {"temperature": 0.0}, "random": {"temperature": 0.8, "top_p": 0.95}}
FULL = dict(prompt_sets="humaneval,chat,summarization", batch_sizes="1,8,32", sampling="greedy,random",
            max_tokens=32, single_requests=2)
QUICK = dict(prompt_sets="chat", batch_sizes="1,4", sampling="greedy,random", max_tokens=16, single_requests=1)
BENCH_WORKER_EXTENSION = "vllm_selfspec.tools.bench.worker.BenchWorkerExtension"


@dataclass
class BenchSettings:
    """What one bench run measures; validated before any engine starts."""

    model: str
    methods: list[str]
    prompt_sets: dict[str, list[str]]
    batch_sizes: list[int]
    sampling: list[str]
    max_tokens: int
    num_speculative_tokens: int
    single_requests: int
    skip_profile: str | None
    dtype: str
    eager: bool
    out: Path
    quick: bool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench's command-line options."""
    parser.add_argument("--out", required=True, help="folder for report.md, results.json and the plots")
    parser.add_argument("--model", help="model folder (default: the prepared SmolLM2-135M-Instruct)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--prompt-sets", help=f"comma-separated: humaneval, chat, summarization or files "
                        f"(default {FULL['prompt_sets']})")
    parser.add_argument("--batch-sizes", help=f"comma-separated (default {FULL['batch_sizes']})")
    parser.add_argument("--sampling", help="comma-separated, from greedy, random (default both)")
    parser.add_argument("--max-tokens", type=int, help=f"output tokens per request (default {FULL['max_tokens']})")
    parser.add_argument("--num-speculative-tokens", type=int, default=4, help="K for every method (default 4)")
    parser.add_argument("--skip-profile", help="self_skip profile (default: the shipped one for the model)")
    parser.add_argument("--dtype", help="default: the model's own dtype; float32 on the CPU (exact token identity)")
    parser.add_argument("--eager", action="store_true", help="enforce_eager=True (default: vLLM's compiled mode)")
    parser.add_argument("--quick", action="store_true",
                        help=f"small run for tests: {QUICK['prompt_sets']} prompts, batch sizes "
                        f"{QUICK['batch_sizes']}, {QUICK['max_tokens']} tokens, eager")


def validate(args: argparse.Namespace) -> BenchSettings:
    """Check every option and load the prompts; raise ``OptionError`` naming the option."""
    from vllm_selfspec.tools.engine_runs import default_dtype

    defaults = QUICK if args.quick else FULL
    methods = comma_separated(args.methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise OptionError(f"--methods: unknown method {', '.join(map(repr, unknown)) or '(none given)'}; "
                          f"choose from {', '.join(METHODS)}")
    batch_sizes = parse_integers("--batch-sizes", args.batch_sizes or defaults["batch_sizes"], 1)
    sampling = comma_separated(args.sampling or defaults["sampling"])
    if not sampling or any(s not in SAMPLING for s in sampling):
        raise OptionError(f"--sampling: choose from {', '.join(SAMPLING)}, got {args.sampling!r}")
    max_tokens = defaults["max_tokens"] if args.max_tokens is None else args.max_tokens
    if max_tokens < 1:
        raise OptionError(f"--max-tokens: must be at least 1, got {max_tokens}")
    if args.num_speculative_tokens < 1:
        raise OptionError(f"--num-speculative-tokens: must be at least 1, got {args.num_speculative_tokens}")
    prompt_sets: dict[str, list[str]] = {}
    for name in comma_separated(args.prompt_sets or defaults["prompt_sets"]):
        try:
            prompt_sets[Path(name).stem if Path(name).suffix else name] = load_prompt_set(name)
        except PromptSetError as error:
            raise OptionError(f"--prompt-sets: {error}") from None
    if args.skip_profile and not Path(args.skip_profile).is_file():
        raise OptionError(f"--skip-profile: file {args.skip_profile!r} does not exist")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise OptionError(f"--out: cannot write to {str(out)!r}: {error.strerror or error}") from None
    if args.model:
        model = args.model
    else:
        from vllm_selfspec.tools.model_prep import prepare_default_model

        model = str(prepare_default_model())
    return BenchSettings(
        model=model, methods=methods, prompt_sets=prompt_sets, batch_sizes=batch_sizes, sampling=sampling,
        max_tokens=max_tokens, num_speculative_tokens=args.num_speculative_tokens,
        single_requests=defaults["single_requests"], skip_profile=args.skip_profile, dtype=args.dtype or default_dtype(),
        eager=args.eager or args.quick, out=out, quick=args.quick,
    )


# --- the run -----------------------------------------------------------------------------


@dataclass
class Row:
    """One method on one workload: wall time, the workers' per-phase step timers, spec counters."""

    method: str
    prompt_set: str
    sampling: str
    batch_size: int
    requests: int
    output_tokens: int
    seconds: float
    timers: dict  # prefill_/decode_ steps, s, forward_s, draft_s, draft_forward_s
    peak_rss_mib: float
    drafts: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    per_position_rates: list[float] = field(default_factory=list)
    request_acceptance_lengths: list[float] = field(default_factory=list)  # per request, from vLLM
    token_ids: list[list[int]] = field(default_factory=list, repr=False)

    @property
    def tokens_per_s(self) -> float:
        """Output tokens per second of wall time."""
        return self.output_tokens / self.seconds

    @property
    def ms_per_output_token(self) -> float:
        """Time per output token of one request stream (batch size / throughput)."""
        return 1000 * self.seconds * min(self.batch_size, self.requests) / self.output_tokens

    @property
    def decode_tokens(self) -> int:
        """Output tokens made by decode steps (each request's first token comes from its prefill)."""
        return self.output_tokens - self.requests

    @property
    def mean_acceptance_length(self) -> float:
        """Tokens per request per verification step (1 + accepted drafts)."""
        return 1 + self.accepted_tokens / self.drafts if self.drafts else 1.0


def speculative_config(method: str, settings: BenchSettings) -> dict | None:
    """The ``speculative_config`` for one bench method."""
    k = settings.num_speculative_tokens
    if method == "plain":
        return None
    if method == "self_skip":
        # K held at every batch size: the bench measures drafting itself; the profile's
        # never-slower schedule is judged by `vllm-selfspec evaluate`.
        config = {"method": "self_skip", "num_speculative_tokens": k, "num_speculative_tokens_per_batch_size": [[1, 1, k]]}
        if settings.skip_profile:
            config["skip_profile"] = settings.skip_profile
        return config
    if method == "ngram":
        return {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    return {"method": "draft_model", "model": settings.model, "num_speculative_tokens": k}


def _workload_prompts(llm, name: str, prompts: list[str], count: int) -> list[str]:
    from vllm_selfspec.tools.engine_runs import chat_prompts

    chosen = list(itertools.islice(itertools.cycle(prompts), count))
    return chosen if name == "humaneval" else chat_prompts(llm, chosen)


def run_method(method: str, settings: BenchSettings, log=print) -> tuple[list[Row], dict]:
    """Every workload on one engine for ``method``; also the model's shape and the engine settings."""
    from vllm import SamplingParams

    from vllm_selfspec.tools.engine_runs import SpecDecodeCounts, make_llm, release

    spec = speculative_config(method, settings)
    per_request = {} if spec is None else {"per_request_spec_decode_metrics": "summary"}
    llm = make_llm(settings.model, spec, dtype=settings.dtype, enforce_eager=settings.eager,
                   max_num_seqs=max(settings.batch_sizes),
                   worker_extension_cls=BENCH_WORKER_EXTENSION, **per_request)
    rows: list[Row] = []
    try:
        llm.collective_rpc("selfspec_install_step_timers")
        shape = llm.collective_rpc("selfspec_model_shape")[0]
        config = llm.llm_engine.vllm_config.speculative_config
        engine_info = {"speculative_config": None if config is None else {
            "method": config.method, "num_speculative_tokens": config.num_speculative_tokens,
            **({"skip_attn": list(config.draft.skip_attn), "skip_mlp": list(config.draft.skip_mlp),
                "draft_vocab_size": len(config.draft.draft_vocab),
                "skip_source": config.skip_source} if method == "self_skip" else {}),
        }}
        warm = _workload_prompts(llm, "chat", load_prompt_set("chat"), max(settings.batch_sizes))
        llm.generate(warm, SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)
        llm.collective_rpc("selfspec_read_and_reset_step_timers", args=(0.0, 0.0))
        for (name, prompts), sampling, batch_size in itertools.product(
            settings.prompt_sets.items(), settings.sampling, settings.batch_sizes
        ):
            params = SamplingParams(max_tokens=settings.max_tokens, ignore_eos=True, **SAMPLING[sampling])
            batches = ([[p] for p in _workload_prompts(llm, name, prompts, settings.single_requests)]
                       if batch_size == 1 else [_workload_prompts(llm, name, prompts, batch_size)])
            before = SpecDecodeCounts.read(llm)
            outputs, seconds, timers = [], 0.0, {}
            for batch in batches:
                start = time.perf_counter()
                outputs += llm.generate(batch, params, use_tqdm=False)
                end = time.perf_counter()
                seconds += end - start
                reading = llm.collective_rpc("selfspec_read_and_reset_step_timers", args=(start, end))[0]
                peak_rss_mib = reading.pop("peak_rss_mib")
                timers = {key: timers.get(key, 0) + value for key, value in reading.items()}
            counts = SpecDecodeCounts.read(llm).minus(before)
            token_ids = [list(o.outputs[0].token_ids) for o in outputs]
            row = Row(
                method=method, prompt_set=name, sampling=sampling, batch_size=batch_size,
                requests=len(outputs), output_tokens=sum(map(len, token_ids)), seconds=seconds,
                timers=timers, peak_rss_mib=peak_rss_mib,
                drafts=counts.drafts, draft_tokens=counts.draft_tokens, accepted_tokens=counts.accepted_tokens,
                per_position_rates=counts.per_position_rates, token_ids=token_ids,
                request_acceptance_lengths=[
                    o.outputs[0].spec_decode_metrics.to_dict()["mean_acceptance_length"]
                    for o in outputs if o.outputs[0].spec_decode_metrics is not None
                ],
            )
            rows.append(row)
            log(f"  {method:>11} {name:>13} {sampling:>6} bs {batch_size:>2}: {row.tokens_per_s:7.1f} tok/s"
                + (f", {row.mean_acceptance_length:.2f} tokens/step" if row.drafts else ""))
    finally:
        release(llm)
    return rows, {"shape": shape, **engine_info}


def machine_label() -> dict:
    """Where and with what the figures were measured."""
    import torch
    import vllm

    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores"
                   + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "vllm": vllm.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def run_bench(args: argparse.Namespace) -> int:
    """Validate, run every method, write the report; 0 on success."""
    settings = validate(args)
    from vllm_selfspec.tools.bench.report import build_results, write_report

    started = time.perf_counter()
    print(f"bench: {settings.model}; methods {', '.join(settings.methods)}; prompt sets "
          f"{', '.join(settings.prompt_sets)}; batch sizes {settings.batch_sizes}; {', '.join(settings.sampling)}; "
          f"{settings.max_tokens} tokens; K={settings.num_speculative_tokens}; "
          f"{'eager' if settings.eager else 'compiled'}; dtype {settings.dtype}")
    rows: list[Row] = []
    engines: dict[str, dict] = {}
    for method in settings.methods:
        print(f"- {method}")
        method_rows, engines[method] = run_method(method, settings)
        rows += method_rows
    results = build_results(rows, engines, settings, machine_label(), time.perf_counter() - started)
    paths = write_report(results, settings.out)
    print(f"report: {paths['markdown']} ({time.perf_counter() - started:.0f} s)")
    return 0

