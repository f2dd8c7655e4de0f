"""The bench report: derived figures, speed-model predictions, flags, markdown, JSON and PNG plots."""

from __future__ import annotations

import json
from dataclasses import asdict
import textwrap
from pathlib import Path

from vllm_selfspec.core.speed_model import (
    DRAFT_AND_VERIFY_RESULTS,
    MeasuredStepTimes,
    inputs_from_measurements,
    kept_compute_share,
    project,
    speculative_decode_steps,
)

SLOWDOWN_FLAG = 0.98
"""self_skip below this multiple of plain vLLM is flagged."""
TOLERANCE = 0.10
"""Speed-model error and draft-cost excess above this share are flagged."""


def _decode_step_times(row) -> MeasuredStepTimes:
    t = row.timers
    steps = max(t["decode_steps"], 1)
    return MeasuredStepTimes(t["decode_s"] / steps, t["decode_forward_s"] / steps, t["decode_draft_s"] / steps)


def _ideal_draft_share(method: str, engine: dict) -> float | None:
    shape = engine["shape"]
    spec = engine["speculative_config"] or {}
    layers = shape["num_layers"] * (shape["attn_params"] + shape["mlp_params"])
    whole = layers + shape["lm_head_params"]
    if method == "draft_model":
        return 1.0
    if method != "self_skip":
        return None
    attn, mlp = shape["attn_params"] / whole, shape["mlp_params"] / whole
    kept = kept_compute_share(shape["num_layers"], spec["skip_attn"], spec["skip_mlp"], attn, mlp)
    # A cheap draft head scores draft_vocab_size rows of the LM head instead of all of them.
    draft_head_rows = spec.get("draft_vocab_size", 0)
    if draft_head_rows:
        kept -= (shape["lm_head_params"] - draft_head_rows * shape["hidden_size"]) / whole
    return kept


def build_results(rows, engines: dict, settings, machine: dict, seconds: float) -> dict:
    """Every row with its derived figures, compared with plain vLLM on the same workload."""
    plain = {(r.prompt_set, r.sampling, r.batch_size): r for r in rows if r.method == "plain"}
    entries = []
    for row in rows:
        base = plain.get((row.prompt_set, row.sampling, row.batch_size))
        k = (engines[row.method]["speculative_config"] or {}).get("num_speculative_tokens", 0)
        times = _decode_step_times(row)
        entry = {
            "method": row.method, "prompt_set": row.prompt_set, "sampling": row.sampling,
            "batch_size": row.batch_size, "requests": row.requests, "output_tokens": row.output_tokens,
            "seconds": row.seconds, "tokens_per_s": row.tokens_per_s, "ms_per_output_token": row.ms_per_output_token,
            "prefill_steps": row.timers["prefill_steps"], "decode_steps": row.timers["decode_steps"],
            "prefill_s": row.timers["prefill_s"], "decode_s": row.timers["decode_s"],
            "decode_step_ms": 1000 * times.step_s,
            "target_forward_ms_per_decode_step": 1000 * times.target_forward_s,
            "draft_ms_per_decode_step": 1000 * times.draft_s,
            "peak_worker_rss_mib": row.peak_rss_mib,
            "mean_acceptance_length": row.mean_acceptance_length if row.drafts else None,
            "acceptance_rate": row.accepted_tokens / row.draft_tokens if row.draft_tokens else None,
            "per_position_acceptance": row.per_position_rates,
            "speedup": None, "identical_to_plain": None, "flags": [],
        }
        if base is not None and row.method != "plain":
            entry["speedup"] = row.tokens_per_s / base.tokens_per_s
            if row.sampling == "greedy":
                entry["identical_to_plain"] = sum(a == b for a, b in zip(row.token_ids, base.token_ids))
        if base is not None and k and row.drafts and row.timers["decode_steps"]:
            _add_draft_cost_and_model(entry, row, base, k, _ideal_draft_share(row.method, engines[row.method]),
                                      settings.max_tokens)
        if row.method == "self_skip" and entry["speedup"] is not None:
            _flag_self_skip(entry)
        entries.append(entry)
    return {
        "machine": machine, "settings": settings_as_dict(settings), "engines": engines,
        "run_seconds": seconds, "rows": entries, "projections": projections(),
    }


