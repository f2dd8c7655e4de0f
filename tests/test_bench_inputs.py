"""`vllm-selfspec bench` refuses bad input before starting any engine, naming the option."""

import argparse

import pytest

from vllm_selfspec.tools.bench.command import BenchInputError, add_arguments, validate


def _args(tmp_path, *argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--model", "unused", "--out", str(tmp_path / "report"), *argv])


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--methods", "plain,medusa"], "--methods: unknown method 'medusa'; choose from plain, self_skip, ngram, draft_model"),
        (["--batch-sizes", "1,0,8"], "--batch-sizes: a batch size must be at least 1, got 0"),
        (["--batch-sizes", "one"], "--batch-sizes: 'one' is not an integer"),
        (["--prompt-sets", "chat,mmlu"], "--prompt-sets: prompts: unknown prompt set 'mmlu'"),
        (["--prompt-sets", "/no/such/prompts.jsonl"], "--prompt-sets: prompts: file '/no/such/prompts.jsonl' does not exist"),
        (["--sampling", "beam"], "--sampling: choose from greedy, random"),
        (["--max-tokens", "-3"], "--max-tokens: must be at least 1"),
        (["--max-tokens", "0"], "--max-tokens: must be at least 1, got 0"),
        (["--num-speculative-tokens", "0"], "--num-speculative-tokens: must be at least 1"),
        (["--skip-profile", "/no/such/profile.json"], "--skip-profile: file '/no/such/profile.json' does not exist"),
    ],
)
def test_bad_options(tmp_path, argv, words):
    with pytest.raises(BenchInputError) as caught:
        validate(_args(tmp_path, *argv))
    assert words in str(caught.value)


def test_output_folder_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = _args(tmp_path)
    args.out = str(blocker / "report")
    with pytest.raises(BenchInputError, match=r"--out: cannot write to '.*a-file/report'"):
        validate(args)


def test_quick_and_full_defaults(tmp_path):
    quick = validate(_args(tmp_path, "--quick"))
    assert (list(quick.prompt_sets), quick.batch_sizes, quick.eager) == (["chat"], [1, 4], True)
    full = validate(_args(tmp_path, "--prompt-sets", "chat,summarization"))
    assert full.batch_sizes == [1, 8, 32] and full.sampling == ["greedy", "random"] and not full.eager
    assert (tmp_path / "report").is_dir()


def _controller_args(*argv):
    from vllm_selfspec.tools.bench import controller

    parser = argparse.ArgumentParser()
    controller.add_arguments(parser)
    return controller.validate(parser.parse_args(["--out", "unused", *argv]))


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--batch-sizes", "1,x"], "--batch-sizes: expected comma-separated integers"),
        (["--batch-sizes", "0"], "--batch-sizes: every value must be at least 1"),
        (["--fixed-k", "1,5"], "--fixed-k: values cannot exceed --num-speculative-tokens (4)"),
        (["--num-speculative-tokens", "0"], "--num-speculative-tokens: must be at least 1"),
        (["--rounds", "0"], "--rounds: must be at least 1"),
        (["--target-delay-ms", "-1"], "--target-delay-ms: must not be negative"),
        (["--skip-attn", "3,-1"], "--skip-attn: every value must be at least 0"),
    ],
)
def test_bench_controller_bad_options(argv, words):
    with pytest.raises(BenchInputError) as caught:
        _controller_args(*argv)
    assert words in str(caught.value)


def test_bench_controller_good_options():
    assert _controller_args("--fixed-k", "", "--skip-attn", "3,5") == ([1, 8, 32], [], [3, 5], None)
