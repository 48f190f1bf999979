"""What a stage's allocator costs a CPU: each batch's activations freed and faulted in again, against kept.

glibc maps every block above its mmap threshold (32 MB at most) straight from the OS and hands it back when it is
freed, so the next batch's activations come as fresh zeroed pages, one kernel fault per 4 KiB: on 2 cores the full
count's features stage spent 2,093 of its 4,729 CPU seconds in the kernel (docs/results.md). A stage now keeps
what it frees (pipeline/compute/cores.py's ``keep_freed_memory``). This prints, for the features stage's forward
pass and the fine-tuning stage's training step (channels-last, as the stages run them), seconds an image, kernel
seconds an image and page faults an image, with the allocator as glibc leaves it and as a stage sets it, each in
a fresh process, and the ratio: measured in one run, so the machine's speed cancels.

    python bench/allocator.py [--batch 32] [--images 256]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASES = {"features": ("tf_efficientnet_lite0", 224, False), "fine-tuning": ("tf_efficientnet_lite1", 176, True)}

ONE = """
import json, resource, sys, time
import torch
from pipeline.compute.cores import keep_freed_memory
from pipeline.training.backbones import create_backbone

backbone, size, train, batch, images, kept = json.loads(sys.argv[1])
if kept:
    keep_freed_memory()
model = create_backbone(backbone, num_classes=10, pretrained=False).to(memory_format=torch.channels_last)
model.train(train)
inputs = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
labels = torch.randint(0, 10, (batch,))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

def step():
    if train:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    else:
        with torch.inference_mode():
            model(inputs)

for _ in range(2):
    step()
before, start, done = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0
while done < images:
    step()
    done += batch
wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"s": wall / done, "kernel_s": (after.ru_stime - before.ru_stime) / done,
                  "faults": (after.ru_minflt - before.ru_minflt) / done}))
"""


def measure(case: tuple, batch: int, images: int, kept: bool) -> dict:
    backbone, size, train = case
    done = subprocess.run([sys.executable, "-c", ONE, json.dumps([backbone, size, train, batch, images, kept])],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=256, help="images timed per case, after two warm-up batches")
    args = parser.parse_args()
    print(f"batch {args.batch}, {args.images} images a case, each in a fresh process")
    for name, case in CASES.items():
        freed, kept = (measure(case, args.batch, args.images, k) for k in (False, True))
        for label, figures in (("freed (glibc's default)", freed), ("kept (a stage)", kept)):
            print(f"{name:12s} {label:24s} {figures['s']:.4f} s/img, {figures['kernel_s']:.4f} in the kernel, "
                  f"{figures['faults']:.0f} page faults an image")
        print(f"{name:12s} kept / freed: {kept['s'] / freed['s']:.2f}x the time")


if __name__ == "__main__":
    main()