def _add_draft_cost_and_model(entry: dict, row, base, k: int, ideal: float | None, max_tokens: int) -> None:
    plain_times, spec_times = _decode_step_times(base), _decode_step_times(row)
    draft_step = spec_times.draft_s / k
    entry["draft_cost_ratio"] = draft_step / plain_times.target_forward_s if plain_times.target_forward_s else None
    entry["draft_cost_ideal"] = ideal
    drafting, draft_forward = row.timers["decode_draft_s"], row.timers["decode_draft_forward_s"]
    entry["draft_forward_ratio"] = (draft_forward / max(row.timers["decode_steps"], 1) / k
                                    / plain_times.target_forward_s) if plain_times.target_forward_s else None
    entry["draft_outside_model_share"] = 1 - draft_forward / drafting if drafting else None
    inputs = inputs_from_measurements(row.per_position_rates, plain_times, spec_times)
    # Steps are discrete: each request takes ceil(tokens / E_i) speculative steps, a batch runs
    # until its slowest request is done (plain vLLM's equal-length requests finish together),
    # and batch-size-1 requests run one after another.
    tokens = max_tokens - 1  # the first token comes from the prefill step
    lengths = row.request_acceptance_lengths or [inputs.expected_tokens_per_step] * row.requests
    batched = row.batch_size > 1
    plain_steps = tokens if batched else tokens * row.requests
    decode = inputs.predicted_decode_speedup(plain_steps, speculative_decode_steps(tokens, lengths, batched))
    # End to end: the measured prefill time, plus plain decoding's time shortened by the model.
    predicted_seconds = row.timers["prefill_s"] + base.timers["decode_s"] / decode
    entry["speed_model"] = {
        "draft_cost": inputs.draft_cost, "verify_cost": inputs.verify_cost, "overhead": inputs.overhead,
        "expected_tokens_per_step": inputs.expected_tokens_per_step,
        "slowest_request_tokens_per_step": min(lengths),
        "predicted_decode_speedup": decode, "ceiling_decode_speedup": inputs.ceiling_speedup(),
        "measured_decode_speedup": (row.decode_tokens / row.timers["decode_s"])
        / (base.decode_tokens / base.timers["decode_s"]),
        "predicted_speedup": base.seconds / predicted_seconds,
    }


def _flag_self_skip(entry: dict) -> None:
    if entry["speedup"] < SLOWDOWN_FLAG:
        entry["flags"].append(f"below {SLOWDOWN_FLAG}x plain")
    model = entry.get("speed_model")
    if model:
        error = model["predicted_speedup"] / entry["speedup"] - 1
        entry["speed_model"]["error"] = error
        if abs(error) > TOLERANCE:
            entry["flags"].append(f"speed model off by {error:+.0%}")
    ratio, ideal = entry.get("draft_cost_ratio"), entry.get("draft_cost_ideal")
    if ratio and ideal and abs(ratio / ideal - 1) > TOLERANCE:
        entry["flags"].append(
            f"draft step {ratio / ideal - 1:+.0%} against its ideal: the draft's forward and LM head take "
            f"{entry['draft_forward_ratio']:.2f} of the plain forward (ideal {ideal:.2f}, by parameter share; "
            "a sublayer's share of time differs from its share of parameters, attention reading the KV cache), "
            f"and {entry['draft_outside_model_share']:.0%} of drafting is outside the model (draft sampling, "
            "attention metadata, inputs)"
        )


