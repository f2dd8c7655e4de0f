"""`vllm-selfspec tune` end to end on the default model: search, schedule, Ctrl-C, resume.

Tiny budgets and few tokens: this checks the machinery (one live engine switching
drafts, the journal, the profile), not the quality of a search.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from integration_tests.server import ENGINE_STARTED, INFO_LOGS
from vllm_selfspec.core.profile import load_profile

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def _tune(default_model, tmp_path, *argv, info_logs=False, **popen):
    """Start ``vllm-selfspec tune``; ``info_logs``: vLLM logs at INFO, so ENGINE_STARTED shows an engine."""
    prompts = tmp_path / "calibration.txt"
    prompts.write_text("Name three colours.\nWhat is two plus two?\n")
    command = [sys.executable, "-m", "vllm_selfspec.tools.cli", "tune", default_model, "--prompts", str(prompts),
               "--out", str(tmp_path / "profile.json"), "--eager", "--max-tokens", "8", "--draft-lengths", "2,3",
               "--draft-vocab-sizes", "0,4096", "--schedule-batch-sizes", "1,2", *argv]
    popen.setdefault("stdout", subprocess.PIPE)
    if info_logs:
        popen["env"] = {**os.environ, **INFO_LOGS}
    return subprocess.Popen(command, stderr=subprocess.STDOUT, text=True, **popen)


def test_tune_writes_profile_and_resumes(default_model, tmp_path):
    first = _tune(default_model, tmp_path, "--budget", "2", info_logs=True)
    output = first.communicate(timeout=900)[0]
    assert first.returncode == 0, output[-3000:]
    assert "0 trials done earlier, 2 to run" in output
    assert ENGINE_STARTED in output  # the refusal test's guard sees an engine that did start
    profile = load_profile(tmp_path / "profile.json")
    assert profile.model.name == "SmolLM2-135M-Instruct" and profile.model.num_layers == 30
    assert profile.search.method == "optuna-tpe" and profile.search.trials_done == 2
    assert profile.draft.num_speculative_tokens in (2, 3) and len(profile.draft.draft_vocab) in (0, 4096)
    assert profile.measured.tokens_per_s > 0 and 0 < profile.measured.acceptance_rate <= 1
    assert set(profile.measured.tokens_per_s_by_batch_size) == {1, 2}
    assert profile.draft.num_speculative_tokens_per_batch_size[0][0] == 1
    assert (tmp_path / "profile.json.optuna-journal").is_file()

    second = _tune(default_model, tmp_path, "--budget", "3", "--schedule-batch-sizes", "1")
    output = second.communicate(timeout=900)[0]
    assert second.returncode == 0, output[-3000:]
    assert "2 trials done earlier, 1 to run" in output
    assert load_profile(tmp_path / "profile.json").search.trials_done == 3


def _completed_trials(journal):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="self_skip-SmolLM2-135M-Instruct",
                              storage=JournalStorage(JournalFileBackend(str(journal))))
    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def _profile_of_trial(trial, num_layers: int = 30) -> dict:
    """The profile settings a trial stands for, read straight from its Optuna parameters."""
    params = trial.params
    return {
        "skip_attn": [i for i in range(num_layers) if params[f"skip_attn_{i}"]],
        "skip_mlp": [i for i in range(num_layers) if params[f"skip_mlp_{i}"]],
        "num_speculative_tokens": params["num_speculative_tokens"],
        "draft_vocab_size": params["draft_vocab_size"],
        "adaptive_exit": params["adaptive_exit"],
        "tokens_per_s": round(trial.value, 2),
        "acceptance_rate": round(trial.user_attrs["acceptance_rate"], 4),
        "mean_acceptance_length": round(trial.user_attrs["mean_acceptance_length"], 3),
    }


def _settings_of_profile(profile) -> dict:
    return {
        "skip_attn": list(profile.draft.skip_attn), "skip_mlp": list(profile.draft.skip_mlp),
        "num_speculative_tokens": profile.draft.num_speculative_tokens,
        "draft_vocab_size": len(profile.draft.draft_vocab),
        "adaptive_exit": profile.draft.adaptive_exit, "tokens_per_s": profile.measured.tokens_per_s,
        "acceptance_rate": profile.measured.acceptance_rate,
        "mean_acceptance_length": profile.measured.mean_acceptance_length,
    }


@pytest.mark.extended
def test_ctrl_c_keeps_the_best_profile(default_model, tmp_path):
    log = (tmp_path / "tune.log").open("w")
    run = _tune(default_model, tmp_path, "--budget", "200", "--max-tokens", "24", stdout=log)
    journal = tmp_path / "profile.json.optuna-journal"
    deadline = time.time() + 900  # engine start and the draft-head ranking come first
    completed = []
    # Wait for three finished trials, so that "the best" is a choice among several.
    while len(completed) < 3 and time.time() < deadline and run.poll() is None:
        time.sleep(2)
        if journal.exists():
            completed = _completed_trials(journal)
    assert len(completed) >= 3 and run.poll() is None, (tmp_path / "tune.log").read_text()[-3000:]
    run.send_signal(signal.SIGINT)
    run.wait(timeout=300)
    output = (tmp_path / "tune.log").read_text()
    assert run.returncode == 130, output[-3000:]
    assert "interrupted: writing the best profile found so far" in output
    profile = load_profile(tmp_path / "profile.json")
    assert profile.notes == "interrupted: schedule not measured" and 3 <= profile.search.trials_done < 200
    # The profile written is the best completed trial of the journal, setting for setting.
    trials = _completed_trials(journal)
    best = max(trials, key=lambda t: t.value)
    assert _settings_of_profile(profile) == _profile_of_trial(best), [t.value for t in trials]
    assert bool(profile.draft_vocab_ranking) == bool(profile.draft.draft_vocab)


def test_bad_budget_is_refused_before_any_engine(default_model, tmp_path):
    # INFO, so that an engine that did start would leave ENGINE_STARTED in the output.
    run = _tune(default_model, tmp_path, "--budget", "0", info_logs=True)
    output = run.communicate(timeout=120)[0]
    assert run.returncode == 2
    assert "vllm-selfspec tune: error: --budget: must be at least 1 trial, got 0" in output
    assert ENGINE_STARTED not in output
    assert not (tmp_path / "profile.json").exists()
