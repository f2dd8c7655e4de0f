"""``vllm-selfspec tune``: search a model's skip profile on measured tokens per second.

One self_skip engine is started and kept; every trial switches its draft in place
(skip set, draft length, draft head, exit rule) through
:class:`~vllm_selfspec.glue.tuning_worker.DraftSwitchingWorkerExtension` and decodes
the calibration prompts one request at a time, greedy, as Draft & Verify's search
does. Optuna's TPE sampler proposes the trials; its journal file lets an interrupted
run resume. After the search the best draft's length is measured against speculation
off at several batch sizes, which gives vLLM's ``num_speculative_tokens_per_batch_size``
schedule (the never-slower guard). The result is a profile file.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from vllm_selfspec.core.draft_settings import DraftSettings
from vllm_selfspec.core.draft_vocab import check_draft_vocab_size, draft_vocab, rank_by_frequency
from vllm_selfspec.core.profile import (
    Measurement,
    ModelIdentity,
    SearchSettings,
    SkipProfile,
    find_shipped_profile,
    load_profile,
    save_profile,
)
from vllm_selfspec.core.schedule import best_draft_length, schedule_from_measurements
from vllm_selfspec.core.search import DraftCandidate, SearchSpace
from vllm_selfspec.core.skip_set import SelfSkipConfigError
from vllm_selfspec.tools.options import OptionError, parse_integers
from vllm_selfspec.glue.engine_calls import configure_draft
from vllm_selfspec.tools.prompts import CALIBRATION_PROMPTS, PromptSetError, load_prompt_file

SCHEDULE_MIN_GAIN = 1.02
"""Speculation keeps a batch size only if it beats drafting nothing by 2% (measurement noise)."""
SCHEDULE_ROUNDS = 3
"""Alternating rounds per batch size when the schedule is measured."""
RANKING_LENGTH = 16384
"""How many frequency-ranked token ids a profile keeps for its draft head."""
RANKING_SAMPLES = 8
RANKING_TOKENS = 256
"""Sampled continuations per calibration prompt, and their length, behind the token ranking."""


@dataclass
class TuneSettings:
    """One tuning run, validated before the engine starts."""

    model: str
    identity: ModelIdentity
    prompts: list[str]
    prompts_label: str
    budget: int
    out: Path
    journal: Path
    max_tokens: int
    draft_lengths: tuple[int, ...]
    draft_vocab_sizes: tuple[int, ...]
    schedule_batch_sizes: tuple[int, ...]
    eager: bool
    dtype: str
    seed: int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The tune command's options."""
    parser.add_argument("model", nargs="?", help="model folder (default: the prepared SmolLM2-135M-Instruct)")
    parser.add_argument("--prompts", help="calibration prompts, .jsonl ({\"prompt\": ...}) or .txt "
                        "(default: the shipped calibration set)")
    parser.add_argument("--budget", type=int, default=40, help="trials in all, counting resumed ones (default 40)")
    parser.add_argument("--out", help="profile to write (default: ./<model name>.self_skip.json); "
                        "its .optuna-journal file lets a later run resume")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per calibration request (default 32)")
    parser.add_argument("--draft-lengths", default="2,3,4,5,6", help="K values to search (default 2,3,4,5,6)")
    parser.add_argument("--draft-vocab-sizes", default="0,4096,8192,16384",
                        help="draft-head sizes to search, 0 = full vocabulary (default 0,4096,8192,16384)")
    parser.add_argument("--schedule-batch-sizes", default="1,4,8,16,32",
                        help="batch sizes the never-slower schedule is measured at (default 1,4,8,16,32)")
    parser.add_argument("--eager", action="store_true", help="enforce_eager=True (default: compiled, as vLLM)")
    parser.add_argument("--dtype", help="default: the model's own dtype; float32 on the CPU (exact token identity)")
    parser.add_argument("--seed", type=int, default=0)


def _int_list(option: str, text: str, minimum: int) -> tuple[int, ...]:
    """The distinct integers of a comma-separated option, sorted; at least one."""
    values = parse_integers(option, text, minimum)
    if not values:
        raise OptionError(f"{option}: give at least one value")
    return tuple(sorted(set(values)))