def projections(num_speculative_tokens: tuple[int, ...] = (4, 8)) -> list[dict]:
    """Projected self_skip speedups for Draft & Verify's published operating points."""
    out = []
    for published in DRAFT_AND_VERIFY_RESULTS:
        for k in num_speculative_tokens:
            for overhead in (0.0, 0.1):
                inputs = project(published, k, overhead=overhead)
                out.append({
                    "model": published.model, "num_speculative_tokens": k, "acceptance": published.acceptance,
                    "draft_cost": inputs.draft_cost, "verify_cost": inputs.verify_cost, "overhead": overhead,
                    "projected_speedup": inputs.predicted_speedup(), "reported_speedup": published.reported_speedup,
                })
    return out


# --- writing -----------------------------------------------------------------------------


def _label(results: dict) -> str:
    m, s = results["machine"], results["settings"]
    return (f"{m['machine']}; vLLM {m['vllm']}, torch {m['torch']}; {Path(s['model']).name}, {s['dtype']}, "
            f"{'eager' if s['eager'] else 'compiled'}, K={s['num_speculative_tokens']}, "
            f"{s['max_tokens']} tokens/request; {m['date']}")


def _fmt(value, pattern: str = "{:.2f}", empty: str = "–") -> str:
    return empty if value is None else pattern.format(value)


