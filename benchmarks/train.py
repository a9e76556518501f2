"""Training and inference seconds per sample, and peak memory, of the age model at full size.

One random volume at the full grid (224 x 174 x 370 by default; the
authors' stitched grid was 224 x 168 x 363), through the model the workflow
trains (ageatlas.model): float32 on the CPU; bfloat16 autocast and
channels_last_3d on a GPU (the training defaults). Reading the cache is
timed apart from the model (the loading row).

  training s/sample  = (forward + L1 + backward) per sample + one Adam step per
                       batch size x --accumulate samples
  inference s/sample = forward in eval mode under torch.inference_mode, / batch size
  peak memory        = CUDA: max allocated by torch; CPU: the process's peak RSS
  loading s/sample   = one training-cache read (float16 .npy, memory-mapped,
                       warm page cache) to a float32 tensor, on one core: how
                       many DataLoader workers a GPU needs to be kept busy

Each device is measured in a fresh process, so the CPU's peak RSS is its own.
The paper (NVIDIA A40): 2.0 s per training sample (51.33 min per epoch of
1,536) and 0.286 s per inference sample; our goal on an H100: <= 0.1 s and
<= 0.02 s.

    .venv/bin/python benchmarks/train.py                 # the GPU if there is one, else the CPU
    .venv/bin/python benchmarks/train.py --device all    # both
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext

import numpy as np
import torch

from ageatlas.model import build_model
from ageatlas.train import CacheDataset

PAPER = {"training": 2.0, "inference": 0.286}
GOAL_H100 = {"training": 0.1, "inference": 0.02}


def main() -> None:
    args = parse_args()
    if args.device == "all":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device or ("cuda" if torch.cuda.is_available() else "cpu")]
    if args.json:
        print(json.dumps(measure(args, devices[0])))
        return
    for device in devices:
        print_table(in_fresh_process(device))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grid", type=int, nargs=3, default=[224, 174, 370], metavar=("X", "Y", "Z"))
    parser.add_argument(
        "--steps", type=int, help="timed steps per phase (default: 10 on a GPU, 1 on the CPU)"
    )
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 3 on a GPU, 0 on the CPU)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or all (default: cuda if there is one, else cpu)")
    parser.add_argument("--batch-size", type=int, default=1, help="samples per step (the authors: 1)")
    parser.add_argument("--accumulate", type=int, default=32, help="batches per Adam step (the authors: 32)")
    parser.add_argument("--no-bf16", action="store_true", help="float32 on the GPU too")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one device, for the parent
    return parser.parse_args()


def in_fresh_process(device: str) -> dict:
    cmd = [sys.executable, __file__, "--json", "--device", device] + forwarded_options()
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"benchmark on {device} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def forwarded_options() -> list[str]:
    options, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--device":
            skip = True
        elif not arg.startswith("--device="):
            options.append(arg)
    return options


def measure(args: argparse.Namespace, device_name: str) -> dict:
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    steps = args.steps or (10 if cuda else 1)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 0)
    bf16 = cuda and not args.no_bf16
    memory_format = torch.channels_last_3d if cuda and not args.no_channels_last else torch.contiguous_format
    if cuda:
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = build_model().to(device, memory_format=memory_format)
    x = torch.randn(args.batch_size, 1, *args.grid, device=device).contiguous(memory_format=memory_format)
    age = torch.full((args.batch_size,), 63.0, device=device)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else nullcontext

    def infer():
        with torch.inference_mode(), autocast():
            model(x)

    def forward_backward():
        with autocast():
            loss = (model(x).float() - age).abs().mean()
        loss.backward()

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=cuda)
    model.eval()
    reset_peak_memory(device)
    inference = timed(infer, steps, warmup, device) / args.batch_size
    inference_memory = peak_memory(device)
    model.train()
    reset_peak_memory(device)
    training = timed(forward_backward, steps, warmup, device) / args.batch_size
    adam = timed(optimizer.step, steps, warmup, device)
    training_memory = peak_memory(device)
    return {
        "device": describe(device),
        "grid": args.grid,
        "batch_size": args.batch_size,
        "steps": steps,
        "precision": ("bf16 autocast" if bf16 else "float32")
        + (", channels_last_3d" if memory_format == torch.channels_last_3d else ""),
        "training": training + adam / (args.accumulate * args.batch_size),
        "inference": inference,
        "training_memory": training_memory,
        "inference_memory": inference_memory,
        "loading": loading_seconds(args.grid),
    }


def loading_seconds(grid: list[int], repeats: int = 3) -> float:
    """Seconds to read one float16 cache into a float32 tensor, as the training Dataset does."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "cache.npy")
        np.save(path, np.random.default_rng(0).standard_normal(grid, dtype=np.float32).astype(np.float16))
        dataset = CacheDataset([(path, 63.0)])
        dataset[0]  # into the page cache
        started = time.perf_counter()
        for _ in range(repeats):
            dataset[0]
        return (time.perf_counter() - started) / repeats


def timed(step, steps: int, warmup: int, device: torch.device) -> float:
    """Mean seconds of one call of step, after warm-up calls."""
    for _ in range(warmup):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - started) / steps


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> float:
    """GiB: CUDA's peak since the last reset; the CPU's peak RSS of this process so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {torch.get_num_threads()} threads"


def print_table(r: dict) -> None:
    print(
        f"\n{r['device']} | grid {'x'.join(map(str, r['grid']))} | batch {r['batch_size']} | "
        f"{r['precision']} | {r['steps']} timed step(s)"
    )
    print(f"{'phase':<10} {'s/sample':>9} {'peak GiB':>9} {'paper A40':>10} {'goal H100':>10}")
    for phase in ("training", "inference"):
        print(
            f"{phase:<10} {r[phase]:>9.3f} {r[phase + '_memory']:>9.2f} {PAPER[phase]:>10.3f} "
            f"{GOAL_H100[phase]:>10.3f}"
        )
    print(f"{'loading':<10} {r['loading']:>9.4f}  (one cache read to float32, one core, warm page cache)")
    if "threads" in r["device"]:
        print("CPU peak memory is the process's peak RSS, so training's includes inference's.")


if __name__ == "__main__":
    main()
