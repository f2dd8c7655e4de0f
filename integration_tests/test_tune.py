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

from vllm_selfspec.core.profile import load_profile

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def _tune(default_model, tmp_path, *argv, **popen):
    prompts = tmp_path / "calibration.txt"
    prompts.write_text("Name three colours.\nWhat is two plus two?\n")
    command = [sys.executable, "-m", "vllm_selfspec.cli", "tune", default_model, "--prompts", str(prompts),
               "--out", str(tmp_path / "profile.json"), "--eager", "--max-tokens", "8", "--draft-lengths", "2,3",
               "--draft-vocab-sizes", "0,4096", "--schedule-batch-sizes", "1,2", *argv]
    popen.setdefault("stdout", subprocess.PIPE)
    return subprocess.Popen(command, stderr=subprocess.STDOUT, text=True, **popen)


def test_tune_writes_profile_and_resumes(default_model, tmp_path):
    first = _tune(default_model, tmp_path, "--budget", "2")
    output = first.communicate(timeout=900)[0]
    assert first.returncode == 0, output[-3000:]
    assert "0 trials done earlier, 2 to run" in output
    profile = load_profile(tmp_path / "profile.json")
    assert profile.model.name == "SmolLM2-135M-Instruct" and profile.model.num_layers == 30
    assert profile.search.method == "optuna-tpe" and profile.search.trials_done == 2
    assert profile.num_speculative_tokens in (2, 3) and profile.draft_vocab_size in (0, 4096)
    assert profile.measured.tokens_per_s > 0 and 0 < profile.measured.acceptance_rate <= 1
    assert set(profile.measured.tokens_per_s_by_batch_size) == {1, 2}
    assert profile.num_speculative_tokens_per_batch_size[0][0] == 1
    assert (tmp_path / "profile.json.optuna-journal").is_file()

    second = _tune(default_model, tmp_path, "--budget", "3")
    output = second.communicate(timeout=900)[0]
    assert second.returncode == 0, output[-3000:]
    assert "2 trials done earlier, 1 to run" in output
    assert load_profile(tmp_path / "profile.json").search.trials_done == 3


def test_ctrl_c_keeps_the_best_profile(default_model, tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    log = (tmp_path / "tune.log").open("w")
    run = _tune(default_model, tmp_path, "--budget", "200", "--max-tokens", "24", stdout=log)
    journal = tmp_path / "profile.json.optuna-journal"
    deadline = time.time() + 600
    completed = False
    while not completed and time.time() < deadline and run.poll() is None:  # wait for one finished trial
        time.sleep(2)
        if journal.exists():
            study = optuna.load_study(study_name="self_skip-SmolLM2-135M-Instruct",
                                      storage=JournalStorage(JournalFileBackend(str(journal))))
            completed = any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert completed and run.poll() is None, (tmp_path / "tune.log").read_text()[-3000:]
    run.send_signal(signal.SIGINT)
    run.wait(timeout=300)
    output = (tmp_path / "tune.log").read_text()
    assert run.returncode == 130, output[-3000:]
    assert "interrupted: writing the best profile found so far" in output
    profile = load_profile(tmp_path / "profile.json")
    assert profile.notes == "interrupted: schedule not measured" and 1 <= profile.search.trials_done < 200


def test_bad_budget_is_refused_before_any_engine(default_model, tmp_path):
    run = _tune(default_model, tmp_path, "--budget", "0")
    output = run.communicate(timeout=120)[0]
    assert run.returncode == 2
    assert "vllm-selfspec tune: error: --budget: must be at least 1 trial, got 0" in output
    assert "Initializing a V1 LLM engine" not in output
    assert not (tmp_path / "profile.json").exists()
