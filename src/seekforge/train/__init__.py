"""The trainer: one loop for pretraining, SFT and distillation, with pluggable objectives.

- :class:`Trainer` / :func:`train` (``seekforge train``): see :mod:`seekforge.train.trainer`.
- :class:`Objective`, :class:`PretrainObjective`: what is trained on what (:mod:`.objective`).
- :class:`TrainConfig`, :func:`load_train_config`: the settings (:mod:`.config`).
- Optimizers (AdamW, Muon incl. stacked experts), LR schedules, packed data, checkpoints and
  metrics live in :mod:`.optim`, :mod:`.muon`, :mod:`.schedule`, :mod:`.data`,
  :mod:`.checkpoint`, :mod:`.metrics`.
"""

from __future__ import annotations

from seekforge.train.config import DataConfig, TrainConfig, load_train_config
from seekforge.train.objective import LossOutput, Objective, PretrainObjective, TrainEnv, unwrap
from seekforge.train.trainer import Trainer, TrainingError, train

__all__ = ["DataConfig", "TrainConfig", "load_train_config", "LossOutput", "Objective", "PretrainObjective",
           "TrainEnv", "unwrap", "Trainer", "TrainingError", "train"]
