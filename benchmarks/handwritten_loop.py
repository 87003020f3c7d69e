"""The baseline a user writes in ten minutes: one file at a time, no lungseg code.

pydicom decodes and applies the Modality and VOI LUTs, the image is inverted for
MONOCHROME1, scaled to its 0.5-99.5 percentiles, resized to the network's input with
Pillow (no letterbox: the benchmark's images are square or nearly), run through the
shipped TorchScript model at batch 1, and the thresholded probability is resized back and
saved as a 0/255 PNG mask. The model runs on ``--device`` (a user with a GPU puts it there;
default: the CPU). Run as a whole process (imports included):

    python benchmarks/handwritten_loop.py [--device cuda] MODEL.ts OUT_DIR FILE...
"""

import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import torch
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut


def main() -> None:
    """Segment the files given on the command line; print images/s of the loop."""
    args = sys.argv[1:]
    device = "cpu"
    if args[0] == "--device":
        device, args = args[1], args[2:]
    model = torch.jit.load(args[0], map_location=device).eval()
    out, files = Path(args[1]), args[2:]
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for name in files:
        ds = pydicom.dcmread(name)
        arr = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float32)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            arr = arr.max() - arr
        lo, hi = np.percentile(arr, (0.5, 99.5))
        arr = np.clip((arr - lo) / max(hi - lo, 1e-6), 0, 1)
        small = np.asarray(Image.fromarray(arr).resize((256, 256), Image.Resampling.BILINEAR))
        with torch.inference_mode():
            batch = torch.from_numpy(small.copy())[None, None].to(device)
            prob = torch.sigmoid(model(batch))[0, 0].cpu().numpy()
        mask = Image.fromarray(prob).resize(arr.shape[::-1], Image.Resampling.BILINEAR)
        png = Image.fromarray(np.where(np.asarray(mask) > 0.5, 255, 0).astype(np.uint8))
        png.save(out / (Path(name).stem + ".png"))
    print(f"loop {len(files) / (time.perf_counter() - start):.3f} img/s", flush=True)


if __name__ == "__main__":
    main()
