"""Carry the train workflow's preprocessed cache to a training machine that does not have the scans.

The train workflow caches every case after its deterministic preprocessing (loaded, reoriented, resampled
to ``spacing``, normalised) in ``--cache_dir``, under a name that MONAI's ``PersistentDataset`` derives from
the datalist entry.  ``pack`` writes those cached volumes into one compressed archive, each cropped to its
label's bounding box plus a margin and its image quantised to 8 bits over the normalised range
``[-clip, clip]`` (steps of ``2 * clip / 255``: 0.04 for the default ``clip`` 5, i.e. 0.04 standard
deviations); labels are kept exactly.  ``unpack`` writes the cache files back under the same names, so the
train workflow on the other machine, given the same datalist entries (``--check_datalist false``: the
files need not exist there), reads them instead of the scans.

Usage::

    # here: run the train workflow once over the data (it fills the cache), then
    python bundle/scripts/pack_cache.py pack DATASET_DIR DATALIST.json CACHE_DIR cache.npz.xz [--margin 48] \\
        [--min_size 128] [--skip_dataset sat3d_phantoms ...]     # DATASET_DIR: the train workflow's --dataset_dir
    # there:
    python bundle/scripts/pack_cache.py unpack cache.npz.xz CACHE_DIR

Cropping keeps everything a crop of ``min_size`` centred on the label needs, not the rest of the scan: the
train workflow's "anywhere" crops then come from near the tumour only.  Entries whose cache file is missing
(not yet seen by the train workflow) or whose label is empty (host scans without a tumour) are reported and
left out.
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import sys
from pathlib import Path

import numpy as np
import torch
from sat3d.atomic import atomic_path


def _hash(item: dict) -> str:
    from monai.data.utils import pickle_hashing

    return pickle_hashing(item).decode("utf-8")


def _crop(label: np.ndarray, margin: int, min_size: int) -> tuple[slice, ...]:
    """The label's bounding box plus ``margin`` voxels, grown to ``min_size`` per axis, inside the volume."""
    nz = np.nonzero(label)
    out = []
    for ax, n in enumerate(label.shape):
        lo, hi = int(nz[ax].min()) - margin, int(nz[ax].max()) + 1 + margin
        if hi - lo < min_size:
            centre = (lo + hi) // 2
            lo, hi = centre - min_size // 2, centre - min_size // 2 + min_size
        out.append(slice(max(lo, 0), min(hi, n)))
    return tuple(out)


def pack(dataset_dir: str, datalist: str, cache_dir: str, output: str, key: str = "training", margin: int = 48, min_size: int = 128,
         clip: float = 5.0, skip_datasets: tuple[str, ...] = ()) -> int:
    """Write the cached cases of ``datalist[key]`` to ``output``; returns the number packed."""
    from sat3d.data import load_datalist

    items = load_datalist(dataset_dir, datalist, key=key, check=False)  # the entries as the train workflow hashes them
    arrays: dict[str, np.ndarray] = {}
    entries = []
    for item in items:
        if item.get("dataset") in skip_datasets:
            continue
        name = _hash(item)
        path = Path(cache_dir) / f"{name}.pt"
        if not path.exists():
            print(f"WARNING {item['image']}: not in the cache {cache_dir} (not seen by the train workflow yet); left out")
            continue
        if _hash(json.loads(json.dumps(item))) != name:
            raise ValueError(f"{item['image']}: its datalist entry does not survive JSON; cannot be packed.")
        cached = torch.load(path, map_location="cpu", weights_only=False)
        image, label = np.asarray(cached["image"])[0], np.asarray(cached["label"])[0]
        if not label.any():
            print(f"WARNING {item['image']}: empty label; left out")
            continue
        if label.min() < 0 or label.max() > 255 or not np.array_equal(label, np.round(label)):
            raise ValueError(f"{item['image']}: label values are not integers in 0..255; cannot be packed.")
        box = _crop(label, margin, min_size)
        k = len(entries)
        arrays[f"image{k}"] = np.round((np.clip(image[box], -clip, clip) + clip) * (255.0 / (2 * clip))).astype(np.uint8)
        arrays[f"label{k}"] = label[box].astype(np.uint8)
        rest = {key_: v for key_, v in cached.items() if key_ not in ("image", "label")}
        entries.append({"item": item, "name": name, "rest": rest, "box": [[s.start, s.stop] for s in box],
                        "shape": list(label.shape)})
        print(f"{item['image']}: {tuple(label.shape)} -> {arrays[f'image{k}'].shape}", flush=True)
    if not entries:
        raise ValueError(f"nothing to pack: no entry of '{key}' in {datalist} is in the cache {cache_dir}.")
    arrays["index"] = np.frombuffer(json.dumps({"clip": clip, "entries": entries}).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with atomic_path(output, overwrite=True) as tmp:
        tmp.write_bytes(lzma.compress(buf.getvalue(), preset=6))
    print(f"packed {len(entries)} cases into {output} ({Path(output).stat().st_size / 1e6:.1f} MB)")
    return len(entries)


def unpack(archive: str, cache_dir: str) -> int:
    """Write the archive's cases into ``cache_dir`` as the train workflow's cache files; returns their number."""
    data = np.load(io.BytesIO(lzma.decompress(Path(archive).read_bytes())))
    index = json.loads(data["index"].tobytes().decode())
    clip = float(index["clip"])
    for k, entry in enumerate(index["entries"]):
        image = data[f"image{k}"].astype(np.float32) * np.float32(2 * clip / 255.0) - np.float32(clip)
        cached = {"image": torch.from_numpy(image)[None], "label": torch.from_numpy(data[f"label{k}"].astype(np.float32))[None],
                  **entry["rest"]}
        with atomic_path(Path(cache_dir) / f"{entry['name']}.pt", overwrite=True) as tmp:
            torch.save(cached, tmp)
    print(f"unpacked {len(index['entries'])} cases into {cache_dir}")
    return len(index["entries"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack", help="cache -> archive")
    a.add_argument("dataset_dir", help="the train workflow's --dataset_dir (the cache names depend on it)")
    a.add_argument("datalist")
    a.add_argument("cache_dir")
    a.add_argument("output")
    a.add_argument("--key", default="training")
    a.add_argument("--margin", type=int, default=48, help="voxels kept around the label's bounding box")
    a.add_argument("--min_size", type=int, default=128, help="voxels kept per axis at least (the training window)")
    a.add_argument("--clip", type=float, default=5.0, help="the normalisation's clip (train.json intensity#clip)")
    a.add_argument("--skip_dataset", action="append", default=[], help="leave out this datalist 'dataset' (repeatable)")
    b = sub.add_parser("unpack", help="archive -> cache")
    b.add_argument("archive")
    b.add_argument("cache_dir")
    args = p.parse_args(argv)
    try:
        if args.cmd == "pack":
            pack(args.dataset_dir, args.datalist, args.cache_dir, args.output, args.key, args.margin, args.min_size, args.clip,
                 tuple(args.skip_dataset))
        else:
            unpack(args.archive, args.cache_dir)
    except (ValueError, OSError) as e:
        sys.exit(f"ERROR {e}")


if __name__ == "__main__":
    main()
