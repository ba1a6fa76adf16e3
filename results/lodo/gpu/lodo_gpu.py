"""One seed of the GPU LODO main table (see run_on_gpu.sh): the other backbone, full/LoRA/QLoRA,
on prepared windows and a given checkpoint, fine-tuned on CUDA; rows to OUT/runs.csv (resumable).

    python results/lodo/gpu/lodo_gpu.py HELD_OUT WINDOWS.npz BACKBONE.safetensors OUT SEED THREADS [DEVICE [EPOCHS [MODES [BACKBONES]]]]

BACKBONES defaults to ``other`` (the given checkpoint); ``none`` is the random-init control, built
on the device from its seed like on the CPU.
"""

import sys
from pathlib import Path

from fedhar.lodo import LodoPlan, run_lodo

if __name__ == "__main__":  # the runs spawn fresh processes, which re-import this file
    held, windows, backbone, out, seed, threads = sys.argv[1:7]
    device = sys.argv[7] if len(sys.argv) > 7 else "cuda"
    epochs = int(sys.argv[8]) if len(sys.argv) > 8 else 20  # fewer only for a smoke test
    modes = tuple(sys.argv[9].split(",")) if len(sys.argv) > 9 else ("lora", "qlora", "full")
    backbones = tuple(sys.argv[10].split(",")) if len(sys.argv) > 10 else ("other",)
    plan = LodoPlan(datasets=(held,), held_out=(held,), backbones=backbones, modes=modes,
                    seeds=(int(seed),), epochs=epochs, threads=int(threads), device=device,
                    backbone_files=(f"{held}={backbone}",), windows_files=(f"{held}={windows}",))
    run_lodo(plan, Path(out), command="python results/lodo/gpu/lodo_gpu.py " + " ".join(sys.argv[1:]))
