"""`vllm-selfspec bench` refuses bad input before starting any engine, naming the option."""

import argparse

import pytest

from vllm_selfspec.tools.bench.command import add_arguments, validate
from vllm_selfspec.tools.options import OptionError


def _args(tmp_path, *argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--model", "unused", "--out", str(tmp_path / "report"), *argv])


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--methods", "plain,medusa"], "--methods: unknown method 'medusa'; choose from plain, self_skip, ngram, draft_model"),
        (["--batch-sizes", "1,0,8"], "--batch-sizes: every value must be at least 1, got 0"),
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
    with pytest.raises(OptionError) as caught:
        validate(_args(tmp_path, *argv))
    assert words in str(caught.value)


def test_output_folder_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = _args(tmp_path)
    args.out = str(blocker / "report")
    with pytest.raises(OptionError, match=r"--out: cannot write to '.*a-file/report'"):
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
        (["--batch-sizes", "1,x"], "--batch-sizes: 'x' is not an integer"),
        (["--batch-sizes", "0"], "--batch-sizes: every value must be at least 1, got 0"),
        (["--fixed-k", "1,5"], "--fixed-k: values cannot exceed --num-speculative-tokens (4)"),
        (["--num-speculative-tokens", "0"], "--num-speculative-tokens: must be at least 1"),
        (["--rounds", "0"], "--rounds: must be at least 1"),
        (["--target-delay-ms", "-1"], "--target-delay-ms: must not be negative"),
        (["--skip-attn", "3,-1"], "--skip-attn: every value must be at least 0, got -1"),
    ],
)
def test_bench_controller_bad_options(argv, words):
    with pytest.raises(OptionError) as caught:
        _controller_args(*argv)
    assert words in str(caught.value)


def test_bench_controller_good_options():
    assert _controller_args("--fixed-k", "", "--skip-attn", "3,5") == ([1, 8, 32], [], [3, 5], None)


def test_bench_controller_report_and_plot(tmp_path):
    """The report's ratios, best fixed K and per-round K shares, and the K-over-time plot,
    from synthetic results."""
    from vllm_selfspec.tools.bench import controller

    results = {
        "model": "m", "target_delay_ms": 80.0, "draft": "K=4, skip_attn=[7]", "rounds": 2, "max_tokens": 64,
        "num_prompts_batch_1": 4, "warmup_steps_per_k": 16, "warmup_passes": [[1], [2]], "eager": False,
        "dtype": "float32", "controller_summaries": ["batch 1: K=3", "batch 1: K=2"],
        "speeds": {"plain": {1: [10.0, 10.0]}, "controller": {1: [13.0, 13.4]}, "K=0": {1: [9.5, 9.5]},
                   "K=1": {1: [12.0, 12.0]},
                   "K=3": {1: [14.0, 14.0]}},
        # [steps before the measured part, [(batch size, K), ...]]
        "draft_length_history": [[4, [(1, 0)] * 4 + [(1, 3)] * 6], [2, [(1, 1), (1, 2), (1, 2), (1, 0)]]],
    }
    report = controller._markdown(results, ["plain", "controller", "K=0", "K=1", "K=3"], [1])
    assert "| controller | 13.2 [13.0-13.4] (1.320x) |" in report
    assert "- batch 1: controller 1.320x plain vLLM, 94.3% of the best fixed K (K=3)" in report
    assert "not drafting (K=0) runs at 0.950x plain vLLM; the controller at 1.389x of it" in report
    # Round 1: 13.0 / 10 and 13.0 / 9.5; round 2: 13.4 / 10 and 13.4 / 9.5.
    assert ("paired by round (geometric mean of the rounds' ratios [lowest-highest]): controller / plain "
            "1.320x [1.300-1.340]; K=0 / plain 0.950x [0.950-0.950]; controller / K=0 1.389x [1.368-1.411]") in report
    assert "- round 1: K chosen in the measured steps: K=3 100%" in report
    assert "- round 2: K chosen in the measured steps: K=0 50%, K=2 50%" in report
    assert "80 ms after every target forward" in report
    controller._plot(results["draft_length_history"], tmp_path / "k.png", 80.0)
    assert (tmp_path / "k.png").read_bytes().startswith(b"\x89PNG")
