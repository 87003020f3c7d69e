"""Bundles as the predictor reads them: where they are, their parsed config, their identity.

A model's **identity** is what produced a result: the SHA-256 of every checkpoint it runs
(several for an ensemble) and a canonical hash of the resolved inference config, i.e. every
config id that can change a pixel of the output (input size, preprocessing, threshold,
components, test-time augmentation...). Ids that only say where things are or how fast they
run (:data:`NOT_PIXELS`) are left out, so moving a bundle or changing its batch size keeps
its identity, while editing its threshold does not. The ``digest`` of both goes into journals,
summaries, the DICOM SEG's UIDs and algorithm version, the viewer's ``/healthz`` and the
node's audit.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.io.datasets import project_file

#: The shipped lung segmentation bundle (source tree, or where a wheel installed it).
BUNDLE = project_file("bundles/lung_cxr_segmentation")

#: Config ids of ``inference.json`` that cannot change a prediction: locations, devices,
#: loaders of datasets, speed settings and the engine that ``monai.bundle run`` builds.
#: Checkpoints are hashed by content instead of by path.
NOT_PIXELS = frozenset(
    {
        "imports",
        "bundle_root",
        "ckpt_path",
        "ensemble",
        "models",
        "model_files",
        "checkpoints",
        "dataset_dir",
        "output_dir",
        "datalist",
        "device_name",
        "device",
        "amp",
        "batch_size",
        "cpu_micro_batch",
        "num_workers",
        "dataset",
        "dataloader",
        "network",
        "writers",
        "handlers",
        "evaluator",
        "initialize",
        "run",
    }
)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bundle_parser(
    bundle: str | os.PathLike | None,
    device: str = "cpu",
    overrides: dict[str, Any] | None = None,
    config: str = "inference.json",
) -> Any:
    """A bundle's config parser with its root, device and ``overrides`` set.

    Raises:
        FileNotFoundError: the folder has no ``configs/<config>``.
        KeyError: an override names no config id of the file (the unknown ids quoted).
    """
    from monai.bundle import ConfigParser

    bundle = Path(bundle or BUNDLE).resolve()
    path = bundle / "configs" / config
    if not path.is_file():
        raise FileNotFoundError(f"{bundle}: not a bundle (no configs/{config})")
    parser = ConfigParser()
    parser.read_config(str(path))
    unknown = sorted(k for k in overrides or {} if k not in parser)
    if unknown:
        raise KeyError(f"overrides {unknown} are not config ids of {path}")
    parser.update({"bundle_root": str(bundle), "device_name": device, **dict(overrides or {})})
    return parser


def config_sha256(config: dict[str, Any]) -> str:
    """Canonical hash of the ids of a resolved config that change pixels (see module doc)."""
    kept = {k: v for k, v in config.items() if k not in NOT_PIXELS}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ModelIdentity:
    """What produced a result.

    Attributes:
        name: the bundle's name (``metadata.json``).
        version: its version.
        bundle: the folder it was loaded from.
        checkpoints_sha256: SHA-256 of each checkpoint, in the order they run.
        config_sha256: :func:`config_sha256` of the resolved inference config.
        precision: the dtype the network computed in (``precision: auto`` resolves by
            machine: bfloat16 on CPUs with native support, else float32).
        lung_field: the lung field the model outputs (``anatomical`` or ``visible``; also
            in the config hash).
        numerics: how the network's arithmetic departs from its modules' own where that
            changes outputs: ``bfloat16-fused`` (bfloat16 convolutions with their activations
            fused, :mod:`pipeline.networks.fusion`), else empty (fusion in float32 changes
            no output).
    """

    name: str
    version: str
    bundle: str
    checkpoints_sha256: tuple[str, ...]
    config_sha256: str
    precision: str = "float32"
    lung_field: str = "visible"
    numerics: str = ""

    @property
    def digest(self) -> str:
        """One hash of checkpoints, config, precision and numerics: equal digests, equal outputs."""
        parts = [*self.checkpoints_sha256, self.config_sha256, self.precision]
        text = "|".join(parts + ([self.numerics] if self.numerics else []))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def checkpoint_sha256(self) -> str:
        """The first (for a single model, the only) checkpoint's SHA-256."""
        return self.checkpoints_sha256[0]

    def algorithm(self) -> dict[str, str]:
        """``name`` and ``version`` as DICOM SEG/SR record them (version + short digest)."""
        return {
            "name": "lungseg " + self.name,
            "version": f"{self.version or '0'}+{self.digest[:12]}",
        }

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON fields for reports, with ``digest`` and ``checkpoint_sha256``."""
        out = asdict(self)
        out["checkpoints_sha256"] = list(self.checkpoints_sha256)
        return {**out, "checkpoint_sha256": self.checkpoint_sha256, "digest": self.digest}


def bundle_metadata(bundle: Path) -> tuple[str, str]:
    """``(name, version)`` from ``configs/metadata.json`` (the folder name when absent)."""
    path = bundle / "configs" / "metadata.json"
    meta = json.loads(path.read_text()) if path.is_file() else {}
    return meta.get("name", bundle.name), meta.get("version", "")


def identity_of(
    bundle: Path,
    checkpoints: list[Path],
    config: dict[str, Any],
    precision: str = "float32",
    lung_field: str = "visible",
    numerics: str = "",
) -> ModelIdentity:
    """The :class:`ModelIdentity` of a bundle's checkpoints under a resolved config."""
    name, version = bundle_metadata(bundle)
    return ModelIdentity(
        name=name,
        version=version,
        bundle=str(bundle),
        checkpoints_sha256=tuple(file_sha256(p) for p in checkpoints),
        config_sha256=config_sha256(config),
        precision=precision,
        lung_field=lung_field,
        numerics=numerics,
    )