def validate(args: argparse.Namespace) -> TuneSettings:
    """Check every option, load the prompts and read the model's identity; no engine is started."""
    from transformers import AutoConfig

    from vllm_selfspec.glue.identity import identity_from_hf_config
    from vllm_selfspec.tools.engine_runs import default_dtype
    from vllm_selfspec.tools.model_prep import prepare_default_model

    if args.budget < 1:
        raise OptionError(f"--budget: must be at least 1 trial, got {args.budget}")
    if args.max_tokens < 1:
        raise OptionError(f"--max-tokens: must be at least 1, got {args.max_tokens}")
    try:
        prompts = load_prompt_file(args.prompts or CALIBRATION_PROMPTS)
    except PromptSetError as exc:
        raise OptionError(str(exc).replace("prompts:", "--prompts:", 1)) from None
    model = args.model or str(prepare_default_model())
    if not (Path(model) / "config.json").is_file():
        raise OptionError(f"model: {model!r} is not a model folder (no config.json)")
    hf_config = AutoConfig.from_pretrained(model)
    identity = identity_from_hf_config(model, getattr(hf_config, "text_config", hf_config),
                                       getattr(hf_config, "architectures", None))
    draft_vocab_sizes = _int_list("--draft-vocab-sizes", args.draft_vocab_sizes, 0)
    for size in draft_vocab_sizes:
        try:
            check_draft_vocab_size(size, identity.vocab_size)
        except SelfSkipConfigError as exc:
            raise OptionError(str(exc).replace("draft_vocab_size:", "--draft-vocab-sizes:", 1)) from None
    out = Path(args.out or f"{identity.name}.self_skip.json")
    if out.exists():
        try:
            earlier = load_profile(out)
        except SelfSkipConfigError as exc:
            raise OptionError(f"--out: {exc}") from None
        mismatches = earlier.model.mismatches(identity)
        if mismatches:
            raise OptionError(
                f"--out: {str(out)!r} holds a profile for another model ({'; '.join(mismatches)}); "
                "choose another --out"
            )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.parent / f".{out.name}.write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OptionError(f"--out: cannot write to {str(out.parent)!r}: {exc.strerror}") from None
    return TuneSettings(
        model=model, identity=identity, prompts=prompts,
        prompts_label=str(args.prompts) if args.prompts else f"shipped {CALIBRATION_PROMPTS.name}",
        budget=args.budget, out=out, journal=out.with_name(out.name + ".optuna-journal"),
        max_tokens=args.max_tokens, draft_lengths=_int_list("--draft-lengths", args.draft_lengths, 1),
        draft_vocab_sizes=draft_vocab_sizes,
        schedule_batch_sizes=tuple(sorted({1, *_int_list("--schedule-batch-sizes", args.schedule_batch_sizes, 1)})),
        eager=args.eager, dtype=args.dtype or default_dtype(), seed=args.seed,
    )


