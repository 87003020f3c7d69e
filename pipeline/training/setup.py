"""Factories the training config calls: device, optimizer, learning-rate scheduler."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

OPTIMIZERS = ("auto", "adam", "nadam", "adamw")
SCHEDULERS = ("plateau", "cosine", "none")


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} was asked for but CUDA is not available; use auto or cpu"
        )
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"device {name!r} is not one of: auto, cpu, cuda, cuda:N")
    return torch.device(name)


def build_optimizer(
    name: str,
    params: Iterable[torch.nn.Parameter],
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    network_name: str = "",
) -> torch.optim.Optimizer:
    """Adam, Nadam or AdamW; ``auto`` is Nadam for UNet++ (as in the method), else Adam."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} is not one of: {', '.join(OPTIMIZERS)}")
    if name == "auto":
        name = "nadam" if network_name.startswith("unetpp") else "adam"
    cls = {"adam": torch.optim.Adam, "nadam": torch.optim.NAdam, "adamw": torch.optim.AdamW}[name]
    return cls(params, lr=lr, weight_decay=weight_decay)


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, max_epochs: int) -> object | None:
    """Build the learning-rate scheduler.

    ``plateau`` halves the rate after 5 epochs without a better validation Dice; ``cosine``
    anneals over ``max_epochs``; ``none`` keeps the rate constant.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler {name!r} is not one of: {', '.join(SCHEDULERS)}")
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=5
        )
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, max_epochs))
    return None


def initialise(network: torch.nn.Module, weights: str | os.PathLike | None) -> torch.nn.Module:
    """Load a whole network's weights (fine-tuning), or return it untouched when None.

    Args:
        network: the network the config built.
        weights: a checkpoint file (see :func:`pipeline.inference.ensemble.load_weights`:
            ``models/model.pt`` of a bundle, a ``checkpoint_epoch=N.pt``).

    Raises:
        FileNotFoundError: ``weights`` names no file.
        ValueError: the checkpoint does not fit the network.
    """
    from pipeline.inference.ensemble import load_weights

    if weights is not None:
        load_weights(network, weights, torch.device("cpu"))
    return network


def is_rank0() -> bool:
    """True outside distributed runs and on rank 0 of a distributed run.

    Before the process group is initialised (a config may evaluate this early, e.g. MONAI's
    tracking settings), the ``RANK`` that torchrun sets decides.
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def mlruns_dir() -> Path:
    """``<repo>/mlruns`` (``./mlruns`` for a wheel install), the default MLflow store."""
    from pipeline.io.datasets import REPO_ROOT

    checkout = (REPO_ROOT / "setup.cfg").is_file()  # else installed from a wheel: the cwd
    path = (REPO_ROOT if checkout else Path.cwd()) / "mlruns"
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else SQLite at ``<repo>/mlruns/mlflow.db``.

    MLflow 3.13 and later refuse plain file stores, hence SQLite.
    """
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlruns_dir() / 'mlflow.db'}"


def default_artifact_location() -> str:
    """``<repo>/mlruns/artifacts`` as a file URI, for experiments this project creates."""
    return (mlruns_dir() / "artifacts").as_uri()


def prepare_trainer(
    trainer: Any,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ckpt_dir: str | os.PathLike,
    early_stop: Any = None,
    resume: str | os.PathLike | None = None,
) -> Any:
    """Attach what cannot be declared in the config without a circular reference.

    - the early-stop handler (it lives on the validator) gets its trainer;
    - on rank 0, the network, optimizer and trainer state are saved after every epoch
      (``checkpoint_epoch=N.pt``, the latest kept) and at the end or on a crash
      (``last.pt``), so a run can resume;
    - with ``resume``, that state is restored first and training continues at the next epoch.

    Returns:
        The trainer, ready to ``run()``.
    """
    from monai.handlers import CheckpointLoader, CheckpointSaver

    state = {"model": network, "optimizer": optimizer, "trainer": trainer}
    if early_stop is not None:
        early_stop.set_trainer(trainer)
    if resume:
        if not Path(resume).is_file():
            raise FileNotFoundError(f"checkpoint to resume from {str(resume)!r} does not exist")
        CheckpointLoader(str(resume), state, map_location="cpu").attach(trainer)
    if is_rank0():
        CheckpointSaver(
            str(ckpt_dir),
            state,
            save_final=True,
            final_filename="last.pt",
            save_interval=1,
            n_saved=1,
            epoch_level=True,
        ).attach(trainer)
    return trainer
