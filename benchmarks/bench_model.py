"""Speed, size and memory of SAT3D, printed beside the authors' reference figures.

Usage::

    python benchmarks/bench_model.py                 # CPU (and GPU when one is present)
    python benchmarks/bench_model.py --ct-volume     # also: whole 512x512x300 CT, time and peak RAM (CPU, minutes)
    python benchmarks/bench_model.py --no-cpu --gpu-extra [--bf16-only] [--train-step --train-batch 4]
        # GPU: bf16 windows at batch 1/2/4/8, a 512x512x256 volume (overlap 0.5, sw batch 4), torch.profiler
    python benchmarks/bench_model.py --no-cpu --train-step --train-batch 4 --interior-clicks
        # GPU: the training step as the experimental weights' recipe runs it (sat3d_geodesic, interior clicks, 5 targets)

Reference (authors' implementation, random weights): H100 35.9 ms per 128^3 window (fp32), encoder 21 ms,
decoder per click 5 ms, critic 8 ms, 4.3 GiB; batch 4 bf16 23.6 ms per window; 512x512x256 volume 3.86 s;
training step (batch 3, 5 prompt steps) 632 ms and 27.7 GiB; 2-core CPU: encoder 13.7 s per window, 1.8 s per click.
Targets: >= 4x the GPU window throughput (<= 9.0 ms per window), <= 20 ms per click and <= 1 s for the
512x512x256 volume on the GPU, <= 3 s per window and <= 0.5 s per click
on the 2-core CPU, < 8 GiB peak RAM for a 512x512x300 CT.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
from sat3d import build_sat3d
from sat3d.flops import count_gmac

REF = {
    "cuda": {"window_ms": 35.9, "encoder_ms": 21.0, "decoder_click_ms": 5.0, "critic_ms": 8.0, "memory_gib": 4.3},
    "cpu": {"window_ms": None, "encoder_ms": 13700.0, "decoder_click_ms": 1800.0, "critic_ms": None},
}
TARGET = {
    "cuda": {"window_ms": 35.9 / 4},
    "cpu": {"window_ms": 3000.0, "decoder_click_ms": 500.0, "peak_rss_gib": 8.0},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1000.0 * times[len(times) // 2]  # median, ms


def _clicked_windows(device: torch.device, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``batch`` random 128^3 windows with one positive click each: (image, points, labels)."""
    x = torch.randn(batch, 1, 128, 128, 128, device=device)
    pts = torch.tensor([[[64.0, 60.0, 70.0]]], device=device).expand(batch, 1, 3).contiguous()
    return x, pts, torch.ones(batch, 1, dtype=torch.long, device=device)


