"""Mutation testing: run chosen tests against deliberately broken copies of the plugin.

``python -m integration_tests.mutants`` (``make mutants``) applies each mutant to a
temporary copy of the repository, runs its catching tests there with the copy first on
``PYTHONPATH`` (so the plugin that vLLM's engine processes load through the entry point
is the copy's), and prints which test caught it. Exits non-zero if any mutant survives,
and at once if a catching test it names is no longer collected.
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
DRAFT_TOKENS_DOC_END = '        exit, each request\'s top-1 draft probability."""\n'
"""The end of ``SelfSkipProposer._draft_tokens``'s docstring: every path that makes draft probabilities follows."""

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
    "draft-probs-temperature-1": (
        PROPOSER,
        DRAFT_TOKENS_DOC_END,
        DRAFT_TOKENS_DOC_END
        + "        if sampling_metadata.temperature is not None:\n"
        "            sampling_metadata = dataclasses.replace(\n"
        "                sampling_metadata, temperature=torch.ones_like(sampling_metadata.temperature))\n",
    ),
    "draft-top-p-ignored": (
        PROPOSER,
        DRAFT_TOKENS_DOC_END,
        DRAFT_TOKENS_DOC_END + "        sampling_metadata = dataclasses.replace(sampling_metadata, top_p=None)\n",
    ),
    "draft-loop-syncs": (
        PROPOSER,
        "                self._still_confident.put(step, confident.any())\n",
        "                self._still_confident.put(step, confident.any())\n"
        "                if not bool(confident.any()):\n"
        "                    break\n",
    ),
    "drafts-shifted": (
        PROPOSER,
        "        drafts = torch.stack(draft_ids, dim=1)\n",
        "        drafts = torch.roll(torch.stack(draft_ids, dim=1), 1, dims=1)\n",
    ),
}

# name: the tests that should catch it, run in this order under -x.
CATCHING_TESTS = {
    "skip-set-ignored": [
        "tests/test_draft_model_skips.py",
        "integration_tests/test_lossless.py::test_float32_aggressive_skip_set_identical",
    ],
    "kv-one-slot-early": ["integration_tests/test_lossless.py::test_float32_aggressive_skip_set_identical"],
    "draft-probs-temperature-1": ["integration_tests/test_sampling.py::test_draft_probabilities_follow_the_request"],
    "draft-top-p-ignored": ["integration_tests/test_sampling.py::test_draft_probabilities_follow_the_request"],
    "draft-loop-syncs": [
        "integration_tests/test_sampling.py::test_draft_loop_never_reads_the_device[cheap-head-adaptive-exit-fixed-k]",
    ],
    "drafts-shifted": [
        "integration_tests/test_lossless.py::test_float32_greedy_identical[4]",
        "integration_tests/test_sampling.py::test_sampled_tokens_follow_the_target_distribution"
        "[probabilistic-cheap-head-adaptive-exit-controller-eager]",
    ],
}

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=MUTANTS, help="run this mutant only")
    parser.add_argument("--list", action="store_true", help="list the mutants and their catching tests")
    parser.add_argument("--tests", nargs="+", help="run these tests instead of the table's")
    parser.add_argument("--baseline", action="store_true",
                        help="first run the tests without a mutant; they must pass")
    args = parser.parse_args(argv)
    check_mutants_apply()
    check_catching_tests_exist()
    names = [args.only] if args.only else list(MUTANTS)
    if args.list:
        for name in names:
            print(f"{name:26} {MUTANTS[name][0]:34} {' '.join(CATCHING_TESTS[name])}")
        return 0

    started = time.monotonic()
    runs = [(name, args.tests or CATCHING_TESTS[name]) for name in names]
    if args.baseline:
        runs.insert(0, (None, args.tests or sorted({test for name in names for test in CATCHING_TESTS[name]})))
    rows, survived, baseline_failed = [], 0, False
    for index, (mutant, tests) in enumerate(runs):
        with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
            copy = make_copy(Path(tmp) / "repo", mutant)
            if index == 0:
                check_imports_resolve_to(copy)
            run_started = time.monotonic()
            status, node, output = run_pytest(copy, tests)
            seconds = time.monotonic() - run_started
        label = mutant or "(baseline: no mutant)"
        print(f"{label}: tests {'failed' if status else 'passed'} in {seconds:.1f} s", flush=True)
        if mutant is None and status:
            baseline_failed = True
            print(f"--- the baseline failed; pytest output (tail):\n{tail(output)}\n", flush=True)
        reason = next((line for line in output.splitlines() if line.startswith("E ")), "")
        if mutant is not None and status and "Timeout" in reason:
            status = 0  # a timeout is no evidence that the test saw the fault
        if mutant is not None and not status:
            survived += 1
            print(f"--- {mutant} survived; pytest output (tail):\n{tail(output)}\n", flush=True)
        elif mutant is not None:
            print(f"    {reason[:300]}", flush=True)
        caught = "-" if mutant is None else "yes" if status else "no"
        rows.append((label, caught, f"{seconds:.1f}", node or "-"))

    print(f"\n{'mutant':26} {'caught':6} {'seconds':>8}  caught by (first failing test)")
    for label, caught, seconds, node in rows:
        print(f"{label:26} {caught:6} {seconds:>8}  {node}")
    print(f"\n{len(names) - survived} of {len(names)} mutants caught, {survived} survived"
          f"{'; the baseline FAILED' if baseline_failed else ''}; total {time.monotonic() - started:.1f} s")
    return 1 if survived or baseline_failed else 0


if __name__ == "__main__":
    sys.exit(main())
