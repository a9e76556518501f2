"""Training and inference seconds per sample, and peak memory, of the 3D age model and the 2.5D
baseline.

Random inputs at full size through the models the workflow trains, built
from their training configs (ageatlas.age.train_config.TrainConfig: the 3D ResNet-18 on
one 224 x 174 x 370 volume, the authors' stitched grid was 224 x 168 x 363;
ageatlas.baseline.model.BaselineConfig: Langner's VGG16-bn on a 2 x 256 x 256
projection): float32 on the CPU; bfloat16 autocast, channels_last(_3d) and
fused Adam on a GPU (the training defaults; --gpu-paths takes them on the CPU
too). Reading an input file is timed apart from the
model (the loading column).

  training s/sample  = (augmentation + forward + loss + backward) per sample + one
                       Adam step per batch size x accumulate samples
                       (3D: batch 1 x 32 accumulated; 2.5D: batch 32 with
                       translations up to 16 pixels, one step per batch)
  inference s/sample = forward in eval mode under torch.inference_mode, / batch size
  min/epoch          = training s/sample x the paper's training set of that model
                       (3D 1,536, 2.5D 18,384), validation not included
  peak memory        = CUDA: max allocated by torch; CPU: the process's peak RSS
  loading s/sample   = one input read (float16 .npy, memory-mapped, warm page
                       cache) to a float32 tensor, on one core: how many
                       DataLoader workers a GPU needs to be kept busy

Each device and model is measured in a fresh process, so the CPU's peak RSS
is its own. The paper (NVIDIA A40): 3D 51.33 min per epoch of 1,536 (2.0 s
per training sample) and 0.286 s per inference sample; 2.5D 1.88 min per
epoch of 18,384 (0.0061 s) and 0.024 s. Our goal for the 3D model on an
H100: <= 0.1 s and <= 0.02 s.

    .venv/bin/python benchmarks/train.py                 # both models, the GPU if there is one,
                                                         # else the CPU
    .venv/bin/python benchmarks/train.py --device all    # both devices
    .venv/bin/python benchmarks/train.py --model 2.5d    # one model
    .venv/bin/python benchmarks/train.py --save rec.json # also a record for benchmarks/sizing.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import cluster_sizing as sizing
import numpy as np
import torch

from ageatlas.age.train_config import TrainConfig
from ageatlas.baseline.model import BaselineConfig

# Per model: its training config, the paper's training set and its A40 seconds per sample.
MODELS = {
    "3d": {
        "config": TrainConfig,
        "paper_samples": 1536,
        "paper": {"training": 51.33 * 60 / 1536, "inference": 0.286},
    },
    "2.5d": {
        "config": BaselineConfig,
        "paper_samples": 18384,
        "paper": {"training": 1.88 * 60 / 18384, "inference": 0.024},
    },
}
GOAL_H100 = {"training": 0.1, "inference": 0.02}  # the 3D model


def main() -> None:
    args = parse_args()
    if args.device == "all":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device or ("cuda" if torch.cuda.is_available() else "cpu")]
    models = list(MODELS) if args.model == "all" else [args.model]
    if args.json:
        print(json.dumps(measure(args, devices[0], models[0])))
        return
    rows = [in_fresh_process(device, model) for device in devices for model in models]
    print_table(rows)
    if args.save:
        record = sizing.make_record("train", {"rows": rows}, data="random inputs at full size")
        sizing.save_record(args.save, record)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", choices=[*MODELS, "all"], default="all", help="3d, 2.5d or all (default)"
    )
    parser.add_argument(
        "--grid", type=int, nargs=3, default=[224, 174, 370], metavar=("X", "Y", "Z")
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=[256, 256],
        metavar=("H", "W"),
        help="2.5D projection size (Langner: 256 x 256)",
    )
    parser.add_argument(
        "--steps", type=int, help="timed steps per phase (default: 10 on a GPU, 1 on the CPU)"
    )
    parser.add_argument(
        "--warmup", type=int, help="untimed steps first (default: 3 on a GPU, 0 on the CPU)"
    )
    parser.add_argument(
        "--device", help="cpu, cuda, cuda:N or all (default: cuda if there is one, else cpu)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="samples per step (default: the model's config, 3D 1, 2.5D 32)",
    )
    parser.add_argument(
        "--accumulate",
        type=int,
        help="batches per Adam step (default: the model's config, 3D 32, 2.5D 1)",
    )
    parser.add_argument("--no-bf16", action="store_true", help="float32 on the GPU too")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument(
        "--gpu-paths",
        action="store_true",
        help="the GPU's paths on the CPU too (bf16 autocast, channels_last, fused Adam)",
    )
    parser.add_argument(
        "--save", help="write the rows here as JSON (a record for benchmarks/sizing.py)"
    )
    parser.add_argument(
        "--json", action="store_true", help=argparse.SUPPRESS
    )  # one device, for the parent
    return parser.parse_args()


def in_fresh_process(device: str, model: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--json",
        "--device",
        device,
        "--model",
        model,
    ] + forwarded_options()
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"benchmark on {device} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def forwarded_options() -> list[str]:
    options, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg in ("--device", "--model", "--save"):
            skip = True
        elif not arg.startswith(("--device=", "--model=", "--save=")):
            options.append(arg)
    return options


def measure(args: argparse.Namespace, device_name: str, model_name: str) -> dict:
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    steps = args.steps or (10 if cuda else 1)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 0)
    config = MODELS[model_name]["config"](
        bf16=not args.no_bf16, channels_last=not args.no_channels_last
    )
    paths = config.fast_paths(device, True if args.gpu_paths else None)  # as training takes them
    batch_size = args.batch_size or config.batch_size
    accumulate = args.accumulate or config.accumulate
    memory_format = paths.memory_format
    if cuda:
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = config.build_model().to(device, memory_format=memory_format)
    shape = (1, *args.grid) if model_name == "3d" else (2, *args.size)
    x = torch.randn(batch_size, *shape, device=device).contiguous(memory_format=memory_format)
    age = torch.full((batch_size,), 63.0, device=device)
    generator = torch.Generator().manual_seed(0)
    autocast = paths.autocast

    def infer():
        with torch.inference_mode(), autocast():
            model(x)

    def forward_backward():
        batch = config.augment(x, generator).contiguous(memory_format=memory_format)
        with autocast():
            loss = config.sample_loss(model(batch).float() - age).mean()
        loss.backward()

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=paths.fused_adam)
    model.eval()
    reset_peak_memory(device)
    inference = timed(infer, steps, warmup, device) / batch_size
    inference_memory = peak_memory(device)
    model.train()
    reset_peak_memory(device)
    training = timed(forward_backward, steps, warmup, device) / batch_size
    adam = timed(optimizer.step, steps, warmup, device)
    training_memory = peak_memory(device)
    return {
        "model": model_name,
        "device": describe(device),
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "input": "x".join(map(str, shape)),
        "batch": f"{batch_size} x {accumulate}" if accumulate > 1 else str(batch_size),
        "steps": steps,
        "precision": paths.describe(),
        "training": training + adam / (accumulate * batch_size),
        "inference": inference,
        "training_memory": training_memory,
        "inference_memory": inference_memory,
        "loading": loading_seconds(config, shape if model_name != "3d" else args.grid),
    }


def loading_seconds(config: TrainConfig, shape, repeats: int = 3) -> float:
    """Seconds to read one float16 input file into a float32 tensor, as the training Dataset
    does."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "input.npy")
        np.save(
            path,
            np.random.default_rng(0).standard_normal(shape, dtype=np.float32).astype(np.float16),
        )
        dataset = config.dataset([(path, 63.0)])
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
    return f"{sizing.cpu_name()}, {torch.get_num_threads()} threads"


