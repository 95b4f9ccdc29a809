"""The PyTorch/torchvision peer: the seed's stack, written plainly; prints one JSON line.

Run by benchmarks/run.py --peer with the interpreter of a virtual environment made from
benchmarks/requirements-peer.txt. Same model family, classes, batch, image size and threads as the
skin_keras side. The frozen recipe is the seed's: torchvision EfficientNetV2 with every layer but
the classifier frozen, SGD (momentum 0.9) with a cosine schedule from lr to lr*lrf, RandomResized
Crop + flip for training, resize for validation, a DataLoader with min(cpus, batch, 8) workers,
validation and best/last weights every epoch.
"""

import argparse
import contextlib
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def precision(args):
    """The context the model runs in: float32, or `torch.autocast("cpu", torch.bfloat16)` with
    --precision=bf16 (PyTorch's mixed precision on CPUs)."""
    if args.precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(model: str, classes: int) -> torch.nn.Module:
    return getattr(torchvision.models, f"efficientnet_v2_{model}")(weights=None,
                                                                  num_classes=classes)


class Folder(Dataset):
    def __init__(self, root, transform, class_names=None):
        root = Path(root)
        self.class_names = class_names or sorted(p.name for p in root.iterdir() if p.is_dir())
        self.items = [(path, label) for label, name in enumerate(self.class_names)
                      for path in sorted((root / name).iterdir())
                      if path.suffix.lower() in IMAGE_SUFFIXES]
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        path, label = self.items[index]
        return self.transform(Image.open(path).convert("RGB")), label


def measure_train(args) -> dict:
    model = build(args.model, args.classes).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.rand(args.batch_size, 3, args.img_size, args.img_size)
    labels = torch.randint(0, args.classes, (args.batch_size,))

    def step():
        optimizer.zero_grad()
        with precision(args):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    steps = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        steps.append(time.perf_counter() - start)
    return {"img_s": args.batch_size / statistics.median(steps), "first_step_s": first}


def eval_transform(size):
    return transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                               transforms.Normalize(MEAN, STD)])


def measure_frozen(args) -> dict:
    """The seed's frozen-backbone recipe for --epochs epochs; run.py times the whole process (each
    epoch's own time is reported too, to project a longer run)."""
    train = Folder(Path(args.data) / "train", transforms.Compose([
        transforms.RandomResizedCrop(args.img_size), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(MEAN, STD)]))
    val = Folder(Path(args.data) / "val", eval_transform(args.img_size), train.class_names)
    workers = min(os.cpu_count(), args.batch_size, 8)
    train_loader = DataLoader(train, args.batch_size, shuffle=True, num_workers=workers)
    val_loader = DataLoader(val, args.batch_size, num_workers=workers)
    model = build(args.model, len(train.class_names))
    for name, parameter in model.named_parameters():
        parameter.requires_grad = "classifier" in name
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01,
                                momentum=0.9, weight_decay=5e-5)
    lrf = 0.001
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: ((1 + math.cos(e * math.pi / args.epochs)) / 2) * (1 - lrf) + lrf)
    best, out, epoch_seconds = -1.0, Path(tempfile.mkdtemp()), []
    for _ in range(args.epochs):
        start = time.perf_counter()
        model.train()
        for images, labels in train_loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
        schedule.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in val_loader:
                correct += int((model(images).argmax(1) == labels).sum())
        accuracy = correct / len(val)
        torch.save(model.state_dict(), out / "last.pth")
        if accuracy > best:
            best = accuracy
            torch.save(model.state_dict(), out / "best.pth")
        epoch_seconds.append(time.perf_counter() - start)
    return {"val_accuracy": best, "train_images": len(train), "val_images": len(val),
            "epoch_seconds": epoch_seconds}


def measure_predict(args) -> dict:
    """Folder inference: PIL decode + resize + normalise in a DataLoader, no_grad forward."""
    paths = sorted(p for folder in args.data.split(",") for p in Path(folder).rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES)

    class Files(Dataset):
        transform = eval_transform(args.img_size)

        def __len__(self):
            return len(paths)

        def __getitem__(self, index):
            return self.transform(Image.open(paths[index]).convert("RGB"))

    loader = DataLoader(Files(), args.batch_size, num_workers=min(os.cpu_count(), 8))
    model = build(args.model, args.classes).eval()

    def run():
        with torch.no_grad(), precision(args):
            return sum(len(model(images)) for images in loader)

    with torch.no_grad(), precision(args):  # Warm-up.
        model(torch.rand(args.batch_size, 3, args.img_size, args.img_size))
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        count = run()
        times.append(time.perf_counter() - start)
    return {"img_s": count / statistics.median(times), "images": count}


def measure_pipeline(args) -> dict:
    train = Folder(Path(args.data), transforms.Compose([
        transforms.RandomResizedCrop(args.img_size), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(MEAN, STD)]))
    loader = DataLoader(train, args.batch_size, shuffle=True,
                        num_workers=min(os.cpu_count(), args.batch_size, 8))
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        count = sum(len(images) for images, _ in loader)
        times.append(time.perf_counter() - start)
    return {"img_s": count / statistics.median(times), "images": count}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["train", "frozen", "predict", "pipeline"])
    parser.add_argument("--model", default="s")
    parser.add_argument("--data")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--precision", choices=["float32", "bf16"], default="float32",
                        help="bf16: torch.autocast on the CPU (train and predict)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"train": measure_train, "frozen": measure_frozen, "predict": measure_predict,
              "pipeline": measure_pipeline}[args.what](args)
    print(json.dumps({**result, "peak_rss_mb": peak_rss_mb(),
                      "versions": {"torch": torch.__version__,
                                   "torchvision": torchvision.__version__,
                                   "python": sys.version.split()[0]}}))


if __name__ == "__main__":
    main()
