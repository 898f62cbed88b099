"""Images/s of the ImageNet config's input pipeline, against DataLoader workers and options.

The script writes a JPEG ImageFolder (photograph-like content at ImageNet's sizes) to a
temporary folder, builds the dataset exactly as `data=imagenet` does (ImageFolder, PIL
decode, RandomResizedCrop(224), flip, ToTensor, Normalize) and the training loader exactly as
a run does (`learnsparse.engine.loaders.build_loaders`: shuffled order, per-sample seeds),
times each stage of one image (decode, crop and flip, to tensor), then iterates epochs of
it with every setting in turn, interleaved round by round, so that
load on the machine hits all settings alike. Round 0 is a warm-up (page cache, first worker
pool) and is dropped; the figures are medians over the other rounds.

Per setting it prints images/s over whole epochs (what a trainer sees: worker start-up
included), images/s once the first batch is out (steady state), and the time to the first
batch (the start-up alone). On a CUDA machine each batch is also copied to the GPU, as the
trainer does (`non_blocking=True`), and `pin_memory` is measured on and off; without CUDA
pinning does nothing and is not measured.

    python scripts/bench_dataloader.py [--images 2048] [--epoch-images 256] [--batch 32]
                                       [--workers 0 1 2] [--rounds 4] [--threads 1]
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from learnsparse.core.config_dir import compose
from learnsparse.core.distributed import DistEnv
from learnsparse.engine.loaders import build_loaders


def photo_like(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """A smooth colour field with fine grain: it compresses like a photograph (~80 KB at
    500x375, quality 90), where pure noise would be 3-4x larger and slower to decode."""
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC)).astype(np.int16)
    img += rng.normal(0, 12, img.shape).astype(np.int16)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_image_folder(root: Path, images: int, classes: int = 10, distinct: int = 64) -> dict:
    """`images` JPEG files in train/<class>/ (and a few in val/, which the builder requires).
    `distinct` encoded images are cycled through the files: decoding costs the same, and
    writing a few thousand files takes seconds instead of minutes."""
    rng = np.random.default_rng(0)
    # ImageNet's typical shapes (most of its images are 500 px on the long side).
    shapes = [(375, 500), (333, 500), (500, 375), (500, 500), (281, 500), (400, 300)]
    encoded = []
    for i in range(distinct):
        buf = io.BytesIO()
        photo_like(rng, *shapes[i % len(shapes)]).save(buf, "JPEG", quality=90)
        encoded.append(buf.getvalue())
    for split, n in (("train", images), ("val", classes)):
        for c in range(classes):
            (root / split / f"n{c:08d}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / split / f"n{i % classes:08d}" / f"{i:06d}.JPEG").write_bytes(encoded[i % distinct])
    return {"files": images, "mean_kb": statistics.mean(len(b) for b in encoded) / 1e3}


def stage_costs(root: Path, images: int = 32, runs: int = 21) -> dict:
    """Milliseconds per image of each stage of the ImageNet training transform (one thread),
    median of `runs` passes over `images` files."""
    from torchvision import transforms as T

    from learnsparse.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    files = sorted((root / "train").rglob("*.JPEG"))[:images]
    crop = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip()])
    tail = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    decoded = [Image.open(f).convert("RGB") for f in files]
    cropped = [crop(im) for im in decoded]
    stages = {"decode (PIL)": lambda: [Image.open(f).convert("RGB") for f in files],
              "RandomResizedCrop + flip": lambda: [crop(im) for im in decoded],
              "ToTensor + Normalize": lambda: [tail(im) for im in cropped]}
    out = {}
    for name, fn in stages.items():
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) / len(files) * 1e3)
        out[name] = statistics.median(times)
    return out


def settings(workers: list[int], cuda: bool) -> list[dict]:
    out = []
    for w in workers:
        variants = [dict(persistent_workers=False, prefetch_factor=None)] if w == 0 else [
            dict(persistent_workers=False, prefetch_factor=None),
            dict(persistent_workers=True, prefetch_factor=None),
            dict(persistent_workers=True, prefetch_factor=4)]
        for v in variants:
            for pin in ((False, True) if cuda else (False,)):
                out.append(dict(num_workers=w, pin_memory=pin, **v))
    return out


def label(s: dict) -> str:
    if s["num_workers"] == 0:
        text = "workers=0"
    else:
        text = f"workers={s['num_workers']} persistent={'yes' if s['persistent_workers'] else 'no'} " \
               f"prefetch={s['prefetch_factor'] or 2}"
    return text + (f" pin={'yes' if s['pin_memory'] else 'no'}" if torch.cuda.is_available() else "")


def run_epoch(loader, generator, epoch: int, device: torch.device) -> tuple[float, float, int]:
    """(seconds for the epoch, seconds to the first batch, images), as the trainer iterates."""
    generator.manual_seed(epoch)
    loader.sampler.set_epoch(epoch)
    t0 = time.perf_counter()
    first, seen = None, 0
    for images, targets in loader:
        if device.type == "cuda":
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
        seen += len(targets)
        if first is None:
            first = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, first, seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2048, help="JPEG files written")
    ap.add_argument("--epoch-images", type=int, default=256, help="images per timed epoch (a subset of the files)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=4, help="timed rounds after one warm-up round")
    # One thread, as torch gives each DataLoader worker: workers=0 then compares per core. (With
    # 2 threads on a loaded 2-core machine, ToTensor/Normalize spent 15x longer in OpenMP's
    # barriers: 190 ms per image against 12.)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    ap.add_argument("--stage-runs", type=int, default=21, help="passes per stage of the per-image timing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")

    with tempfile.TemporaryDirectory(prefix="bench_dataloader_") as tmp:
        t = time.perf_counter()
        facts = write_image_folder(Path(tmp), args.images)
        print(f"wrote {facts['files']} JPEGs ({facts['mean_kb']:.0f} KB on average) in {time.perf_counter() - t:.1f} s")
        costs = stage_costs(Path(tmp), runs=args.stage_runs)
        total = sum(costs.values())
        print("per image, one thread: " + ", ".join(f"{k} {v:.1f} ms" for k, v in costs.items())
              + f"; {total:.1f} ms in all = {1e3 / total:.0f} images/s per core")
        cfg = compose(["data=imagenet", f"data.root={tmp}"])
        from hydra.utils import instantiate

        bundle = instantiate(cfg.data.dataset)
        # A timed epoch is a spread of the files across all classes: short epochs keep the whole
        # grid within minutes, and worker start-up weighs on a short epoch as on a CIFAR one.
        spread = np.random.default_rng(0).choice(len(bundle.train), args.epoch_images, replace=False)
        bundle.train = torch.utils.data.Subset(bundle.train, spread.tolist())
        loaders = []
        for s in settings(args.workers, device.type == "cuda"):
            train, _, generator = build_loaders(bundle, batch_size=args.batch, eval_batch_size=args.batch,
                                                num_workers=s["num_workers"], pin_memory=s["pin_memory"],
                                                device=device, dist_env=DistEnv(), seed=0,
                                                persistent_workers=s["persistent_workers"],
                                                prefetch_factor=s["prefetch_factor"])
            loaders.append((s, train, generator))
        results = {label(s): [] for s, _, _ in loaders}
        t = time.perf_counter()
        for r in range(args.rounds + 1):
            for s, loader, generator in loaders:
                timing = run_epoch(loader, generator, r, device)
                if r > 0:
                    results[label(s)].append(timing)
        print(f"{len(loaders)} settings x (1 warm-up + {args.rounds} timed rounds) of {args.epoch_images} images "
              f"(batch {args.batch}) in {time.perf_counter() - t:.0f} s on {device}, "
              f"{os.cpu_count()} CPUs, main process {args.threads} threads\n")

    base = None
    print("| setting | images/s (epoch) | vs workers=0 | images/s after 1st batch | 1st batch (s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, timings in results.items():
        epoch = statistics.median(n / total for total, _, n in timings)
        steady = statistics.median((n - args.batch) / max(total - first, 1e-9) for total, first, n in timings)
        first = statistics.median(first for _, first, _ in timings)
        base = base or epoch
        print(f"| {name} | {epoch:.0f} | {epoch / base:.2f}x | {steady:.0f} | {first:.2f} |")


if __name__ == "__main__":
    main()
