"""Mutation testing: run chosen tests against deliberately broken copies of the plugin.

``python -m integration_tests.mutants`` (``make mutants``) first runs every catching test on
an unchanged copy (the baseline, which must pass), then applies each mutant to a temporary
copy of the repository and runs its catching tests there with the copy first on
``PYTHONPATH`` (so the plugin that vLLM's engine processes load through the entry point is
the copy's). A mutant is caught only when a test fails by a failed assertion; an error, a
crash or a timeout does not count. Exits non-zero if the baseline fails or any mutant
survives, and at once if a catching test it names is no longer collected.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"
COPIED = ("vllm_selfspec", "tests", "integration_tests", "pyproject.toml")
PROPOSER = "vllm_selfspec/glue/proposer.py"
CONTROLLER = "vllm_selfspec/core/draft_length_controller.py"
EXACT = "integration_tests/test_exact_sampling.py::test_sampling_is_exact"

# name: (file, old text, new text); each old text must occur exactly once in its file.
MUTANTS = {
    "skip-set-ignored": (
        "vllm_selfspec/glue/draft_model.py",
        "        self._sublayers: list[tuple[nn.Module, nn.Module, bool]] = []\n",
        "        self._sublayers: list[tuple[nn.Module, nn.Module, bool]] = []\n"
        "        skip_set = SkipSet(skip_set.num_layers)\n",
    ),
    "kv-one-slot-early": (
        PROPOSER,
        "        positions = target_positions[token_indices_to_sample]\n",
        "        positions = target_positions[token_indices_to_sample] - 1\n",
    ),
    # An exactness bug: drafts sampled at the request's temperature, while the probabilities
    # reported to the rejection sampler are those at 1.25 times it.
    "draft-probs-misreported": (
        PROPOSER,
        "    return torch.where(is_greedy, probs.argmax(dim=-1), tokens), probs\n",
        "    reported = (logits / 1.25).softmax(dim=-1, dtype=torch.float32)\n"
        "    return torch.where(is_greedy, probs.argmax(dim=-1), tokens), reported\n",
    ),
    # An exactness bug: every draft step reports the first step's probabilities.
    "draft-probs-stale": (
        PROPOSER,
        "                draft_probs.append(probs)\n",
        "                draft_probs.append(draft_probs[0] if draft_probs else probs)\n",
    ),
    "draft-loop-syncs": (
        PROPOSER,
        "            draft_ids.append(tokens)\n",
        "            draft_ids.append(tokens)\n"
        "            if int(tokens[0]) < 0:\n"
        "                break\n",
    ),
    "scheduler-booking-ignored": (
        PROPOSER,
        "        self.num_speculative_tokens = num_speculative_tokens\n",
        "        num_speculative_tokens = self.settings.num_speculative_tokens\n"
        "        self.num_speculative_tokens = num_speculative_tokens\n",
    ),
    "drafts-shifted": (
        PROPOSER,
        "        drafts = torch.stack(draft_ids, dim=1)\n",
        "        drafts = torch.roll(torch.stack(draft_ids, dim=1), 1, dims=1)\n",
    ),
    "cheap-head-ids-unmapped": (
        PROPOSER,
        "            return self.model.draft_vocab_ids[best], None, top1 if self.exit_rule is not None else None\n",
        "            return best, None, top1 if self.exit_rule is not None else None\n",
    ),
    "async-switch-not-refused": (
        "vllm_selfspec/glue/scheduler.py",
        "        if self.scheduler_config.async_scheduling and settings.adaptive_exit:\n",
        "        if False and self.scheduler_config.async_scheduling and settings.adaptive_exit:\n",
    ),
    "draft-free-steps-rejection-sampled": (
        "vllm_selfspec/glue/draft_free_sampling.py",
        "            spec_decode_metadata = None\n",
        "            pass\n",
    ),
    "adaptive-exit-update-inverted": (
        "vllm_selfspec/core/adaptive_exit.py",
        "        elif self.acceptance_rate < self.target_acceptance:\n",
        "        elif self.acceptance_rate > self.target_acceptance:\n",
    ),
    "controller-no-start-margin": (
        CONTROLLER,
        "START_DRAFTING_MARGIN = 0.10\n",
        "START_DRAFTING_MARGIN = 0.0\n",
    ),
    "controller-no-clear-loss": (
        CONTROLLER,
        "CLEAR_LOSS = 0.75\n",
        "CLEAR_LOSS = 0.0\n",
    ),
    "controller-one-half": (
        CONTROLLER,
        "        for half in (range(0, 2), range(2, 4)):\n",
        "        for half in (range(0, 4),):\n",
    ),
    "tp-plans-not-compared": (
        "vllm_selfspec/core/ranks.py",
        "    if len(set(plans)) <= 1:\n",
        "    if True:\n",
    ),
}

# name: the tests that should catch it, run in this order under -x.
CATCHING_TESTS = {
    "skip-set-ignored": [
        "tests/test_draft_model_skips.py",
        "integration_tests/test_lossless.py::test_float32_aggressive_skip_set_identical",
    ],
    "kv-one-slot-early": ["integration_tests/test_lossless.py::test_float32_aggressive_skip_set_identical"],
    "draft-probs-misreported": [f"{EXACT}[probabilistic-full-head-fixed-k]"],
    "draft-probs-stale": [f"{EXACT}[probabilistic-full-head-fixed-k]"],
    "draft-loop-syncs": [
        "integration_tests/test_sampling.py::test_draft_loop_drafts_as_booked_without_unplanned_reads"
        "[cheap-head-adaptive-exit-fixed-k]",
    ],
    "scheduler-booking-ignored": [
        "integration_tests/test_sampling.py::test_draft_loop_drafts_as_booked_without_unplanned_reads"
        "[full-head-fixed-length-controller]",
    ],
    "drafts-shifted": [
        "integration_tests/test_lossless.py::test_float32_greedy_identical[4]",
        f"{EXACT}[probabilistic-full-head-fixed-k]",
    ],
    "cheap-head-ids-unmapped": [
        "integration_tests/test_lossless.py::test_float32_greedy_identical_with_every_mechanism_on",
    ],
    "async-switch-not-refused": [
        "integration_tests/test_lossless.py::test_float32_greedy_identical_under_async_scheduling",
    ],
    "draft-free-steps-rejection-sampled": ["integration_tests/test_exact_sampling.py::"
                                           "test_sampling_is_exact_under_async_scheduling"],
    "adaptive-exit-update-inverted": ["tests/test_draft_mechanisms.py"],
    "controller-no-start-margin": ["tests/test_draft_length_controller.py"],
    "controller-no-clear-loss": ["tests/test_draft_length_controller.py"],
    "controller-one-half": ["tests/test_draft_length_controller.py"],
    "tp-plans-not-compared": ["tests/test_ranks.py"],
}

ASSERTION_FAILURES = ("AssertionError", "assert ", "Failed: DID NOT RAISE")
"""How pytest's ``E`` lines begin for a failed assertion (or a ``pytest.raises`` that saw nothing).
An error, a crash or a timeout is no evidence that a test saw the fault."""

OUTPUT_TAIL_LINES = 40

CHECK_IMPORTS = '''
import importlib.metadata, multiprocessing, sys

def plugin_file(_):
    (entry,) = [e for e in importlib.metadata.entry_points(group="vllm.general_plugins")
                if e.value == "vllm_selfspec:register"]
    return sys.modules[entry.load().__module__].__file__

if __name__ == "__main__":
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        print(plugin_file(0), pool.map(plugin_file, [0])[0])
'''
"""Prints the file the plugin entry point loads from, here and in a spawned child process."""


def check_mutants_apply() -> None:
    """Fail unless every mutant's old text occurs exactly once in this checkout."""
    problems = []
    for name, (file, old, _) in MUTANTS.items():
        count = (ROOT / file).read_text().count(old)
        if count != 1:
            problems.append(f"mutant {name}: old text found {count} times in {file}, expected once:\n{old}")
    if problems:
        sys.exit("\n".join(problems))


