"""Training under torchrun (DistributedDataParallel, gloo, 2 CPU processes) equals one process with the doubled batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddpm_lib.checkpoint import read_checkpoint
from ddpm_lib.training import train

sys.path.insert(0, str(Path(__file__).parent))
from ddp_worker import config, images, labels  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("kind", ["unconditional", "conditional", "importance"])
def test_two_gloo_processes_equal_one_process_with_double_batch(tmp_path, kind):
    worker = Path(__file__).parent / "ddp_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(worker), str(tmp_path / "ddp"), "8", kind]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    torch.set_num_threads(1)
    # label dropout's draws and the importance weights are made for the global batch, then split
    train(config(batch_size=16, kind=kind), tmp_path / "single", steps=4, images=images(), labels=labels(),
          progress=False)

    a = read_checkpoint(tmp_path / "ddp" / "checkpoint.safetensors")
    b = read_checkpoint(tmp_path / "single" / "checkpoint.safetensors")
    assert a.meta["state"]["images_seen"] == b.meta["state"]["images_seen"] == 4 * 16
    keys = [k for k in b.tensors if k.startswith(("model.", "ema."))]
    wa = torch.cat([a.tensors[k].flatten() for k in keys])
    wb = torch.cat([b.tensors[k].flatten() for k in keys])
    # Gradients are averaged across processes instead of over one batch, so sums run in another
    # order: float32 round-off, about 1e-7 relative per step. Adam turns tiny gradients of the
    # zero-initialised output layers into steps of size ~lr whatever their round-off, so compare
    # all weights at once (relative norm), not element by element.
    assert (wa - wb).norm() / wb.norm() < 1e-5
    # ...and this comparison can fail: a run with another batch size differs far more
    train(config(batch_size=8, kind=kind), tmp_path / "other", steps=4, images=images(), labels=labels(),
          progress=False)
    c = read_checkpoint(tmp_path / "other" / "checkpoint.safetensors")
    wc = torch.cat([c.tensors[k].flatten() for k in keys])
    # (50 times the tolerance above; the conditional run's large, barely trained label embedding dilutes the norm)
    assert (wc - wb).norm() / wb.norm() > 5e-4
    # the logged loss is the global mean in both cases
    la = [json.loads(x)["loss"] for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    assert la == pytest.approx(lb, rel=1e-4)
