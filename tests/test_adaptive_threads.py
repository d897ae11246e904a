"""The CPU thread policy that gives way to other processes (ddpm_lib.devices.AdaptiveThreads), its fake-clock
arithmetic, and its hooks: `train(..., threads=...)`, the metrics' "threads" and the command line's `--threads`."""

import dataclasses
import json

import pytest
import torch

import ddpm_lib.training.ddpm as training
from ddpm_lib.__main__ import build_parser, main
from ddpm_lib.devices import AdaptiveThreads, usable_cores
from ddpm_lib.training import train
from test_training import TINY


@pytest.fixture(autouse=True)
def keep_thread_count():
    """Every test leaves torch's thread count as it found it (the policies under test change it)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


class FakeMachine:
    """A clock and the two CPU-time counters, advanced by hand: `others` and `own` are the cores the other processes
    and this one keep busy (CPU-seconds per second) while the clock runs."""

    def __init__(self, others: float = 0.0, own: float = 0.0):
        self.others, self.own = others, own
        self.wall, self.busy_s, self.own_s = 1000.0, 5000.0, 7.0  # arbitrary readings since boot
        self.sleeps: list[float] = []

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.busy_s += (self.others + self.own) * seconds
        self.own_s += self.own * seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)

    def policy(self, **kwargs) -> AdaptiveThreads:
        return AdaptiveThreads(busy_seconds=lambda: self.busy_s, own_seconds=lambda: self.own_s,
                               clock=lambda: self.wall, sleep=self.sleep, **kwargs)


def test_a_quiet_machine_gets_every_core_and_the_first_update_measures_a_short_window():
    m = FakeMachine(others=0.0)
    policy = m.policy(cores=4, max_threads=4)
    assert policy.update() == 4 and torch.get_num_threads() == 4
    assert m.sleeps == [0.25] and policy.others == 0.0
    m.own = 3.7  # our own threads (busy-waiting included) are not another process's
    m.advance(5.0)
    assert policy.update() == 4 and policy.others == pytest.approx(0.0, abs=1e-9)
    assert m.sleeps == [0.25]  # later updates measure the interval since the previous one: no sleep


@pytest.mark.parametrize("cores, others, expected", [(4, 1.0, 3), (2, 1.0, 1), (8, 2.0, 6), (4, 0.4, 4), (4, 0.6, 3)])
def test_each_core_other_processes_use_is_one_thread_less(cores, others, expected):
    m = FakeMachine(others=others, own=1.0)
    assert m.policy(cores=cores, max_threads=cores).update() == expected
    assert torch.get_num_threads() == expected


def test_never_below_one_thread_and_never_above_max_threads():
    assert FakeMachine(others=6.0).policy(cores=4, max_threads=4).update() == 1
    assert FakeMachine(others=0.0).policy(cores=8, max_threads=3).update() == 3
    # the default ceiling is torch's thread count when the policy is made
    torch.set_num_threads(2)
    assert FakeMachine(others=0.0).policy(cores=8).update() == 2


def test_it_follows_a_neighbour_that_comes_and_goes():
    m = FakeMachine(others=0.0, own=2.0)
    policy = m.policy(cores=2, max_threads=2)
    counts = [policy.update()]
    m.others = 1.0  # a single-threaded neighbour starts
    m.advance(5.0)
    counts.append(policy.update())
    m.advance(5.0)
    counts.append(policy.update())
    m.others = 0.0  # ...and stops
    m.advance(5.0)
    counts.append(policy.update())
    assert counts == [2, 1, 1, 2]


def test_bad_settings_are_refused():
    for kwargs in ({"max_threads": 0}, {"cores": 0}, {"first_window_s": 0.0}):
        with pytest.raises(ValueError, match="AdaptiveThreads needs"):
            FakeMachine().policy(**{"cores": 2, "max_threads": 2, **kwargs})


def test_the_default_sources_measure_this_machine():
    # psutil's counters: the count is a whole number of threads between 1 and the ceiling, and it is applied
    policy = AdaptiveThreads(max_threads=2)
    threads = policy.update()
    assert threads in (1, 2) and torch.get_num_threads() == threads
    assert 0.0 <= policy.others <= usable_cores() + 0.5  # cores, up to the counters' 10 ms ticks over 0.25 s
    assert usable_cores() >= 1


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _threads_logged(folder):
    return [json.loads(line)["threads"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_train_auto_updates_before_the_first_step_and_at_every_log_step(tmp_path, images, monkeypatch):
    scripted = iter([2, 1, 3])  # the counts the fake policy sets, in turn

    class Scripted:
        calls = 0

        def update(self):
            Scripted.calls += 1
            torch.set_num_threads(next(scripted))
            return torch.get_num_threads()

    monkeypatch.setattr(training, "AdaptiveThreads", Scripted)
    torch.set_num_threads(1)
    train(dataclasses.replace(TINY, log_every=2), tmp_path, steps=6, images=images, progress=False, threads="auto")
    # updates before step 1 and after the log lines of steps 2 and 4 (none after the last step); each line records the
    # count its steps ran with
    assert Scripted.calls == 3
    assert _threads_logged(tmp_path) == [2, 1, 3]
    assert torch.get_num_threads() == 1  # the caller's count is given back


def test_train_auto_with_psutil_writes_threads_in_every_metrics_line(tmp_path, images):
    train(TINY, tmp_path, steps=3, images=images, progress=False, threads="auto")
    logged = _threads_logged(tmp_path)
    assert len(logged) == 3 and all(1 <= n <= torch.get_num_threads() for n in logged)


def test_train_with_a_fixed_count_or_none(tmp_path, images, monkeypatch):
    torch.set_num_threads(1)
    train(TINY, tmp_path / "two", steps=2, images=images, progress=False, threads=2)
    assert _threads_logged(tmp_path / "two") == [2, 2] and torch.get_num_threads() == 1

    def refuse(*args, **kwargs):
        raise AssertionError("threads=None must not build a policy")

    monkeypatch.setattr(training, "AdaptiveThreads", refuse)
    train(TINY, tmp_path / "none", steps=2, images=images, progress=False)
    assert _threads_logged(tmp_path / "none") == [1, 1]
    for bad in ("two", 0, 1.5, True):
        with pytest.raises(ValueError, match="threads must be None, an integer >= 1 or 'auto'"):
            train(TINY, tmp_path / "bad", steps=2, images=images, progress=False, threads=bad)


def test_cli_threads_parses_auto_and_integers():
    parser = build_parser()
    train_args = ["train", "--preset", "mnist-cpu", "--out", "run"]
    assert parser.parse_args(train_args).threads == "auto"  # the default
    assert parser.parse_args([*train_args, "--threads", "auto"]).threads == "auto"
    assert parser.parse_args([*train_args, "--threads", "2"]).threads == 2
    assert parser.parse_args(["benchmark"]).threads is None
    assert parser.parse_args(["benchmark", "--threads", "auto"]).threads == "auto"


@pytest.mark.parametrize("command", [["train", "--preset", "mnist-cpu", "--out", "run"], ["benchmark"]])
@pytest.mark.parametrize("value", ["two", "0"])
def test_cli_threads_refuses_other_values_clearly(command, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--threads", value])
    assert exc.value.code == 2
    assert f"argument --threads: expected an integer >= 1 or 'auto', got '{value}'" in capsys.readouterr().err


def test_cli_train_passes_threads_to_train(tmp_path, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(training, "train", lambda *args, **kwargs: seen.append(kwargs["threads"]) or tmp_path / "c")
    assert main(["train", "--preset", "mnist-cpu", "--out", str(tmp_path)]) == 0
    assert main(["train", "--preset", "mnist-cpu", "--out", str(tmp_path), "--threads", "3"]) == 0
    assert seen == ["auto", 3]


def test_cli_benchmark_auto_measures_once_before_timing(monkeypatch, capsys):
    import ddpm_lib.benchmark as bm
    import ddpm_lib.devices as devices

    events = []

    class Once:
        def update(self):
            events.append("update")
            torch.set_num_threads(1)
            return 1

    monkeypatch.setattr(devices, "AdaptiveThreads", Once)
    monkeypatch.setattr(bm, "benchmark_preset", lambda name, **kwargs: events.append(name) or {"train_step_ms": 1.0})
    assert main(["benchmark", "--preset", "mnist-cpu", "--threads", "auto"]) == 0
    assert events == ["update", "mnist-cpu"]
    assert json.loads(capsys.readouterr().out.strip()) == {"train_step_ms": 1.0, "threads": 1}
