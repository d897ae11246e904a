"""Training loops (the DDPM, the MNIST classifier, the VAE, the 2-D toys) and what they share.

With evaluation, the only layer that touches data loaders, devices, checkpoints and progress bars.
"""

from __future__ import annotations

from .runs import (CHECKPOINT_NAME, run_folder, check_not_past, metrics_up_to, flatten_optimizer, unflatten_optimizer, comparable, batch_indices)
from .ddpm import (TrainConfig, PRESETS, batch_loss, drop_labels, train)
from .classifier import (train_classifier)
from .noisy_classifier import (NoisyClassifierTrainConfig, train_noisy_classifier, noisy_accuracy)
from .vae import (VAETrainConfig, train_vae)
from .toy import (train_toy)
from .score_toy import (WEIGHTINGS, train_score_toy)

__all__ = ['CHECKPOINT_NAME', 'run_folder', 'check_not_past', 'metrics_up_to', 'flatten_optimizer', 'unflatten_optimizer', 'comparable', 'batch_indices', 'TrainConfig', 'PRESETS', 'batch_loss', 'drop_labels', 'train', 'train_classifier', 'NoisyClassifierTrainConfig', 'train_noisy_classifier', 'noisy_accuracy', 'VAETrainConfig', 'train_vae', 'train_toy', 'WEIGHTINGS', 'train_score_toy']
