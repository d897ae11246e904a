"""Where and how a network runs: choosing the device (the one place that knows device names and what this machine
has), finding a network's device, eval mode that leaves the caller's network as it was, and a CPU thread count that
gives way to other processes (:class:`AdaptiveThreads`)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psutil
import torch

__all__ = ["pick_device", "model_device", "eval_mode", "usable_cores", "AdaptiveThreads"]


_DEVICE_NAME = re.compile(r"(cpu|mps)(:0)?|cuda(:[0-9]+)?")


def pick_device(name: str | None = None) -> torch.device:
    """``name`` if given (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``), else CUDA, else MPS, else the CPU.

    Raises:
        ValueError: if ``name`` is none of those forms; the message lists them and which are available.
        RuntimeError: if the named device is not available here (or ``cuda:N`` is past the last GPU).
    """
    if name is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    name = str(name).strip()
    if not _DEVICE_NAME.fullmatch(name):
        raise ValueError(f"unknown device {name!r}; the devices are {_device_menu()}.")
    dev = torch.device(name)
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if dev.index is not None and dev.index >= n > 0:
            raise RuntimeError(f"device {name!r} was asked for, but this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}.")
    if (dev.type == "cuda" and not torch.cuda.is_available()) or (dev.type == "mps" and not torch.backends.mps.is_available()):
        raise RuntimeError(f"device {name!r} was asked for, but it is not available here; the devices are {_device_menu()}.")
    return dev


def _device_menu() -> str:
    # the accepted device names and whether each is available on this machine
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cuda = f"available: {n} GPU(s), cuda:0..cuda:{n - 1}" if n else "not available here"
    mps = "available" if torch.backends.mps.is_available() else "not available here"
    return f"cpu (available), cuda or cuda:N ({cuda}), mps ({mps})"


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a network's weights live on (its first parameter's or buffer's; the CPU for one with neither).

    Sampling and evaluation run a network where it is and never move the caller's model.
    """
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run ``model`` in eval mode (dropout off) inside the block, and give every submodule its own mode back after.

    Sampling and evaluation use it so that they never change the mode of the caller's network.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def _busy_cpu_seconds() -> float:
    """CPU-seconds the machine has spent busy since boot, summed over the cores this process may run on.

    From :func:`psutil.cpu_times`: every field but ``idle`` and ``iowait`` (waiting for the disk is idle time), less
    ``guest`` and ``guest_nice``, which Linux already counts inside ``user`` and ``nice``. ``steal`` (time a
    hypervisor gave another machine) counts as busy: the core was not ours to use. When the affinity mask holds
    fewer cores than the machine, only those cores' times are summed (a process pinned to two cores is not slowed by
    the others); the per-core list is indexed by core number, which holds while no core is offline.
    """
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    per_core = psutil.cpu_times(percpu=True) if cores else []
    chosen = [per_core[i] for i in cores] if cores and len(cores) < len(per_core) and cores[-1] < len(per_core) \
        else [psutil.cpu_times()]
    busy = 0.0
    for times in chosen:
        fields = times._asdict()
        busy += sum(fields.values()) - sum(fields.get(k, 0.0) for k in ("idle", "iowait", "guest", "guest_nice"))
    return busy


def _own_cpu_seconds() -> float:
    """CPU-seconds this process has used (user + system, every thread of it), from :class:`psutil.Process`."""
    times = psutil.Process().cpu_times()
    return times.user + times.system