def make_copy(dest: Path, mutant: str | None) -> Path:
    """Copy the package and the tests into ``dest``, with ``mutant`` applied."""
    for item in COPIED:
        source = ROOT / item
        if source.is_dir():
            shutil.copytree(source, dest / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / item)
    if mutant is not None:
        file, old, new = MUTANTS[mutant]
        path = dest / file
        path.write_text(path.read_text().replace(old, new))
    return dest


def copy_env(copy: Path) -> dict[str, str]:
    """The environment with ``copy`` first on ``PYTHONPATH``, ahead of the editable install."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(copy), env.get("PYTHONPATH")]))
    return env


def check_imports_resolve_to(copy: Path) -> None:
    """Exit unless the plugin entry point loads the copy, in a process and in a spawned child."""
    script = copy.parent / "check_imports.py"
    script.write_text(CHECK_IMPORTS)
    result = subprocess.run([PYTHON, script], cwd=copy.parent, env=copy_env(copy),
                            capture_output=True, text=True, check=True)
    expected = str(copy / "vllm_selfspec" / "__init__.py")
    if result.stdout.split() != [expected, expected]:
        sys.exit(f"vllm_selfspec:register loads {result.stdout.split()}, not the copy's {expected}")


def tail(output: str) -> str:
    return "\n".join(output.splitlines()[-OUTPUT_TAIL_LINES:])


def check_catching_tests_exist() -> None:
    """Exit naming every test in ``CATCHING_TESTS`` that pytest no longer collects (renamed or re-parametrized)."""
    tests = sorted({test for names in CATCHING_TESTS.values() for test in names})
    files = sorted({test.split("::")[0] for test in tests})
    result = subprocess.run([PYTHON, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
                            cwd=ROOT, capture_output=True, text=True)
    collected = [line for line in result.stdout.splitlines() if "::" in line]
    missing = [test for test in tests
               if not any(node == test or node.startswith((test + "[", test + "::")) for node in collected)]
    if result.returncode != 0 or missing:
        sys.exit(f"CATCHING_TESTS names tests pytest does not collect: {missing or tail(result.stdout)}")


def run_pytest(copy: Path, tests: list[str]) -> tuple[int, str | None, str]:
    """Run ``tests`` in ``copy``: (exit status, first failing test's node id or None, output)."""
    result = subprocess.run(
        [PYTHON, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", *tests],
        cwd=copy, env=copy_env(copy), capture_output=True, text=True,
    )
    output = result.stdout + result.stderr
    failed = [line.split()[1] for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    if result.returncode not in (0, 1) and not failed:
        sys.exit(f"pytest could not run {tests} (exit status {result.returncode}):\n{tail(output)}")
    return result.returncode, failed[0] if failed else None, output


def failed_assertion(output: str) -> str | None:
    """The first failed assertion in pytest's output (its ``E`` line), or None if no test failed by one."""
    if not any(line.startswith("FAILED ") for line in output.splitlines()):
        return None  # only errors (a fixture, a crash) or nothing failed
    for line in output.splitlines():
        text = line[1:].strip() if line.startswith("E ") else ""
        if text.startswith(ASSERTION_FAILURES):
            return text
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=MUTANTS, action="append", help="run this mutant only (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and their catching tests")
    args = parser.parse_args(argv)
    check_mutants_apply()
    check_catching_tests_exist()
    names = args.only or list(MUTANTS)
    if args.list:
        for name in names:
            print(f"{name:30} {MUTANTS[name][0]:40} {' '.join(CATCHING_TESTS[name])}")
        return 0

    started = time.monotonic()
    # The baseline first: the catching tests must pass on the plugin as it is, or no failure
    # under a mutant says anything about the mutant.
    runs = [(None, sorted({test for name in names for test in CATCHING_TESTS[name]}))]
    runs += [(name, CATCHING_TESTS[name]) for name in names]
    rows, survived = [], 0
    for mutant, tests in runs:
        with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
            copy = make_copy(Path(tmp) / "repo", mutant)
            if mutant is None:
                check_imports_resolve_to(copy)
            run_started = time.monotonic()
            status, node, output = run_pytest(copy, tests)
            seconds = time.monotonic() - run_started
        if mutant is None:
            print(f"(baseline: no mutant): tests {'FAILED' if status else 'passed'} in {seconds:.1f} s", flush=True)
            if status:
                print(f"--- the baseline failed, so no mutant is judged; pytest output (tail):\n{tail(output)}")
                return 1
            continue
        assertion = failed_assertion(output)
        caught = assertion is not None
        print(f"{mutant}: {'caught' if caught else 'SURVIVED'} in {seconds:.1f} s"
              + (f" by {node}: {assertion[:300]}" if caught else ""), flush=True)
        if not caught:
            survived += 1
            print(f"--- {mutant}: no test failed by an assertion; pytest output (tail):\n{tail(output)}\n", flush=True)
        rows.append((mutant, "yes" if caught else "no", f"{seconds:.1f}", node if caught else "-"))

    print(f"\n{'mutant':30} {'caught':6} {'seconds':>8}  caught by (the test whose assertion failed)")
    for label, caught, seconds, node in rows:
        print(f"{label:30} {caught:6} {seconds:>8}  {node}")
    print(f"\nbaseline passed; {len(names) - survived} of {len(names)} mutants caught, {survived} survived; "
          f"total {time.monotonic() - started:.1f} s")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