def markdown(results: dict) -> str:
    """The report as markdown."""
    rows, s = results["rows"], results["settings"]
    lines = [
        "# vllm-selfspec benchmark", "",
        f"**Measured on:** {_label(results)}. Run time {results['run_seconds'] / 60:.1f} min.", "",
        f"Methods: {', '.join(s['methods'])}. Prompt sets: "
        + ", ".join(f"{n} ({c} prompts, repeated cyclically when a batch is larger)" for n, c in s["prompt_sets"].items())
        + f". Batch size 1 runs {s['single_requests']} requests one after another; larger batch sizes run one batch."
        " Every request generates exactly `max_tokens` tokens (`ignore_eos`). Greedy is temperature 0;"
        " random is temperature 0.8, top-p 0.95. All methods use the same K.", "",
    ]
    engines = results["engines"]
    if "self_skip" in engines:
        spec = engines["self_skip"]["speculative_config"]
        lines += [f"self_skip: skip_attn {spec['skip_attn']}, skip_mlp {spec['skip_mlp']} ({spec['skip_source']}).", ""]
    flagged = [r for r in rows if r["flags"]]
    lines += ["## Flags", ""]
    lines += [f"- **{r['prompt_set']} / {r['sampling']} / batch {r['batch_size']}**: {'; '.join(r['flags'])}"
              for r in flagged] or ["- none"]
    lines += ["", "## Throughput", "",
              "Output tokens per second; in brackets the ratio to plain vLLM on the same workload.", ""]
    methods = s["methods"]
    for prompt_set in s["prompt_sets"]:
        for sampling in s["sampling"]:
            lines += [f"**{prompt_set}, {sampling}**", "",
                      "| batch | " + " | ".join(methods) + " | ms/token (" + " / ".join(methods) + ") |",
                      "|---|" + "---|" * (len(methods) + 1)]
            for batch in s["batch_sizes"]:
                cells, tpot = [], []
                for method in methods:
                    r = _find(rows, method, prompt_set, sampling, batch)
                    if r is None:
                        cells.append("–")
                        tpot.append("–")
                        continue
                    mark = " ⚠" if r["flags"] and any("below" in f for f in r["flags"]) else ""
                    cells.append(f"{r['tokens_per_s']:.1f}" + (f" ({r['speedup']:.2f}×){mark}" if r["speedup"] else ""))
                    tpot.append(f"{r['ms_per_output_token']:.1f}")
                lines.append(f"| {batch} | " + " | ".join(cells) + " | " + " / ".join(tpot) + " |")
            lines.append("")
    lines += ["## Acceptance", "",
              "Mean acceptance length is tokens per request per verification step (1 + accepted drafts);"
              " per position, the share of drafts whose first k tokens were all accepted.", "",
              "| method | prompts | sampling | batch | mean acceptance length | per position | greedy output identical to plain |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["mean_acceptance_length"] is None:
            continue
        identical = "" if r["identical_to_plain"] is None else f"{r['identical_to_plain']}/{r['requests']}"
        lines.append(f"| {r['method']} | {r['prompt_set']} | {r['sampling']} | {r['batch_size']} | "
                     f"{r['mean_acceptance_length']:.2f} | {' '.join(f'{x:.2f}' for x in r['per_position_acceptance'])} "
                     f"| {identical} |")
    lines += ["", "## Draft cost and the speed model", "",
              "All per decode step, as multiples of plain vLLM's decode step at the same batch size (prefill"
              " steps are timed apart). *Draft cost*: one draft step (the proposer's time per step / K) against"
              " plain vLLM's target forward and LM head; its *ideal* is the share of that compute (parameters of"
              " the sublayers run, LM head included) the draft keeps; *draft model* is the draft's own forward and"
              " LM head on the same scale; *outside* is the share of drafting spent outside the model (draft"
              " sampling, attention metadata, inputs). The speed model predicts the decode speedup as"
              " plain steps / speculative steps / (K·draft + verify + overhead): request i needs ceil(tokens / E_i)"
              " speculative steps, a batch runs until its slowest request (E slowest) is done, batch-size-1"
              " requests add up; the end-to-end prediction adds the measured prefill time to plain decoding's time"
              " divided by that, and is compared with the measured end-to-end speedup. With acceptance and costs measured"
              " in the same run, the model reproduces a measurement when it counts steps right; what it adds is the"
              " split of a step into drafting, verification and overhead (and the projections below). ngram is left"
              " out: vLLM's acceptance counters skip the steps where it finds no draft.", "",
              "| method | prompts | sampling | batch | draft cost (ideal) | draft model | outside | verify | overhead | E (E slowest) "
              "| decode: predicted / measured | end to end: predicted | measured | error |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        model = r.get("speed_model")
        if not model or r["method"] == "ngram":
            continue
        lines.append(
            f"| {r['method']} | {r['prompt_set']} | {r['sampling']} | {r['batch_size']} | "
            f"{_fmt(r['draft_cost_ratio'])} ({_fmt(r['draft_cost_ideal'])}) | {_fmt(r['draft_forward_ratio'])} | "
            f"{_fmt(r['draft_outside_model_share'], '{:.0%}')} | "
            f"{model['verify_cost']:.2f} | {model['overhead']:.2f} | {model['expected_tokens_per_step']:.2f}"
            f"{'' if model['slowest_request_tokens_per_step'] is None or r['batch_size'] == 1 else ' (%.2f)' % model['slowest_request_tokens_per_step']} | "
            f"{model['predicted_decode_speedup']:.2f}× / {model['measured_decode_speedup']:.2f}× | "
            f"{model['predicted_speedup']:.2f}× | {r['speedup']:.2f}× | {_fmt(model.get('error'), '{:+.0%}')} |")
    lines += ["", "## Peak memory", "", "Peak resident memory of the worker process (weights, KV cache, activations).", "",
              "| method | peak worker RSS |", "|---|---|"]
    for method in methods:
        peak = max((r["peak_worker_rss_mib"] for r in rows if r["method"] == method), default=None)
        lines.append(f"| {method} | {_fmt(peak, '{:.0f} MiB')} |")
    lines += ["", "## Projections for large models (projections, not measurements)", "",
              "The same speed model fed Draft & Verify's published acceptance and skip sets; draft cost is the"
              " share of weights the draft still reads (decoding is memory-bound on GPUs), verification costs one"
              " decode step, overhead 0 or 0.1 of a step.", "",
              "| model | K | acceptance | draft cost | overhead | projected | reported by the authors |",
              "|---|---|---|---|---|---|---|"]
    for p in results["projections"]:
        lines.append(f"| {p['model']} | {p['num_speculative_tokens']} | {p['acceptance']:.3f} | {p['draft_cost']:.2f} | "
                     f"{p['overhead']:.1f} | {p['projected_speedup']:.2f}× | {p['reported_speedup']:.2f}× |")
    lines += ["", "## Plots", "", "![speedup against batch size](speedup_vs_batch_size.png)", "",
              "![acceptance per position](acceptance_per_position.png)", ""]
    return "\n".join(lines)


def _find(rows, method, prompt_set, sampling, batch):
    return next((r for r in rows if (r["method"], r["prompt_set"], r["sampling"], r["batch_size"])
                 == (method, prompt_set, sampling, batch)), None)


def settings_k(rows: list[dict]) -> int:
    """The longest draft length among the rows."""
    return max((len(r["per_position_acceptance"]) for r in rows), default=0)


def plots(results: dict, out: Path) -> list[Path]:
    """Speedup against batch size per method, and acceptance per position; PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, s = results["rows"], results["settings"]
    sets = list(s["prompt_sets"])
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4), squeeze=False)
    for ax, prompt_set in zip(axes[0], sets):
        for color, method in enumerate(m for m in s["methods"] if m != "plain"):
            for sampling in s["sampling"]:
                points = [(r["batch_size"], r["speedup"]) for r in rows
                          if (r["method"], r["prompt_set"], r["sampling"]) == (method, prompt_set, sampling) and r["speedup"]]
                if points:
                    ax.plot(*zip(*points), marker="o", linestyle="-" if sampling == "greedy" else "--",
                            color=f"C{color}", label=f"{method} ({sampling})")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.axhline(SLOWDOWN_FLAG, color="red", linewidth=0.6, linestyle=":")
        ax.set_xscale("log", base=2)
        ax.set_xticks(s["batch_sizes"], [str(b) for b in s["batch_sizes"]])
        ax.set_xlabel("batch size")
        ax.set_ylabel("speedup over plain vLLM")
        ax.set_title(prompt_set)
        ax.legend(fontsize=7)
    fig.suptitle("Speedup against batch size\n" + textwrap.fill(_label(results), 140), fontsize=8)
    fig.tight_layout()
    speedup_path = out / "speedup_vs_batch_size.png"
    fig.savefig(speedup_path, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    methods = [m for m in s["methods"] if m != "plain"]
    width = 0.8 / max(len(methods), 1)
    for index, method in enumerate(methods):
        greedy = [r for r in rows if r["method"] == method and r["sampling"] == "greedy" and r["per_position_acceptance"]]
        if not greedy:
            continue
        k = len(greedy[0]["per_position_acceptance"])
        mean = [sum(r["per_position_acceptance"][i] for r in greedy) / len(greedy) for i in range(k)]
        ax.bar([i + 1 + (index - (len(methods) - 1) / 2) * width for i in range(k)], mean, width, label=method)
    ax.set_xticks(range(1, settings_k(rows) + 1))
    ax.set_xlabel("draft position k")
    ax.set_ylabel("share of drafts with the first k tokens accepted")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Acceptance per position (greedy, mean over workloads)\n" + textwrap.fill(_label(results), 100),
                 fontsize=8)
    fig.tight_layout()
    acceptance_path = out / "acceptance_per_position.png"
    fig.savefig(acceptance_path, dpi=110)
    plt.close(fig)
    return [speedup_path, acceptance_path]


def write_report(results: dict, out: Path) -> dict[str, Path]:
    """Write results.json, report.md and the plots into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "results.json"
    json_path.write_text(json.dumps(results, indent=1))
    png_paths = plots(results, out)
    markdown_path = out / "report.md"
    markdown_path.write_text(markdown(results))
    return {"json": json_path, "markdown": markdown_path, "plots": png_paths}


def settings_as_dict(settings) -> dict:
    """The settings as plain data for the JSON report (prompt texts left out)."""
    data = asdict(settings)
    data["prompt_sets"] = {name: len(prompts) for name, prompts in settings.prompt_sets.items()}
    data["out"] = str(settings.out)
    return json.loads(json.dumps(data))