def usable_cores() -> int:
    """The cores this process may run on: its affinity mask (``os.sched_getaffinity``) where the OS has one, else
    ``os.cpu_count()`` (1 if unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class AdaptiveThreads:
    """Keep torch's intra-op thread count at the number of cores that other processes leave free.

    Why: torch's OpenMP threads busy-wait at the end of every parallel region, so when another process holds one
    of the cores, a step with one thread per core waits for a thread that has been descheduled. Measured on 2
    cores (``benchmarks/thread-policy.json``, ``scripts/thread_policy.py``), the mnist-cpu training step takes,
    alone -> beside one busy single-threaded process: 2 threads 190 -> 571 ms (3.0x); 2 threads with
    ``OMP_WAIT_POLICY=PASSIVE`` 243 -> 429 ms (1.8x); 1 thread 325 -> 304 ms. So the best count is all cores when
    the machine is quiet and fewer when other processes run.

    Each :meth:`update` measures, over the interval since the previous update, the CPU time the other processes
    used per second of wall time, ``others = (d busy - d own) / d wall`` in cores (the machine's busy CPU-seconds
    less this process's, both from psutil), and sets::

        threads = max(1, min(max_threads, cores - round(others)))

    with ``torch.set_num_threads`` (only when it changes). Our own threads' busy-waiting is our CPU time, so it
    does not count as another process's. The first update has no previous one: it sleeps ``first_window_s``
    (0.25 s by default) and measures over that window, during which this process is idle.

    Not handled: it reacts only at each update (the training loop updates at every log step), so a process that
    starts between two updates slows the steps until the next one; the measure is one interval's mean, so a
    neighbour that runs half the time counts as half a core (rounded by Python's ``round``, halves to even: 2.5
    cores count as 2); it reads the host's CPU times, so a container's CPU quota (cgroups) is not seen; and it sets
    the intra-op threads only (not ``torch.set_num_interop_threads``, which torch fixes at its first parallel work).

    Args:
        max_threads: the most threads to use; default: ``torch.get_num_threads()`` when the object is made (torch's
            own choice, one per physical core, or ``OMP_NUM_THREADS``), so that it never uses more than torch would.
        cores: the usable cores; default :func:`usable_cores` (the affinity mask, else ``os.cpu_count()``).
        busy_seconds: a callable giving the machine's busy CPU-seconds, summed over the cores (a counter that only
            grows); default: from :func:`psutil.cpu_times`.
        own_seconds: a callable giving this process's CPU-seconds (user + system); default:
            ``psutil.Process().cpu_times()``.
        clock: wall-clock seconds (``time.monotonic``); sleep: ``time.sleep``. Tests pass fakes of these four.
        first_window_s: the window of the first update, seconds.

    Raises:
        ValueError: if ``max_threads`` or ``cores`` is below 1, or ``first_window_s`` is not positive.
    """

    def __init__(self, max_threads: int | None = None, *, cores: int | None = None,
                 busy_seconds: Callable[[], float] = _busy_cpu_seconds, own_seconds: Callable[[], float] = _own_cpu_seconds,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 first_window_s: float = 0.25) -> None:
        self.max_threads = torch.get_num_threads() if max_threads is None else max_threads
        self.cores = usable_cores() if cores is None else cores
        if self.max_threads < 1 or self.cores < 1 or not first_window_s > 0:
            raise ValueError(f"AdaptiveThreads needs max_threads >= 1, cores >= 1 and first_window_s > 0; got "
                             f"max_threads={self.max_threads}, cores={self.cores}, first_window_s={first_window_s}.")
        self._busy, self._own, self._clock, self._sleep = busy_seconds, own_seconds, clock, sleep
        self.first_window_s = first_window_s
        self._last: tuple[float, float, float] | None = None  # (wall, busy, own) at the previous update
        self.others = 0.0  # cores the other processes used over the last interval (last update's measure)

    def _reading(self) -> tuple[float, float, float]:
        return self._clock(), self._busy(), self._own()

    def update(self) -> int:
        """Measure the other processes' use of the cores since the previous update, set the thread count, return it."""
        if self._last is None:
            self._last = self._reading()
            self._sleep(self.first_window_s)
        now = self._reading()
        (w0, b0, o0), (w1, b1, o1) = self._last, now
        self._last = now
        self.others = max(0.0, ((b1 - b0) - (o1 - o0)) / (w1 - w0)) if w1 > w0 else 0.0
        threads = max(1, min(self.max_threads, self.cores - round(self.others)))
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        return threads
