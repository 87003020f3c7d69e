"""Ignite handlers for training: a progress bar, and the MLflow artifacts MONAI does not log.

MONAI's ``MLFlowHandler`` logs parameters and per-epoch validation metrics; :class:`MLflowExtras`
adds the epoch-mean training loss (``train_loss``) and, at the end of training, tags (git
commit, dataset fingerprint, network), the best checkpoint, the learning-curve plot, overlays
of validation cases and the trained model (``mlflow.pytorch``, so it can be registered).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events


class ProgressBar:
    """tqdm progress bar over iterations showing the loss, with rate and ETA (rank 0 only)."""

    def __init__(self, output_transform: Callable[[Any], Any] | None = None):
        self.output_transform = output_transform or (lambda out: {"loss": _loss(out)})

    def attach(self, engine: Engine) -> None:
        """Attach to a trainer."""
        from ignite.handlers import ProgressBar as IgniteBar

        IgniteBar(persist=False).attach(engine, output_transform=self.output_transform)


def _loss(output: Any) -> float:
    first = output[0] if isinstance(output, list) else output
    return float(first["loss"]) if isinstance(first, dict) else float(first)


def git_commit(path: str | os.PathLike = ".") -> str:
    """The commit of the repository holding ``path``, or ``unknown``."""
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class MLflowExtras:
    """Log tags, checkpoint, curves, overlays and the model into the MLFlowHandler's run.

    Args:
        mlflow_handler: the trainer's ``monai.handlers.MLFlowHandler`` (its run is used).
        validator: the validation evaluator (its key metric is plotted).
        network: the trained network.
        checkpoint: path of the best checkpoint (state dict) to log and to draw overlays with.
        val_loader: loader of validation batches (``image``/``label``) for the overlays.
        tags: extra tags (``dataset_fingerprint``, ``network``...).
        n_overlays: how many validation cases to draw.
        log_model: also log the network with ``mlflow.pytorch.log_model``.
    """

    def __init__(
        self,
        mlflow_handler: Any,
        validator: Engine,
        network: torch.nn.Module,
        checkpoint: str,
        val_loader: Any,
        tags: dict[str, str] | None = None,
        n_overlays: int = 6,
        log_model: bool = True,
    ):
        self.mlflow_handler, self.validator, self.network = mlflow_handler, validator, network
        self.checkpoint, self.val_loader, self.n_overlays = Path(checkpoint), val_loader, n_overlays
        # the commit the run starts from (read now: the tree may move on while it trains)
        self.tags = {"git_commit": git_commit(Path(__file__).parent), **(tags or {})}
        self.log_model = log_model
        self.history: dict[str, list[float]] = {"train_loss": [], "val_metric": []}
        self._losses: list[float] = []

    def attach(self, engine: Engine) -> None:
        """Attach to a trainer."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._record)
        engine.add_event_handler(Events.COMPLETED, self._log_all)

    def _collect(self, engine: Engine) -> None:
        self._losses.append(_loss(engine.state.output))

    def _record(self, engine: Engine) -> None:
        loss = float(np.mean(self._losses)) if self._losses else float("nan")
        self._losses.clear()
        self.history["train_loss"].append(loss)
        metric = self.validator.state.metrics.get(self.validator.state.key_metric_name or "")
        self.history["val_metric"].append(float("nan") if metric is None else float(metric))
        run = getattr(self.mlflow_handler, "cur_run", None)
        if run is not None:
            self.mlflow_handler.client.log_metric(
                run.info.run_id, "train_loss", loss, step=engine.state.epoch
            )

    def _log_all(self, engine: Engine) -> None:
        run = getattr(self.mlflow_handler, "cur_run", None)
        if run is None:
            return
        client, run_id = self.mlflow_handler.client, run.info.run_id
        for key, value in self.tags.items():
            client.set_tag(run_id, key, str(value))
        with tempfile.TemporaryDirectory() as tmp:
            curve = _plot_curves(self.history, Path(tmp) / "learning_curve.png")
            client.log_artifact(run_id, str(curve))
            if self.checkpoint.is_file():
                client.log_artifact(run_id, str(self.checkpoint), artifact_path="checkpoint")
            net = self._best_network()
            overlays = self._overlays(net, Path(tmp) / "overlays")
            if overlays:
                client.log_artifacts(run_id, str(overlays), artifact_path="overlays")
        if self.log_model:
            self._log_model(net, run_id)

    def _best_network(self) -> torch.nn.Module:
        """The trained network with the best checkpoint's weights (read once)."""
        net = getattr(self.network, "module", self.network)
        if self.checkpoint.is_file():
            net.load_state_dict(torch.load(self.checkpoint, map_location="cpu", weights_only=True))
        return net

    def _overlays(self, net: torch.nn.Module, out_dir: Path) -> Path | None:
        from pipeline.io.png import save_png

        drawn = 0
        device = next(net.parameters()).device
        net.eval()
        with torch.no_grad():
            for batch in self.val_loader:
                probs = torch.sigmoid(net(batch["image"].to(device))).cpu()
                for img, lab, prob in zip(batch["image"], batch["label"], probs, strict=True):
                    name = Path(str(img.meta.get("filename_or_obj", drawn))).stem
                    save_png(
                        overlay(img[0].numpy(), lab[0].numpy() > 0.5, prob[0].numpy() > 0.5),
                        out_dir / f"{name}.png",
                    )
                    drawn += 1
                    if drawn >= self.n_overlays:
                        return out_dir
        return out_dir if drawn else None

    def _log_model(self, net: torch.nn.Module, run_id: str) -> None:
        import mlflow
        import monai

        net = net.cpu().eval()
        example = next(iter(self.val_loader))["image"][:1].as_tensor().cpu().numpy()
        mlflow.set_tracking_uri(self.mlflow_handler.client.tracking_uri)
        with mlflow.start_run(run_id=run_id):
            mlflow.pytorch.log_model(
                net,
                name="model",
                serialization_format="pickle",
                input_example=example,
                pip_requirements=[f"torch=={torch.__version__}", f"monai=={monai.__version__}"],
                code_paths=[str(Path(__file__).resolve().parents[1])],
            )


def overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """RGB uint8 image with the true lung border in green and the predicted one in red."""
    from scipy import ndimage

    from pipeline.io.png import to_uint8

    gray = to_uint8(image)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    for mask, colour in ((truth, (0, 255, 0)), (pred, (255, 0, 0))):
        edge = mask & ~ndimage.binary_erosion(mask, iterations=1)
        rgb[edge] = colour
    return rgb


def _plot_curves(history: dict[str, list[float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = range(1, len(history["train_loss"]) + 1)
    ax.plot(epochs, history["train_loss"], label="train loss")
    ax.plot(epochs, history["val_metric"], label="validation Dice")
    ax.set_xlabel("epoch")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
