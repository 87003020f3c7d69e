r"""Package trained checkpoints as this bundle's model: state dicts, soup or ensemble, TorchScript.

usage (from the repository root)::

    python bundles/lung_cxr_segmentation/scripts/package_models.py [--soup] \\
        RUN_A/models/checkpoint_epoch=15.pt RUN_B/models/checkpoint_epoch=15.pt ...

With ``--soup`` (0.7.0 on), writes ``models/model.pt``: the uniform average of the
checkpoints' weights (:func:`pipeline.inference.ensemble.average_weights`), one network.
Without it, writes ``models/model.pt`` (the first checkpoint's network weights),
``models/model_1.pt``... (the others), combined as ``combine_by_field`` says. Either way it
lists the files as the ``anatomical`` model in ``configs/inference.json``, removes the
anatomical model files no longer listed, and exports ``models/model.ts``: the TorchScript of
the network the predictor runs, so MONAI Deploy and TorchScript users get the same output.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pipeline.inference.ensemble import average_weights, read_state
from pipeline.inference.predictor import Predictor

BUNDLE = Path(__file__).resolve().parents[1]
MODELS = BUNDLE / "models"


def write_weights(checkpoints: list[Path], soup: bool) -> list[str]:
    """Write the state dicts; the names written, first ``model.pt``."""
    cpu = torch.device("cpu")
    if soup:
        torch.save(average_weights(checkpoints, cpu), MODELS / "model.pt")
        return ["model.pt"]
    names = ["model.pt"] + [f"model_{i}.pt" for i in range(1, len(checkpoints))]
    for name, ckpt in zip(names, checkpoints, strict=True):
        torch.save(read_state(ckpt, cpu), MODELS / name)
    return names


def main() -> None:
    """Write the weights, the model list and the TorchScript."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--soup", action="store_true", help="ship the average of the weights")
    args = ap.parse_args()
    names = write_weights(args.checkpoints, args.soup)
    for stale in MODELS.glob("model_*.pt"):
        if stale.name not in names:
            stale.unlink()
    config_path = BUNDLE / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config["models"]["anatomical"] = [f"models/{n}" for n in names]
    config_path.write_text(json.dumps(config, indent=4) + "\n")
    network = Predictor(BUNDLE, device="cpu").network
    torch.jit.script(network).save(str(MODELS / "model.ts"))
    print(f"wrote {', '.join(names)} and model.ts; models = {config['models']['anatomical']}")


if __name__ == "__main__":
    main()
