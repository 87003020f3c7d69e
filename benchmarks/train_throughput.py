"""Training throughput: the full step against forward/backward alone, per network and size.

The full step is what ``lungseg train`` runs: the bundle's ``train#dataset`` (CacheDataset:
decoding, scaling, letterbox, CLAHE and top-hat cached once) and ``train#dataloader`` with
the augmentation applied on the fly, then forward, loss, backward and optimizer step. The
reference is forward/backward/step alone on batches already in memory. The difference is
what the data path costs per image.

    .venv/bin/python benchmarks/train_throughput.py [--networks res_unet ...] [--sizes 256 512]

Prints a Markdown table (images/s) and writes it to ``--out`` as JSON too.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "lung_cxr_segmentation"
NETWORKS = ("res_unet", "basic_unet", "unetpp_efficientnet", "resnet50_unet")


def build(network: str, size: int, batch: int, cases: int) -> dict:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update(
        {"network_name": network, "image_size": size, "batch_size": batch, "max_cases": cases}
    )
    parser.update({"device_name": "cuda" if torch.cuda.is_available() else "cpu"})
    ids = ("train#dataloader", "network", "loss", "optimizer", "device")
    return {i: parser.get_parsed_content(i) for i in ids}


def step(parts: dict, image: torch.Tensor, label: torch.Tensor) -> None:
    net, opt = parts["network"], parts["optimizer"]
    opt.zero_grad(set_to_none=True)
    loss = parts["loss"](net(image), label)
    loss.backward()
    opt.step()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def full_step_rate(parts: dict, iters: int) -> float:
    dev, done, start = parts["device"], 0, None
    while done < iters + 1:
        for batch in parts["train#dataloader"]:
            step(parts, batch["image"].to(dev), batch["label"].to(dev))
            _sync()
            if start is None:  # the first iteration warms up
                start, images = time.perf_counter(), 0
            else:
                images += batch["image"].shape[0]
            done += 1
            if done >= iters + 1:
                break
    return images / (time.perf_counter() - start)


def data_ms_per_image(parts: dict, epochs: int = 3) -> float:
    """Milliseconds per image to iterate the training loader alone (augmentation, collation)."""
    loader = parts["train#dataloader"]
    for _ in loader:  # warm-up
        pass
    start, images = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            images += batch["image"].shape[0]
    return 1000 * (time.perf_counter() - start) / images


def compute_rate(parts: dict, iters: int) -> float:
    dev = parts["device"]
    batch = next(iter(parts["train#dataloader"]))
    image, label = batch["image"].as_tensor().to(dev), batch["label"].as_tensor().to(dev)
    step(parts, image, label)
    _sync()
    start = time.perf_counter()
    for _ in range(iters):
        step(parts, image, label)
    _sync()
    return iters * image.shape[0] / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", nargs="+", default=list(NETWORKS))
    ap.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=6, help="measured iterations (after one warm-up)")
    ap.add_argument("--data-only", action="store_true", help="only time the data loader")
    ap.add_argument("--out", type=Path, default=Path("outputs/benchmarks/train_throughput.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.data_only:
        for size in args.sizes:
            parts = build("res_unet", size, args.batch, cases=64)
            print(json.dumps({"size": size, "data_ms_per_image": data_ms_per_image(parts)}))
        return
    rows = []
    for size in args.sizes:
        for network in args.networks:
            parts = build(network, size, args.batch, cases=args.batch * (args.iters + 1))
            # compute-only is measured before and after the full step and averaged: the
            # machine's speed drifts, and the data cost is their difference
            before = compute_rate(parts, args.iters)
            full = full_step_rate(parts, args.iters)
            compute = (before + compute_rate(parts, args.iters)) / 2
            rows.append(
                {
                    "network": network,
                    "size": size,
                    "full_step": full,
                    "compute_only": compute,
                    "data_cost": 1 - full / compute,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"\nDevice: {device}; batch {args.batch}; images/s\n")
    print("| network | size | full step | forward/backward only | data path cost |")
    print("|---|---|---|---|---|")
    for r in rows:
        cells = [r["network"], f"{r['size']}²", f"{r['full_step']:.2f}", f"{r['compute_only']:.2f}"]
        print("| " + " | ".join([*cells, f"{100 * r['data_cost']:.1f}%"]) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": device, "batch": args.batch, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
