"""A kit to run the throughput benchmark on a GPU machine lent by the workplace's device tool.

That machine has Python 3.12 with PyTorch on CUDA, numpy, SciPy, scikit-image and Pillow,
but no package index, no lungseg dependencies beyond those and none of the shared data;
it gets a copy of the working tree and the ignored folders a call carries (64 MiB in all).
``prepare`` (run here) fills one ignored folder with what it lacks:

- wheels, for CPython 3.12 on manylinux x86-64, of the packages ``lungseg segment`` needs
  there (MONAI, pydicom, highdicom and its JPEG-LS codec, the pylibjpeg decoders, ISA-L,
  nibabel), at the versions installed here, so the job runs the same code;
- the first ``--images`` radiographs of the shared set, from which the benchmark builds its
  DICOM folders (the folder is ignored by git: the images are never committed).

The tracked tree alone is over the 64 MiB a call carries (the visible-lung and TB bundles'
weights, ~52 MiB, which the benchmark does not use): ``aside`` moves those files into the
ignored, uncarried ``.gpu-aside/`` for the device calls, ``back`` returns them (do not commit
in between: git sees them deleted). ``prepare`` reports what would travel.

``command`` prints the device command for that folder: it installs the wheels into
``/tmp/site`` and runs ``segment_throughput.py`` on CUDA (512² and 2048² JPEG 2000; N =
100 with the hand-written loop on the GPU too, and N = 500), its JSON written to ``$OUT``.
The same command runs here with ``--local`` (no wheels: this machine's environment, on the
CPU), which is how the kit is tested.

    .venv/bin/python benchmarks/device_kit.py prepare [--kit .gpu] [--images 40]
    .venv/bin/python benchmarks/device_kit.py aside      # before the device calls
    .venv/bin/python benchmarks/device_kit.py command [--kit .gpu] [--local]
    .venv/bin/python benchmarks/device_kit.py back       # after them
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segment_throughput import ROOT

#: What ``lungseg segment`` imports that the device's Python lacks (its other needs, torch,
#: numpy, SciPy, scikit-image, Pillow, PyYAML, tqdm and packaging, are there).
WHEELS = (
    "monai",
    "pydicom",
    "highdicom",
    "pyjpegls",
    "pylibjpeg",
    "pylibjpeg-openjpeg",
    "pylibjpeg-libjpeg",
    "pylibjpeg-rle",
    "isal",
    "nibabel",
    "importlib-resources",
)
#: pip's platform tags for the device (CPython 3.12, manylinux x86-64; its Python 3.12.3
#: suggests glibc 2.39). pylibjpeg-libjpeg 2.5.0 has manylinux_2_31/_34 wheels only.
PLATFORMS = (
    "manylinux_2_39_x86_64",
    "manylinux_2_35_x86_64",
    "manylinux_2_34_x86_64",
    "manylinux_2_31_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
#: The device's limit on what a call carries, the working tree included.
CARRY_LIMIT = 64 * 2**20
#: Tracked files the benchmark does not need, moved out of the tree for device calls.
ASIDE = (
    "bundles/lung_cxr_segmentation/models/visible",
    "bundles/tb_cxr_classification/models",
)
ASIDE_DIR = ROOT / ".gpu-aside"


def travelling_bytes(kit: Path) -> int:
    """Bytes a device call would carry: the tracked and untracked-not-ignored files, ``kit``."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    files = [ROOT / name.decode() for name in listed if name]
    files += [p for p in kit.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files if p.is_file())


def move_aside(back: bool = False) -> None:
    """Move :data:`ASIDE` into :data:`ASIDE_DIR` (or ``back`` into the tree)."""
    for name in ASIDE:
        source, target = ROOT / name, ASIDE_DIR / name
        if back:
            source, target = target, source
        if source.exists():
            if target.exists():
                raise SystemExit(f"{target} exists: move {source} by hand")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
            print(f"{source} -> {target}")


def download_wheels(folder: Path) -> list[Path]:
    """Wheels of :data:`WHEELS` at this environment's versions, for the device, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={version(name)}" for name in WHEELS]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", "3.12", "--implementation", "cp", "-d", str(folder)]
    for tag in PLATFORMS:
        cmd += ["--platform", tag]
    subprocess.run([*cmd, *pins], check=True)
    return sorted(folder.glob("*.whl"))


def copy_images(folder: Path, count: int) -> list[Path]:
    """The first ``count`` images of the shared set (sorted by name) under ``folder/images``."""
    from pipeline.io.datasets import default_data_dir

    source = default_data_dir() / "images"
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir())[:count]:
        shutil.copy2(path, images / path.name)
    return sorted(images.iterdir())


def prepare(kit: Path, images: int) -> None:
    """Fill ``kit`` (wheels, images) and check it fits what the device carries."""
    wheels = download_wheels(kit / "wheels")
    copied = copy_images(kit / "data", images)
    size = sum(p.stat().st_size for p in kit.rglob("*") if p.is_file())
    total = travelling_bytes(kit)
    print(f"{kit}: {len(wheels)} wheels, {len(copied)} images, {size / 2**20:.1f} MiB")
    print(f"a call carrying it would send {total / 2**20:.1f} MiB (limit 64)", end="")
    print("" if total <= CARRY_LIMIT else ": run `aside` first")


def command(kit: Path, local: bool) -> str:
    """The shell command that runs the benchmark with ``kit`` (see the module docstring)."""
    out = "${OUT:-outputs/device-kit}"
    setup = (
        ""
        if local
        else (
            f"python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "
            f"{kit}/wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1; nvidia-smi; "
        )
    )
    python = ".venv/bin/python" if local else "python3"
    device = "cpu" if local else "cuda"
    bench = (
        f"{python} benchmarks/segment_throughput.py --device {device} --inputs 512 2048-j2k "
        f"--distinct 40 --work /tmp/lungseg-bench"
    )
    return (
        f"{setup}mkdir -p {out} && export LUNGSEG_DATA=$PWD/{kit}/data PYTHONUNBUFFERED=1 && "
        f"{bench} --counts 100 --out {out}/gpu-100.json && "
        f"{bench} --counts 500 --out {out}/gpu-500.json"
    )


def main() -> None:
    """``prepare``, ``aside``, ``command`` or ``back``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["prepare", "aside", "command", "back"])
    parser.add_argument("--kit", type=Path, default=Path(".gpu"), help="relative to the root")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--local", action="store_true", help="the command for this machine")
    args = parser.parse_args()
    if args.action == "prepare":
        prepare(ROOT / args.kit, args.images)
    elif args.action in ("aside", "back"):
        move_aside(back=args.action == "back")
        print(f"a call would now send {travelling_bytes(ROOT / args.kit) / 2**20:.1f} MiB")
    else:
        print(command(args.kit, args.local))


if __name__ == "__main__":
    main()
