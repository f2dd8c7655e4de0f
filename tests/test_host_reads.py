"""The host-read recorder flags what would wait for a GPU, and nothing else."""

from __future__ import annotations

import pytest
import torch

from vllm_selfspec.glue.host_reads import (
    HOST_READS,
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

    def propose(self) -> torch.Tensor:
        return torch.zeros(2, 3)


def test_a_watch_keeps_the_delay_and_gives_it_back(monkeypatch):
    slept = []
    monkeypatch.setattr(target_delay.time, "sleep", slept.append)
    drafter = Drafter()
    target_delay._sleep_after_each_call(drafter, "propose", 0.01, per=lambda drafts: drafts.shape[1])
    watch_propose(drafter)
    drafter.propose()
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
