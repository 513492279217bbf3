"""Speed of the batched training clicks (``sat3d.click_simulation``), which the GPU's training step runs
once per prompt step on every target map of the batch.

Usage::

    python benchmarks/bench_clicks.py                # CPU: 4 maps of 128^3 (a GPU is used when present)
    python benchmarks/bench_clicks.py --maps 40      # GPU: one prompt step of batch 4 x 5 targets (x2 signs)

The maps are smoothed noise above a level: blobs of many sizes, some winding, like a prediction's error
regions.  Printed: the largest face-connected components (time and propagation sweeps) and the border
distance.  Reference, same maps: plain neighbour propagation (the code before the fourteenth session) took
112 sweeps and 133.6 s for 8 maps on one CPU thread (hooking and pointer jumping: 6 sweeps, 15.2 s).
"""

from __future__ import annotations

import argparse

import torch
from bench_model import _time
from sat3d import click_simulation as cs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--maps", type=int, default=4)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(args.maps, 1, args.size, args.size, args.size, generator=g)
    regions = (torch.nn.functional.avg_pool3d(noise, 9, 1, 4)[:, 0] > 0.52).to(device)
    sweeps = [0]
    face_max = cs._face_max

    def counted(x):
        sweeps[0] += 1
        return face_max(x)

    cs._face_max = counted
    try:
        masks, sizes = cs.largest_components(regions)
    finally:
        cs._face_max = face_max
    comp_ms = _time(lambda: cs.largest_components(regions), device, args.repeats, warmup=0)
    dist_ms = _time(lambda: cs.border_distance(masks), device, args.repeats, warmup=0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.maps} maps of {args.size}^3 on {name}; largest components {sizes.min()}-{sizes.max()} voxels")
    print(f"largest components: {comp_ms:10.1f} ms  ({sweeps[0]} sweeps)")
    print(f"border distance:    {dist_ms:10.1f} ms")


if __name__ == "__main__":
    main()