class DraftTuner:
    """One live self_skip engine whose draft is switched per trial and timed."""

    def __init__(self, settings: TuneSettings, log=print):
        from vllm import SamplingParams

        from vllm_selfspec.glue.tuning_worker import DRAFT_SWITCHING_ENGINE
        from vllm_selfspec.tools.engine_runs import chat_prompts, make_llm

        self.settings = settings
        self.log = log
        self.llm = make_llm(
            settings.model,
            {"method": "self_skip", "num_speculative_tokens": max(settings.draft_lengths),
             "skip_attn": [], "skip_mlp": [], "draft_vocab_size": 0, "adaptive_exit": False},
            dtype=settings.dtype, enforce_eager=settings.eager,
            max_num_seqs=max(settings.schedule_batch_sizes),
            **DRAFT_SWITCHING_ENGINE,
        )
        self.prompts = chat_prompts(self.llm, settings.prompts)
        self.params = SamplingParams(temperature=0.0, max_tokens=settings.max_tokens, ignore_eos=True)
        self.ranking: list[int] = []

    def draft_settings(self, candidate: DraftCandidate, num_speculative_tokens: int | None = None) -> DraftSettings:
        """``candidate`` as the draft's settings (K capped at ``num_speculative_tokens`` when given)."""
        return DraftSettings(
            skip_attn=candidate.skip_set.attn,
            skip_mlp=candidate.skip_set.mlp,
            num_speculative_tokens=candidate.num_speculative_tokens if num_speculative_tokens is None
            else num_speculative_tokens,
            draft_vocab=tuple(draft_vocab(candidate.draft_vocab_size, self.settings.identity.vocab_size, self.ranking)),
            adaptive_exit=candidate.adaptive_exit,
        )

    def configure(self, candidate: DraftCandidate | None, max_draft_tokens: int | None = None) -> None:
        """Install ``candidate`` in every worker (``None``: draft nothing, K capped at 0)."""
        settings = (DraftSettings(skip_attn=(), skip_mlp=(), num_speculative_tokens=0) if candidate is None
                    else self.draft_settings(candidate, max_draft_tokens))
        configure_draft(self.llm, settings)

    def measure_without_drafts(self) -> float:
        """Tokens/s with drafting off (K = 0); also ranks tokens by frequency for the draft head.

        The ranking counts the prompts and :data:`RANKING_SAMPLES` sampled continuations
        of each (temperature 1, so the model's own distribution, not only its greedy path).
        """
        from vllm import SamplingParams

        from vllm_selfspec.tools.engine_runs import combined_tokens_per_s, timed_generate, timed_workload

        self.configure(None)
        timed_generate(self.llm, self.prompts[:1], self.params)
        runs = timed_workload(self.llm, self.prompts, self.params, 1)
        sampled = self.llm.generate(
            self.prompts, SamplingParams(n=RANKING_SAMPLES, temperature=1.0, max_tokens=RANKING_TOKENS),
            use_tqdm=False,
        )
        prompt_ids = [self.llm.get_tokenizer().encode(p) for p in self.prompts]
        self.ranking = rank_by_frequency(
            [list(c.token_ids) for out in sampled for c in out.outputs] + prompt_ids
        )
        return combined_tokens_per_s(runs)

    def run_trial(self, candidate: DraftCandidate, report=None) -> dict:
        """Decode every calibration prompt alone with ``candidate``; tokens/s and acceptance.

        ``report(step, tokens_per_s_so_far)`` is called after each prompt and may raise
        to stop the trial early (Optuna's pruning).
        """
        from vllm_selfspec.tools.engine_runs import SpecDecodeCounts, timed_generate

        self.configure(candidate)
        timed_generate(self.llm, self.prompts[:1], self.params)  # warm-up (the switch compiled the draft)
        before = SpecDecodeCounts.read(self.llm)
        tokens, seconds = 0, 0.0
        for step, prompt in enumerate(self.prompts):
            run = timed_generate(self.llm, [prompt], self.params)
            tokens += run.output_tokens
            seconds += run.seconds
            if report is not None:
                report(step, tokens / seconds)
        counts = SpecDecodeCounts.read(self.llm).minus(before)
        return {
            "tokens_per_s": tokens / seconds,
            "acceptance_rate": counts.acceptance_rate,
            "mean_acceptance_length": counts.mean_acceptance_length,
        }

    def measure_schedule(self, candidate: DraftCandidate) -> dict[int, dict[int, float]]:
        """Tokens/s per batch size for K = 0, 1, 2 and the candidate's K.

        The K values alternate over :data:`SCHEDULE_ROUNDS` rounds, so a slow spell of
        the machine does not land on one of them; batch 1 decodes every calibration
        prompt alone in each round, larger sizes one batch.
        """
        from vllm_selfspec.tools.engine_runs import combined_tokens_per_s, timed_generate, timed_workload

        speeds: dict[int, dict[int, float]] = {}
        draft_lengths = sorted(k for k in {0, 1, 2, candidate.num_speculative_tokens}
                               if k <= candidate.num_speculative_tokens)
        for batch_size in self.settings.schedule_batch_sizes:
            runs_by_k: dict[int, list] = {k: [] for k in draft_lengths}
            for _ in range(SCHEDULE_ROUNDS):
                for k in draft_lengths:
                    self.configure(candidate, max_draft_tokens=k)
                    timed_generate(self.llm, self.prompts[:min(batch_size, 2)], self.params)  # warm-up
                    runs_by_k[k] += timed_workload(self.llm, self.prompts, self.params, batch_size)
            speeds[batch_size] = {k: combined_tokens_per_s(runs) for k, runs in runs_by_k.items()}
            self.log(f"  batch {batch_size:>3}: " + ", ".join(
                f"K={k} {v:.1f} tok/s" for k, v in speeds[batch_size].items()))
        return speeds

    def close(self) -> None:
        """Shut the engine down."""
        from vllm_selfspec.tools.engine_runs import release

        release(self.llm)


def _known_good_skip_sets(settings: TuneSettings) -> list:
    shipped = find_shipped_profile(settings.identity)
    earlier = load_profile(settings.out) if settings.out.exists() else None
    return [p.skip_set() for p in (shipped[1] if shipped else None, earlier) if p is not None]


