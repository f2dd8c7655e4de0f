"""Independent rounds of ``test_sampling.py``'s goodness-of-fit test, for plain vLLM and for self_skip.

``python -m integration_tests.sampling_rounds --rounds 24`` runs the test's sampling and
scoring ``--rounds`` times per configuration, each round from its own seed (the workers'
random stream restarted: rounds are independent draws), and prints each round's score Z
with the mean and standard deviation per configuration. Under a correct sampler every
round's Z is N(0, 1): plain vLLM's rounds establish that the test's null holds (sd about 1),
and the mean over R rounds has standard error 1/sqrt(R). ``--ledger`` also keeps
:mod:`integration_tests.rejection_ledger` in the self_skip engines' workers over all rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # reseed() goes to the workers

import numpy as np  # noqa: E402

from integration_tests import rejection_ledger  # noqa: E402
from integration_tests import test_sampling as gof  # noqa: E402
from vllm_selfspec.tools.bench.target_delay import TARGET_DELAY_EXTENSION  # noqa: E402
from vllm_selfspec.tools.engine_runs import chat_prompts, make_llm, release  # noqa: E402
from vllm_selfspec.tools.model_prep import prepare_default_model  # noqa: E402

CONFIGS = {
    "plain": None,
    "greedy-full-head-fixed-length": ("greedy", gof.HEADS[0]),
    "probabilistic-cheap-head-adaptive-exit-controller": ("probabilistic", gof.HEADS[2]),
}


def run_rounds(name: str, rounds: int, plain, prompts: list[str], model: str, ledger: bool) -> list[dict]:
    setup = CONFIGS[name]
    llm = plain
    if setup is not None:
        llm = make_llm(model, gof._self_skip_spec(setup[0]), dtype="float32", enforce_eager=True,
                       worker_extension_cls=TARGET_DELAY_EXTENSION)
    results = []
    try:
        if setup is not None:
            gof._configure(llm, setup[1])
            if ledger:
                llm.collective_rpc(rejection_ledger.install)
        for seed in range(1, rounds + 1):
            started = time.perf_counter()
            prompt_ids, samples, spec = gof.sample(llm, prompts, seed)
            sampled = time.perf_counter()
            logprobs, ranks = gof.score(plain, prompt_ids, samples)
            probs = gof.request_distribution(logprobs, gof.TEMPERATURE, gof.TOP_P)
            verdict = gof.decide(probs, ranks, np.random.default_rng(seed).random(ranks.shape))
            results.append({"seed": seed, "z": float(verdict["z"]), "chi_square": float(verdict["chi_square"]),
                            "impossible": int(verdict["impossible"]), "acceptance": spec.acceptance_rate})
            print(f"{name} round {seed}: Z {verdict['z']:+.2f}, PIT chi-square {verdict['chi_square']:.1f}, "
                  f"acceptance {spec.acceptance_rate:.2f} (sampled in {sampled - started:.0f} s, "
                  f"scored in {time.perf_counter() - sampled:.0f} s)", flush=True)
        if setup is not None and ledger:
            results.append({"ledger": rejection_ledger.summary(llm.collective_rpc(rejection_ledger.report)[0])})
            print(f"{name} rejection-sampler ledger: {results[-1]['ledger']}", flush=True)
    finally:
        if llm is not plain:
            release(llm)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--config", action="append", choices=CONFIGS, help="default: all")
    parser.add_argument("--json", help="write every round's results here")
    parser.add_argument("--ledger", action="store_true", help="keep a ledger of the rejection sampler")
    args = parser.parse_args(argv)
    model = str(prepare_default_model())
    plain = make_llm(model, None, **gof.PLAIN_ENGINE)
    try:
        prompts = chat_prompts(plain, gof.QUESTIONS)
        results = {name: run_rounds(name, args.rounds, plain, prompts, model, args.ledger)
                   for name in args.config or CONFIGS}
    finally:
        release(plain)
    print(f"\n{'configuration':50} {'rounds':>6} {'mean Z':>7} {'sd Z':>6} {'SE':>5} {'negative':>8}")
    for name, rounds in results.items():
        z = np.array([r["z"] for r in rounds if "z" in r])
        print(f"{name:50} {len(z):6d} {z.mean():+7.2f} {z.std(ddof=1):6.2f} {1 / np.sqrt(len(z)):5.2f} "
              f"{int((z < 0).sum()):5d}/{len(z)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
