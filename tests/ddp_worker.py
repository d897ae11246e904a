"""Run by tests/test_ddp.py under torchrun: trains the tiny test configuration on fixed random images."""

import os
import sys

import torch

from ddpm_lib.core.schedules import linear_schedule
from ddpm_lib.training import TrainConfig, train
from ddpm_lib.models.unet import UNetConfig


def config(batch_size: int, kind: str = "unconditional") -> TrainConfig:
    # conditional: a class-conditional U-Net with label dropout, whose draws must also match one process's;
    # importance: learned variances, the hybrid loss and t = 1 oversampled, whose weights are split like t
    conditional, importance = kind == "conditional", kind == "importance"
    return TrainConfig(
        model=UNetConfig(channels=(8, 16), num_res_blocks=1, attention_heads=2, num_classes=10 if conditional else None,
                         learn_variance=importance),
        loss="hybrid" if importance else "simple",
        first_step_fraction=0.5 if importance else 0.0,
        label_dropout=0.3 if conditional else 0.0,
        schedule=linear_schedule(50),
        batch_size=batch_size,
        warmup_steps=2,
        log_every=1,
        checkpoint_every=100,
        sample_every=100,
        sample_steps=2,
        sample_count=4,
    )


def images() -> torch.Tensor:
    return torch.randint(0, 256, (48, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def labels() -> torch.Tensor:
    return torch.arange(48) % 10


if __name__ == "__main__":
    torch.set_num_threads(1)
    # torchrun tells each process its rank and the number of processes through the environment
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    kind = sys.argv[3] if len(sys.argv) > 3 else "unconditional"
    train(config(batch_size=int(sys.argv[2]), kind=kind), sys.argv[1], steps=4, images=images(), labels=labels(),
          progress=False, world_size=world, rank=rank)
