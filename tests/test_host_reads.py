"""The host-read recorder flags what would wait for a GPU, and nothing else."""

from __future__ import annotations

import pytest
import torch

from vllm_selfspec.glue import host_reads
from vllm_selfspec.glue.host_reads import (
    HOST_READS,
    HostReadRecorder,
    PACKAGE_DIR,
    _in_package,
    _waits_for_values,
    unwatch_propose,
    watch_propose,
)
from vllm_selfspec.tools.bench import target_delay

t = torch.arange(4)


@pytest.mark.parametrize("name, args, kwargs, waits", [
    ("to", (t, "cpu"), {}, True),
    ("to", (t, torch.device("cpu")), {}, True),
    ("to", (t,), {"device": "cpu"}, True),
    ("to", (t, "cpu"), {"non_blocking": True}, False),
    ("to", (t, torch.float32), {}, False),
    ("__getitem__", (t, t > 1), {}, True),
    ("__getitem__", (t, (slice(None), t > 1)), {}, True),
    ("__getitem__", (t, t[:2]), {}, False),
    ("__getitem__", (t, 0), {}, False),
    ("copy_", (torch.empty(4, dtype=torch.long), t), {}, False),  # host to host: no device involved
    ("add", (t, t), {}, False),
])
def test_what_waits_for_values(name, args, kwargs, waits):
    assert _waits_for_values(name, args, kwargs) is waits


def test_reads_and_shapes_from_values_are_listed():
    assert {"tolist", "item", "__bool__", "nonzero", "masked_select"} <= HOST_READS


def test_only_the_package_s_own_files_count(tmp_path):
    assert _in_package(f"{PACKAGE_DIR}/glue/proposer.py")
    assert not _in_package(torch.__file__)
    link = tmp_path / "linked"
    link.symlink_to(PACKAGE_DIR)
    assert _in_package(str(link / "glue" / "proposer.py"))


class Drafter:
    """Stands in for the proposer: the host-read watch and the TEST-ONLY delay both wrap its ``propose``."""

    def propose(self, num_speculative_tokens: int = 3) -> torch.Tensor:
        return torch.zeros(2, num_speculative_tokens)

    def _read_on_every_rank(self, values: torch.Tensor) -> list[int]:
        return values.tolist()


def test_a_watch_keeps_the_delay_and_gives_it_back(monkeypatch):
    slept = []
    monkeypatch.setattr(target_delay.time, "sleep", slept.append)
    drafter = Drafter()
    target_delay._sleep_after_each_call(drafter, "propose", 0.01, per=lambda drafts: drafts.shape[1])
    watch_propose(drafter)
    drafter.propose(3)
    report = unwatch_propose(drafter)
    drafter.propose()
    assert report["calls"] == 1 and report["reads"] == []
    assert slept == [0.03, 0.03]  # delayed while watched and after: 3 draft steps x 10 ms
    assert target_delay._slept_calls(drafter, "propose") == 2
    target_delay._sleep_after_each_call(drafter, "propose", 0.0)  # delay off: no sleep, none counted
    drafter.propose()
    assert slept == [0.03, 0.03] and target_delay._slept_calls(drafter, "propose") == 2


def test_a_watch_without_a_delay_leaves_the_class_method():
    drafter = Drafter()
    watch_propose(drafter)
    assert "propose" in drafter.__dict__
    unwatch_propose(drafter)
    assert "propose" not in drafter.__dict__


def test_a_watch_records_each_call_s_lengths_and_sets_the_agreed_read_point_apart(monkeypatch):
    monkeypatch.setattr(host_reads, "_in_package", lambda filename: True)  # this file stands in for the package's
    drafter = Drafter()
    watch_propose(drafter)
    drafter.propose(3)
    drafter.propose(num_speculative_tokens=0)
    with HostReadRecorder() as recorder:
        drafter._read_on_every_rank(torch.ones(2))
        torch.ones(2).tolist()
    report = unwatch_propose(drafter)
    assert report["draft_lengths"] == [[3, 3], [0, 0]]
    assert [read.split(" at ")[0] for read in recorder.agreed_reads] == ["tolist"]
    assert [read.split(" at ")[0] for read in recorder.reads] == ["tolist"]
