"""The background CPU load of the deadline benchmark starts, spins where it is told, and always stops."""

from __future__ import annotations

import os
import time

import pytest

from adallava.testing.cpu_hog import CpuHog


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_starts_and_stops_within_a_second_and_leaves_no_process():
    began = time.monotonic()
    with CpuHog(processes=2, max_seconds=30) as hog:
        pids = hog.pids
        assert len(pids) == 2 and hog.running
        time.sleep(0.05)
        assert hog.running  # spinning, not exited at once
    assert time.monotonic() - began < 1.0
    assert not hog.running and hog.pids == []
    assert all(gone(pid) for pid in pids)  # terminated and reaped, not zombies


def test_stops_when_the_block_raises():
    with pytest.raises(KeyError), CpuHog(max_seconds=30) as hog:
        pids = hog.pids
        raise KeyError("benchmark crashed")
    assert all(gone(pid) for pid in pids)


def test_each_hog_exits_by_itself_after_max_seconds():
    # Bug caught: a hog that spins until someone stops it (a crashed benchmark leaves a core busy).
    with CpuHog(max_seconds=0.2) as hog:
        deadline = time.monotonic() + 3.0
        while hog.running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not hog.running


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this platform")
def test_hogs_are_pinned_to_the_cores_given_in_turn():
    core = sorted(os.sched_getaffinity(0))[0]
    with CpuHog(processes=2, cores=[core], max_seconds=30) as hog:
        assert [os.sched_getaffinity(pid) for pid in hog.pids] == [{core}, {core}]


def test_bad_settings_name_the_allowed_range():
    with pytest.raises(ValueError, match="processes must be an int >= 1"):
        CpuHog(processes=0)
    with pytest.raises(ValueError, match=r"max_seconds must be in \(0, 3600\]"):
        CpuHog(max_seconds=0)
    with pytest.raises(ValueError, match=r"max_seconds must be in \(0, 3600\]"):
        CpuHog(max_seconds=7200)
    if hasattr(os, "sched_getaffinity"):
        with pytest.raises(ValueError, match="cores must be a non-empty subset"):
            CpuHog(cores=[10_000])


def test_cannot_be_started_twice():
    with CpuHog(max_seconds=30) as hog, pytest.raises(RuntimeError, match="already started"):
        hog.start()


def test_hogs_really_use_the_cpu():
    # Bug caught: a "hog" that sleeps (or exits at once) would make a contention benchmark measure an
    # idle machine. CPU time of reaped children is counted in os.times().
    before = os.times().children_user
    with CpuHog(max_seconds=30):
        time.sleep(0.3)
    assert os.times().children_user - before >= 0.1
