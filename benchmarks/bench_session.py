"""Latency per click of the interactive session (cached embeddings), beside the authors' reference.

Usage: ``python benchmarks/bench_session.py [--clicks 5] [--shape 128 128 128] [--shape 256 256 160]
[--preset sat3d_base|sat3d_paper] [--inferer]``

``--preset sat3d_paper`` runs the authors' architecture with their protocol (current click only, per-window
z-normalisation, voxel-wise critic on the 32^3 grid); it has no automatic pass, so the first click also
encodes its windows.  ``--inferer`` times each click through ``SAT3DInferer`` with its session cache (the
MONAI Label path without file I/O and resampling): every call sends all clicks so far.

Reference (authors' code, random weights): 1.8 s per click on a 2-core CPU; decoder 5 ms per click on an
H100.  Target: <= 0.5 s per click on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import time

import torch
from sat3d import build_sat3d
from sat3d.inferer import SAT3DInferer
from sat3d.paper_preprocessing import zscore_positive
from sat3d.session import InteractiveSession

REF = {"cpu": 1800.0, "cuda": 5.0}
TARGET = {"cpu": 500.0, "cuda": None}


def bench_inferer(device: torch.device, shape: tuple[int, int, int], clicks: int, preset: str) -> dict:
    torch.manual_seed(0)
    net = build_sat3d(preset).to(device).eval()
    paper = preset == "sat3d_paper"
    inf = SAT3DInferer(roi_size=net.roi_size, cache_size=2, protocol="paper" if paper else "sat3d",
                       window_intensity=zscore_positive if paper else None)
    image = torch.randn(1, 1, *shape, device=device)
    t0 = time.perf_counter()
    inf(image, net)
    first = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(1)
    pts, lbl, times = [], [], []
    for k in range(clicks):
        pts.append([int(torch.randint(s, (1,), generator=gen)) for s in shape])
        lbl.append(1 if k % 3 != 2 else 0)
        t = time.perf_counter()
        inf(image, net, points=pts, point_labels=lbl)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        assert inf.last_cache_use == "extended"
    times.sort()
    return {"windows": 0, "set_image_and_auto_s": first, "click_ms_median": 1000 * times[len(times) // 2],
            "click_ms_max": 1000 * times[-1], "windows_per_click": float("nan")}


def bench(device: torch.device, shape: tuple[int, int, int], clicks: int, preset: str = "sat3d_base") -> dict:
    torch.manual_seed(0)
    net = build_sat3d(preset)
    paper = preset == "sat3d_paper"
    session = InteractiveSession(net, device=device, protocol="paper" if paper else "sat3d",
                                 window_intensity=zscore_positive if paper else None)
    image = torch.randn(1, *shape)
    t0 = time.perf_counter()
    session.set_image(image)
    _ = session.mask  # automatic pass: every window encoded once
    if device.type == "cuda":
        torch.cuda.synchronize()
    first = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(1)
    times, windows = [], []
    for k in range(clicks):
        c = [int(torch.randint(s, (1,), generator=gen)) for s in shape]
        calls = session.decoder_calls
        t = time.perf_counter()
        session.add_click(c, positive=k % 3 != 2)
        _ = session.mask
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        windows.append(session.decoder_calls - calls)
    times.sort()
    return {"windows": len(session.windows), "set_image_and_auto_s": first, "click_ms_median": 1000 * times[len(times) // 2],
            "click_ms_max": 1000 * times[-1], "windows_per_click": sum(windows) / len(windows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clicks", type=int, default=5)
    p.add_argument("--shape", type=int, nargs=3, action="append", help="volume size (repeatable)")
    p.add_argument("--preset", default="sat3d_base", choices=["sat3d_base", "sat3d_paper"])
    p.add_argument("--inferer", action="store_true", help="time clicks through SAT3DInferer's session cache")
    args = p.parse_args()
    shapes = [tuple(s) for s in (args.shape or [(128, 128, 128), (256, 256, 160)])]
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for dev in devices:
        for shape in shapes:
            r = (bench_inferer if args.inferer else bench)(dev, shape, args.clicks, args.preset)
            ref, tgt = REF[dev.type], TARGET[dev.type]
            verdict = "" if tgt is None else ("MEETS TARGET" if r["click_ms_median"] <= tgt else "misses target")
            print(f"{args.preset}{' via SAT3DInferer' if args.inferer else ''} {dev.type} {shape}: {r['windows']} windows; set_image + automatic pass {r['set_image_and_auto_s']:.1f} s; "
                  f"per click (after the first pass) median {r['click_ms_median']:.0f} ms, max {r['click_ms_max']:.0f} ms, "
                  f"{r['windows_per_click']:.1f} windows re-decoded per click | reference {ref:.0f} ms"
                  + (f", target {tgt:.0f} ms {verdict}" if tgt else ""))


if __name__ == "__main__":
    main()
