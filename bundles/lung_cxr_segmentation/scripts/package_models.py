"""Package trained checkpoints as this bundle's model: state dicts, ensemble, TorchScript.

usage (from the bundle folder)::

    python scripts/package_models.py RUN_A/models/checkpoint_epoch=40.pt \
        RUN_B/models/checkpoint_epoch=40.pt

writes ``models/model.pt`` (the first checkpoint's network weights), ``models/model_1.pt``...
(the others), lists them all as the ``anatomical`` model in ``configs/inference.json`` and exports
``models/model.ts``: the TorchScript of the network the predictor runs (the ensemble when
there are several checkpoints), so MONAI Deploy and TorchScript users get the same output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from pipeline.inference.predictor import Predictor

BUNDLE = Path(__file__).resolve().parents[1]


def _state(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["model"] if isinstance(state.get("model"), dict) else state


def main(checkpoints: list[str]) -> None:
    """Write the weights, the ensemble list and the TorchScript."""
    names = ["model.pt"] + [f"model_{i}.pt" for i in range(1, len(checkpoints))]
    for name, ckpt in zip(names, checkpoints, strict=True):
        torch.save(_state(Path(ckpt)), BUNDLE / "models" / name)
    config_path = BUNDLE / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config["models"]["anatomical"] = [f"models/{n}" for n in names]
    config_path.write_text(json.dumps(config, indent=4) + "\n")
    network = Predictor(BUNDLE, device="cpu").network
    torch.jit.script(network).save(str(BUNDLE / "models" / "model.ts"))
    print(f"wrote {', '.join(names)} and model.ts; models = {config['models']['anatomical']}")


if __name__ == "__main__":
    main(sys.argv[1:])