def print_table(rows: list[dict]) -> None:
    """One row per device and model: seconds per sample beside the paper's (NVIDIA A40)."""
    print(
        f"\n{'model':<5} {'device':<34} {'input':<12} {'batch':<7} {'train s':>9} {'min/epoch':>9} "
        f"{'infer s':>9} {'peak GiB':>15} {'loading s':>9} | "
        f"{'paper train s':>13} {'min/epoch':>9} {'infer s':>7}"
    )
    for r in rows:
        spec = MODELS[r["model"]]
        paper = spec["paper"]
        print(
            f"{r['model']:<5} {r['device'][:34]:<34} {r['input']:<12} {r['batch']:<7} "
            f"{r['training']:>9.4f} "
            f"{r['training'] * spec['paper_samples'] / 60:>9.2f} {r['inference']:>9.4f} "
            f"{r['training_memory']:>6.2f} / {r['inference_memory']:<6.2f} {r['loading']:>9.4f} | "
            f"{paper['training']:>13.4f} {paper['training'] * spec['paper_samples'] / 60:>9.2f} "
            f"{paper['inference']:>7.3f}"
        )
    print(
        "min/epoch: training s/sample x the paper's training set (3D 1,536; 2.5D 18,384); "
        "peak GiB: training / inference"
    )
    print(
        f"precision: "
        f"{'; '.join(sorted({r['device'][:20] + ': ' + r['precision'] for r in rows}))}; "
        f"timed steps: {rows[0]['steps']}. Goal for the 3D model on an H100: "
        f"{GOAL_H100['training']} s and {GOAL_H100['inference']} s."
    )
    if any("threads" in r["device"] for r in rows):
        print("CPU peak memory is the process's peak RSS, so training's includes inference's.")


if __name__ == "__main__":
    main()
