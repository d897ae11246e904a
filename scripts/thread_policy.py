"""The training step of the `mnist-cpu` U-Net, alone and beside a busy process, under several thread policies.

Issue "the main model", section "Speed when the machine is shared": on a machine with few cores, torch's OpenMP
threads busy-wait at the end of every parallel region, so when another process holds one of the cores a
two-thread step waits for a thread that is descheduled. Each configuration runs `python -m ddpm_lib benchmark
--preset mnist-cpu` in a fresh process (OpenMP reads its environment once, at start), with `--threads N` and,
optionally, `OMP_WAIT_POLICY=PASSIVE`, or with `--threads auto` (ddpm_lib.devices.AdaptiveThreads: one measure
of the other processes' load, then the cores they leave free). "busy" starts one single-threaded neighbour for the
whole measurement: `--competitor matmul` (the default) multiplies matrices; `--competitor train` runs the
mnist-cpu training step with one thread (`python -m ddpm_lib benchmark --preset mnist-cpu --device cpu --threads 1
--train-steps 100000`, killed at the end), given `--settle-s` seconds (default 10) to load before the timing.
Every configuration is measured `--repeats` times, interleaved, and the median step time kept; the JSON (written
atomically) records the competitor. Run (about 10 minutes on 2 cores for the four fixed policies, with nothing else
running; auto adds a fifth policy, and the train competitor `--settle-s` per repeat):

    python scripts/thread_policy.py --out benchmarks/thread-policy.json
    python scripts/thread_policy.py --competitor train --out benchmarks/thread-policy-train.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from ddpm_lib.checkpoint import write_atomic

# the busy neighbours: one single-threaded process each
COMPETITORS = {
    "matmul": [sys.executable, "-c", "import torch; torch.set_num_threads(1); a = torch.randn(512, 512)\nwhile True: a @ a"],
    "train": [sys.executable, "-m", "ddpm_lib", "benchmark", "--preset", "mnist-cpu", "--device", "cpu", "--threads", "1",
              "--train-steps", "100000"],
}
POLICIES = {"2 threads": (2, None), "2 threads, OMP_WAIT_POLICY=PASSIVE": (2, "PASSIVE"),
            "1 thread": (1, None), "1 thread, OMP_WAIT_POLICY=PASSIVE": (1, "PASSIVE"), "auto": ("auto", None)}


def step_ms(threads: int | str, wait_policy: str | None, train_steps: int) -> float:
    """One benchmark run in a fresh process: the mean training step of `mnist-cpu` (batch 64), in milliseconds.

    ``threads`` is a count or ``"auto"``.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    out = subprocess.run([sys.executable, "-m", "ddpm_lib", "benchmark", "--preset", "mnist-cpu", "--device", "cpu",
                          "--threads", str(threads), "--train-steps", str(train_steps)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["train_step_ms"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--competitor", choices=sorted(COMPETITORS), default="matmul",
                   help="the busy neighbour: matmul (512 x 512 products) or train (the mnist-cpu training step); one thread")
    p.add_argument("--settle-s", type=float, help="seconds the neighbour runs before the timing (default: 0 for matmul, "
                   "10 for train, which loads torch and warms up first)")
    p.add_argument("--out")
    args = p.parse_args()
    settle = args.settle_s if args.settle_s is not None else (10.0 if args.competitor == "train" else 0.0)
    runs: dict[str, dict[str, list[float]]] = {name: {"alone": [], "busy": []} for name in POLICIES}
    for _ in range(args.repeats):
        for setting in ("alone", "busy"):
            busy = subprocess.Popen(COMPETITORS[args.competitor], env={**os.environ, "OMP_NUM_THREADS": "1"},
                                    stdout=subprocess.DEVNULL) \
                if setting == "busy" else None
            try:
                if busy is not None:
                    time.sleep(settle)
                for name, (threads, policy) in POLICIES.items():
                    runs[name][setting].append(step_ms(threads, policy, args.train_steps))
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    result = {"command": " ".join(["python scripts/thread_policy.py", *sys.argv[1:]]), "cpu_count": os.cpu_count(),
              "repeats": args.repeats, "train_steps": args.train_steps, "preset": "mnist-cpu", "batch_size": 64,
              "competitor": args.competitor, "competitor_command": COMPETITORS[args.competitor][1:], "settle_s": settle,
              "step_ms": {name: {s: statistics.median(v) for s, v in r.items()} for name, r in runs.items()},
              "runs_ms": runs}
    print(f"{'policy':>36} {'alone ms':>9} {'busy ms':>9} {'busy/alone':>10}")
    for name, r in result["step_ms"].items():
        print(f"{name:>36} {r['alone']:9.0f} {r['busy']:9.0f} {r['busy'] / r['alone']:10.1f}")
    if args.out:
        write_atomic(args.out, (json.dumps(result, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