def bench_device(device: torch.device, repeats: int, dtype: torch.dtype = torch.float32, preset: str = "sat3d_base") -> dict:
    """Time one 128^3 window: encoder, decoder per click (cached embedding), critic and the whole window.

    The per-click time is one step of the preset's click protocol (``sat3d.protocols``): for ``sat3d_paper``
    the authors' protocol with their voxel-wise critic evaluated on the 32^3 grid (eval-mode BatchNorm).
    """
    from sat3d.protocols import get_protocol

    torch.manual_seed(0)
    net = build_sat3d(preset).to(device).eval()
    protocol = get_protocol("paper" if preset == "sat3d_paper" else "sat3d")
    x, pts, lbl = _clicked_windows(device)
    prev = torch.rand(1, 1, 128, 128, 128, device=device)
    res = {}
    ac = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    with torch.inference_mode(), ac:
        emb = net.encode(x)
        res["encoder_ms"] = _time(lambda: net.encode(x), device, repeats)

        state = protocol.initial_state(net, x)
        if protocol.name == "sat3d":
            state.mask_prompt, state.confidence = prev, (prev > 0.5).float()

        def click():
            return protocol.step(net, emb, x, pts, lbl, state)

        res["decoder_only_ms"] = _time(lambda: net.decode(emb, pts, lbl, state.mask_prompt, state.confidence, image=x), device, repeats)
        res["decoder_click_ms"] = _time(click, device, repeats)  # prompt encoder + decoder + critic
        res["critic_ms"] = _time(lambda: net.judge(x, prev), device, repeats)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        res["window_ms"] = _time(lambda: net(x, pts, lbl), device, repeats)
        if device.type == "cuda":
            res["memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return res


def bench_train_step(device: torch.device, batch: int = 3, prompt_steps: int = 5, repeats: int = 3,
                     dtype: torch.dtype = torch.float16, interior_clicks: bool = False) -> dict:
    """Time one min-max training iteration (``batch`` 128^3 crops, 5 prompt steps) and its peak memory.

    On the GPU it runs under autocast with ``dtype`` (the train workflow's ``amp``/``amp_dtype``).  With
    ``interior_clicks`` the crops hold 5 lesion instances and the step runs as the experimental weights were
    trained: preset ``sat3d_geodesic`` (geodesic click maps), ``click_sampling="interior"``,
    ``targets_per_crop=5`` and ``first_click_prob=0.5`` (otherwise ``sat3d_base`` and the paper's protocol:
    one target, uniform error clicks).
    """
    from sat3d.engine import SAT3DTrainer

    torch.manual_seed(0)
    net = build_sat3d("sat3d_geodesic" if interior_clicks else "sat3d_base").to(device)
    lab = torch.zeros(batch, 1, 128, 128, 128)
    lab[:, :, 40:90, 40:90, 40:90] = 1
    recipe = {}
    if interior_clicks:
        for k, c in enumerate((20, 100), start=2):  # four more instances of 10-20 voxels across
            lab[:, :, c - 5:c + 5, c - 10:c + 10, 10:30] = k
            lab[:, :, c - 10:c + 10, 10:30, c - 5:c + 5] = k + 2
        recipe = {"click_sampling": "interior", "targets_per_crop": 5, "first_click_prob": 0.5}
    loader = [{"image": torch.randn(batch, 1, 128, 128, 128), "label": lab}] * (repeats + 1)
    trainer = SAT3DTrainer(
        device=device, max_epochs=1, train_data_loader=loader, network=net,
        optimizer=torch.optim.AdamW(net.generator_parameters(), lr=8e-4, weight_decay=1e-5),
        critic_optimizer=torch.optim.AdamW(net.critic.parameters(), lr=2e-4), num_prompt_steps=prompt_steps,
        amp=device.type == "cuda", amp_kwargs={"dtype": dtype}, decollate=False, **recipe,
    )
    times: list[float] = []
    start: list[float] = []

    def tic(_):
        _sync(device)
        start.append(time.perf_counter())

    def toc(_):
        _sync(device)
        times.append(time.perf_counter() - start[-1])

    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_STARTED, tic)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, toc)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer.run()
    steady = sorted(times[1:])
    out = {"train_step_ms": 1000 * steady[len(steady) // 2]}
    if device.type == "cuda":
        out["train_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def bench_gpu_throughput(device: torch.device, repeats: int, batches=(1, 2, 4, 8)) -> dict:
    """bf16 time per 128^3 window (one click each) at several batch sizes, and the batch-4 encoder per window."""
    torch.manual_seed(0)
    net = build_sat3d("sat3d_base").to(device).eval()
    res: dict = {}
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for b in batches:
            x, pts, lbl = _clicked_windows(device, b)
            torch.cuda.reset_peak_memory_stats(device)
            res[f"window_b{b}_ms"] = _time(lambda x=x, pts=pts, lbl=lbl: net(x, pts, lbl), device, repeats) / b
            res[f"window_b{b}_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            if b == 4:
                res["encoder_b4_ms"] = _time(lambda x=x: net.encode(x), device, repeats) / b
    return res


def bench_gpu_volume(device: torch.device, shape=(512, 512, 256), overlap: float = 0.5, sw_batch_size: int = 4,
                     repeats: int = 2) -> dict:
    """Automatic-mode sliding window over a whole volume on the GPU (bf16), as the benchmark of the authors."""
    from sat3d.inferer import SAT3DInferer

    torch.manual_seed(0)
    net = build_sat3d("sat3d_base").to(device).eval()
    image = torch.randn(1, 1, *shape, device=device)
    inf = SAT3DInferer(roi_size=(128, 128, 128), overlap=overlap, sw_batch_size=sw_batch_size)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        sec = _time(lambda: inf(image, net), device, repeats) / 1000.0
    return {"volume_s": sec, "volume_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}


def profile_window(device: torch.device, batch: int = 4, rows: int = 15) -> str:
    """torch.profiler table (CUDA time) of one bf16 forward of ``batch`` windows with one click each."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    net = build_sat3d("sat3d_base").to(device).eval()
    x, pts, lbl = _clicked_windows(device, batch)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(2):
            net(x, pts, lbl)
        _sync(device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            net(x, pts, lbl)
            _sync(device)
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows)


def bench_ct_volume() -> dict:
    """Whole-volume inference of a 512x512x300 CT in a child process; wall time and peak RSS."""
    code = r"""
import json, resource, time, torch
from monai.data import MetaTensor
from sat3d import build_sat3d
from sat3d.inferer import SAT3DInferer
torch.manual_seed(0)
net = build_sat3d("sat3d_base").eval()
img = MetaTensor(torch.randn(1, 1, 512, 512, 300))
t0 = time.perf_counter()
out = SAT3DInferer(roi_size=(128, 128, 128), overlap=0.25, sw_batch_size=1)(img, net)
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(name: str, value: float | None, ref: float | None, target: float | None, unit: str) -> str:
    v = "n/a" if value is None else f"{value:10.1f} {unit}"
    r = "-" if ref is None else f"{ref:.1f} {unit}"
    t = "-" if target is None else f"{target:.1f} {unit}"
    speed = "" if (value is None or ref is None or unit not in ("ms", "s")) else f"  ({ref / value:.1f}x reference)"
    ok = "" if (value is None or target is None) else ("  MEETS TARGET" if value <= target else "  misses target")
    return f"  {name:<22}{v:>16}   reference {r:<12} target {t:<12}{speed}{ok}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ct-volume", action="store_true", help="also run a 512x512x300 volume on the CPU")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU timings")
    p.add_argument("--train-step", action="store_true",
                   help="also time a training iteration (batch 3, 5 prompt steps; on the CPU this takes minutes)")
    p.add_argument("--train-batch", type=int, default=3, help="batch of the training-step timing (reference: 3)")
    p.add_argument("--interior-clicks", action="store_true",
                   help="training step as the experimental weights were trained (sat3d_geodesic, interior clicks, 5 targets per crop)")
    p.add_argument("--gpu-extra", action="store_true",
                   help="GPU: bf16 window time at batch 1/2/4/8, a 512x512x256 volume (overlap 0.5, sw batch 4) "
                        "and a torch.profiler table of one batch-4 forward")
    p.add_argument("--bf16-only", action="store_true", help="GPU: skip the fp32 timings and the training step")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    p.add_argument("--preset", default="sat3d_base", choices=["sat3d_base", "sat3d_paper"],
                   help="sat3d_paper: the authors' architecture and click protocol (for their converted weights)")
    args = p.parse_args()

    net = build_sat3d(args.preset).eval()
    n_params = sum(t.numel() for t in net.parameters())
    x = torch.randn(1, 1, 128, 128, 128)
    gmac = count_gmac(lambda: net(x, torch.tensor([[[64.0, 60.0, 70.0]]]), torch.tensor([[1]])))
    gmac_enc = count_gmac(lambda: net.encode(x))
    report: dict = {"params_m": n_params / 1e6, "gmac": gmac, "gmac_encoder": gmac_enc}
    print(f"SAT3D {args.preset}: {n_params / 1e6:.2f} M parameters (paper 11.1 M); {gmac:.1f} GMAC per 128^3 crop "
          f"with one click (paper ~67), encoder {gmac_enc:.1f} GMAC")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, cpu count {os.cpu_count()}")

    devices = [] if args.no_cpu else [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    for dev in devices:
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
        ref, tgt = REF[dev.type], TARGET[dev.type]
        res = {}
        if not (dev.type == "cuda" and args.bf16_only):
            res = bench_device(dev, args.repeats if dev.type == "cpu" else max(args.repeats, 20), preset=args.preset)
            print(f"\n{name} (fp32, median of repeats):")
        report[dev.type] = res
        for key, label in [] if not res else [("window_ms", "whole window"), ("encoder_ms", "encoder"),
                           ("decoder_click_ms", "per click (dec+critic)"), ("decoder_only_ms", "decoder only"),
                           ("critic_ms", "critic")]:
            ref_key = "decoder_click_ms" if key == "decoder_only_ms" and dev.type == "cuda" else key
            print(_row(label, res[key], ref.get(ref_key), tgt.get(key), "ms"))
        if dev.type == "cuda" and args.bf16_only:
            print(f"\n{name} (bf16 only, median of repeats):")
        if "memory_gib" in res:
            print(_row("peak GPU memory", res["memory_gib"], ref["memory_gib"], None, "GiB"))
        if args.train_step and not (dev.type == "cuda" and args.bf16_only):
            tr = bench_train_step(dev, batch=args.train_batch, dtype=torch.bfloat16, interior_clicks=args.interior_clicks)
            res.update(tr)
            recipe = " geodesic, interior x5" if args.interior_clicks else ""
            print(_row(f"train step b{args.train_batch} m5 bf16{recipe}", tr["train_step_ms"],
                       632.0 if dev.type == "cuda" and args.train_batch == 3 else None, None, "ms"))
            if "train_memory_gib" in tr:
                print(_row("training peak memory", tr["train_memory_gib"], 27.7, None, "GiB"))
        if dev.type == "cuda":
            bf16 = bench_device(dev, max(args.repeats, 20), torch.bfloat16, preset=args.preset)
            report["cuda_bf16"] = bf16
            print(_row("whole window (bf16)", bf16["window_ms"], ref["window_ms"], tgt["window_ms"], "ms"))
            print(_row("per click (bf16)", bf16["decoder_click_ms"], ref["decoder_click_ms"], 20.0, "ms"))
            if args.gpu_extra:
                thr = bench_gpu_throughput(dev, max(args.repeats, 10))
                report["cuda_bf16_batches"] = thr
                for b in (1, 2, 4, 8):
                    print(_row(f"window bf16, batch {b}", thr[f"window_b{b}_ms"], 23.6 if b == 4 else ref["window_ms"],
                               tgt["window_ms"], "ms") + f"  peak {thr[f'window_b{b}_memory_gib']:.1f} GiB")
                print(_row("encoder bf16, batch 4", thr["encoder_b4_ms"], ref["encoder_ms"], None, "ms"))
                vol = bench_gpu_volume(dev)
                report["cuda_volume_512x512x256"] = vol
                print(_row("512x512x256 volume", vol["volume_s"], 3.86, 1.0, "s")
                      + f"  peak {vol['volume_memory_gib']:.1f} GiB (overlap 0.5, bf16, sw batch 4)")
                print("\ntorch.profiler, one bf16 forward of 4 windows with one click each (CUDA time):")
                print(profile_window(dev))
    if args.ct_volume:
        ct = bench_ct_volume()
        report["ct_512x512x300"] = ct
        print("\n512x512x300 CT, whole-volume sliding window on the CPU (automatic mode):")
        print(_row("wall time", ct["seconds"], None, None, "s"))
        print(_row("peak RAM", ct["peak_rss_gib"], None, TARGET["cpu"]["peak_rss_gib"], "GiB"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