def run_tune(args: argparse.Namespace, log=print) -> int:
    """The whole ``tune`` command; returns the exit code."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from tqdm import tqdm

    settings = validate(args)
    space = SearchSpace(settings.identity.num_layers, settings.draft_lengths, settings.draft_vocab_sizes)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=f"self_skip-{settings.identity.name}",
        storage=JournalStorage(JournalFileBackend(str(settings.journal))),
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=8),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1),
        load_if_exists=True,
    )
    finished = [t for t in study.trials if t.state.is_finished()]
    if not finished:
        for candidate in space.starting_points(_known_good_skip_sets(settings)):
            study.enqueue_trial(space.params(candidate))
    remaining = settings.budget - len(finished)
    log(f"tune {settings.identity.name}: {len(finished)} trials done earlier, {max(remaining, 0)} to run; "
        f"journal {settings.journal}")

    started = time.time()
    tuner: DraftTuner | None = None
    interrupted = False
    try:
        tuner = DraftTuner(settings, log)
        baseline = tuner.measure_without_drafts()
        log(f"drafting off (K=0): {baseline:.1f} tok/s; draft-head ranking from {len(tuner.ranking)} tokens")

        def objective(trial):
            candidate = space.suggest(trial)
            if candidate is None:
                raise optuna.TrialPruned("every sublayer skipped")
            trial.set_user_attr("draft", candidate.describe())

            def report(step, tokens_per_s):
                trial.report(tokens_per_s, step)
                if trial.should_prune():
                    raise optuna.TrialPruned()

            result = tuner.run_trial(candidate, report)
            for key, value in result.items():
                trial.set_user_attr(key, value)
            return result["tokens_per_s"]

        with tqdm(total=settings.budget, initial=min(len(finished), settings.budget), desc="tune",
                  unit="trial") as bar:
            def progress(study, trial):
                bar.update(1)
                if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
                    bar.set_postfix_str(f"best {study.best_value:.1f} tok/s (K=0: {baseline:.1f})")

            if remaining > 0:
                study.optimize(objective, n_trials=remaining, callbacks=[progress], catch=())
    except KeyboardInterrupt:
        interrupted = True
        log("\ninterrupted: writing the best profile found so far; run the same command again to resume")

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete or tuner is None or not tuner.ranking:
        if not interrupted:
            tuner.close()
        log("no trial completed in this run; nothing written (the journal keeps any earlier trials)")
        return 130 if interrupted else 1
    best_trial = max(complete, key=lambda t: t.value)
    best = space.suggest(optuna.trial.FixedTrial(best_trial.params))
    schedule, speeds = None, {}
    if not interrupted:
        try:
            log(f"best: {best_trial.value:.1f} tok/s with {best.describe()}; measuring the batch-size schedule")
            speeds = tuner.measure_schedule(best)
            best_k = {size: best_draft_length(by_k, SCHEDULE_MIN_GAIN) for size, by_k in speeds.items()}
            # vLLM carries the last range's K on to larger batch sizes.
            schedule = schedule_from_measurements(best_k, max(best_k))
        except KeyboardInterrupt:
            interrupted = True
            log("\ninterrupted while measuring the schedule: the profile is written without one")
        finally:
            if not interrupted:
                tuner.close()

    profile = SkipProfile(
        model=settings.identity,
        draft=tuner.draft_settings(best).replace(
            num_speculative_tokens_per_batch_size=None if schedule is None else tuple(map(tuple, schedule))),
        draft_vocab_ranking=tuner.ranking[:RANKING_LENGTH] if best.draft_vocab_size else [],
        measured=Measurement(
            acceptance_rate=round(best_trial.user_attrs["acceptance_rate"], 4),
            mean_acceptance_length=round(best_trial.user_attrs["mean_acceptance_length"], 3),
            tokens_per_s=round(best_trial.value, 2),
            baseline_tokens_per_s=round(speeds.get(1, {}).get(0, 0.0), 2),
            machine=f"{platform.machine()}, {_cpu_count()} CPU cores, {settings.dtype}, "
            f"{'eager' if settings.eager else 'compiled'}",
            tokens_per_s_by_batch_size={b: {k: round(v, 2) for k, v in by_k.items()} for b, by_k in speeds.items()},
        ),
        search=SearchSettings(
            method="optuna-tpe",
            budget=settings.budget,
            trials_done=len([t for t in study.trials if t.state.is_finished()]),
            calibration_prompts=settings.prompts_label,
            max_tokens=settings.max_tokens,
            seed=settings.seed,
            objective="greedy batch-1 output tokens/s of self_skip through the vLLM engine",
            search_space=space.describe(),
            enforce_eager=settings.eager,
            study=settings.journal.name,
        ),
        notes="interrupted: schedule not measured" if interrupted else "",
    )
    save_profile(profile, settings.out)
    log(f"wrote {settings.out} after {(time.time() - started) / 60:.1f} min: {best.describe()}; "
        f"schedule {schedule}")
    log(json.dumps({"tokens_per_s": best_trial.value, "acceptance_rate": best_trial.user_attrs["acceptance_rate"]}))
    return 130 if interrupted else 0


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
