"""A bounded background CPU load, for measuring how deadlines hold up under contention.

    with CpuHog(processes=1, cores=[0], max_seconds=120):
        ...  # time requests while one process spins on core 0

Each hog is a separate, fresh Python process (`python -I -c`, nothing imported, so it starts in
milliseconds and shares no GIL or fork-time state with a caller that has torch's threads running)
spinning in a busy loop, pinned to one core with `os.sched_setaffinity` where the platform has it
(process i on cores[i % len(cores)]). It is always stopped: on leaving the block (normally or by an
exception) the processes are terminated, then killed if they linger; and each one also exits by
itself after `max_seconds`, so even a benchmark killed outright cannot leave a core spinning for long.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

MAX_SECONDS_LIMIT = 3600.0  # no hog may spin longer than an hour, whatever it is asked


# The hog's whole program: busy-loop for argv[1] seconds, then exit (the hard limit). The clock is
# read only every 10,000 iterations, so nearly all of the time is spent spinning.
_SPIN = """
import sys, time
end = time.monotonic() + float(sys.argv[1])
x = 0
while time.monotonic() < end:
    for _ in range(10_000):
        x = (x * 1_103_515_245 + 12_345) & 0xFFFFFFFF
"""


def _allowed_cores() -> list[int] | None:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


class CpuHog:
    """`processes` processes spinning on `cores` (default: every core this process may use) for at
    most `max_seconds`, as a context manager (or `start()` / `stop()`)."""

    def __init__(self, processes: int = 1, cores: Sequence[int] | None = None, max_seconds: float = 600.0):
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise ValueError(f"processes must be an int >= 1, got {processes!r}")
        if not 0 < max_seconds <= MAX_SECONDS_LIMIT:
            raise ValueError(f"max_seconds must be in (0, {MAX_SECONDS_LIMIT:g}], got {max_seconds!r}")
        allowed = _allowed_cores()
        if cores is not None:
            cores = list(cores)
            if not cores or (allowed is not None and not set(cores) <= set(allowed)):
                raise ValueError(
                    f"cores must be a non-empty subset of the usable cores {allowed}, got {cores}"
                )
        self.processes = processes
        self.cores = cores if cores is not None else allowed
        self.max_seconds = float(max_seconds)
        self._workers: list[subprocess.Popen] = []

    @property
    def pids(self) -> list[int]:
        return [worker.pid for worker in self._workers]

    @property
    def running(self) -> bool:
        """True while any hog process is still spinning."""
        return any(worker.poll() is None for worker in self._workers)

    def start(self) -> CpuHog:
        if self._workers:
            raise RuntimeError("this CpuHog is already started; stop() it first")
        command = [sys.executable, "-I", "-c", _SPIN, repr(self.max_seconds)]
        try:
            for index in range(self.processes):
                worker = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
                self._workers.append(worker)
                if self.cores is not None and hasattr(os, "sched_setaffinity"):
                    os.sched_setaffinity(worker.pid, {self.cores[index % len(self.cores)]})
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        """Terminate every hog, kill any still alive after `timeout_s`, and reap them."""
        for worker in self._workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in self._workers:
            try:
                worker.wait(timeout_s)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout_s)
        self._workers = []

    def __enter__(self) -> CpuHog:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
