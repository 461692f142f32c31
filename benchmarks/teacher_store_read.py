"""What verifying the teacher store's checksums costs on read, with and without, side by side.

Each store entry carries an XXH3-64 checksum of its tensor data (`infosam_hf.teacher_store`), checked on every
read so that flipped bytes are recomputed instead of reused. This fills a store with random
entries of one image's embedding size and reads them all back, alternating verified and
unverified passes (the median of `--rounds` each). The files are in the page cache after the
first pass, so the figures are the CPU cost of a read, where the checksum's share is largest; a
read from a cold disk adds the same disk time to both.

    python benchmarks/teacher_store_read.py                                   # ViT-B at 1024 px: 256x64x64 fp32
    python benchmarks/teacher_store_read.py --shape 256 16 16 --images 200    # the built-in SAM (128 px)

Then the hash alone on one entry's bytes, XXH3-64 (the store's) beside zlib's CRC-32. The last
line printed is `verify_ratio=<verified/unverified>`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import zlib

import torch
import xxhash

from infosam_hf.teacher_store import TeacherEmbeddingStore, format_bytes


def read_all(store: TeacherEmbeddingStore, keys: list[str]) -> float:
    """Seconds per entry to read it and copy it into memory, as the teacher cache does (`_remember`): safetensors
    maps the file, so without the copy an unverified read would not touch the data at all."""
    start = time.perf_counter()
    for key in keys:
        entry = store.get(key)
        if entry is None:
            raise RuntimeError(f"entry {key} did not read back")
        for tensor in entry.values():
            tensor.clone()
    return (time.perf_counter() - start) / len(keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs="+", default=[256, 64, 64], help="one entry's embedding shape")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median is kept")
    parser.add_argument("--bf16", action="store_true", help="entries in bfloat16 (a run trained with --bf16)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as root:
        writer = TeacherEmbeddingStore(root, "b" * 32)
        keys = [f"{i:032x}" for i in range(args.images)]
        for key in keys:
            writer.put(key, {"image_embeddings": torch.randn(*args.shape, generator=generator).to(dtype)})
        stores = {"unverified": TeacherEmbeddingStore(root, "b" * 32, verify=False),
                  "verified": TeacherEmbeddingStore(root, "b" * 32, verify=True)}
        read_all(stores["unverified"], keys)  # warm-up: every file in the page cache
        times = {name: [] for name in stores}
        for _ in range(args.rounds):
            for name, store in stores.items():
                times[name].append(read_all(store, keys))
        entry = writer.disk_bytes() / args.images
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.images} entries of {tuple(args.shape)} {str(dtype).removeprefix('torch.')} "
          f"({format_bytes(entry)} each), median of {args.rounds} rounds, {args.threads} thread(s)")
    print(f"{'read':<12}{'ms/entry':>10}{'MB/s':>10}")
    for name, seconds in median.items():
        print(f"{name:<12}{1e3 * seconds:>10.3f}{entry / seconds / 2**20:>10.0f}")
    # Why XXH3: the hash alone on one entry's bytes (in memory), beside zlib's CRC-32.
    data = torch.randn(*args.shape, generator=generator).to(dtype).view(torch.uint8).numpy().reshape(-1)
    for name, checksum in (("xxh3_64", lambda: xxhash.xxh3_64(data).digest()), ("crc32", lambda: zlib.crc32(data))):
        checksum()
        start = time.perf_counter()
        for _ in range(args.rounds * 4):
            checksum()
        seconds = (time.perf_counter() - start) / (args.rounds * 4)
        print(f"{'hash ' + name:<12}{1e3 * seconds:>10.3f}{data.nbytes / seconds / 2**20:>10.0f}")
    print(f"verify_ratio={median['verified'] / median['unverified']:.3f}")


if __name__ == "__main__":
    main()
