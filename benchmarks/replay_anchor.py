"""How well a memory set keeps its classes while a learner trains on other classes beside it.

One replay step of split-cifar10 in isolation: a learner trains on the real images of the
set's classes (as in their own experience), then on the real images of `--new-classes`
with `--mem-batch` samples of the set appended to every minibatch (as `ccl run`'s replay
does). Printed per set: test accuracy on the set's classes ("old") and on the new
classes, and the learner's loss on the memory samples over the last 20 steps. A set the
learner fits with a low loss but whose classes' test images it then gives to the new
classes is a weak anchor, however well it does when a network trains on it alone.

    python benchmarks/replay_anchor.py --data-dir DIR SET.pt [SET.pt ...] [--seeds 0,1,2]

Make the sets with `ccl condense --classes 4,6 --ipc 50 --train-per-class 1000 ...`.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from ccl.condense import dsa
from ccl.condense.evaluate import accuracy
from ccl.data import load_dataset
from ccl.models import build_learner
from ccl.experiment import RunConfig

RUN = RunConfig()  # `ccl run`'s learner optimiser and batch sizes


def train_steps(net, optimizer, images, labels, epochs, batch, memory=None, mem_batch=0, augment=None):
    """SGD over (images, labels); returns the memory loss of every step (empty without memory).
    `augment`: DSA settings applied to each memory sample (a fresh draw per sample)."""
    memory_losses = []
    for _ in range(epochs):
        for idx in torch.randperm(len(labels)).split(batch):
            x, y = images[idx], labels[idx]
            if memory is not None:
                pick = torch.randint(len(memory[1]), (mem_batch,))
                replayed = memory[0][pick] if augment is None else dsa.augment(memory[0][pick], augment)
                x, y = torch.cat([x, replayed]), torch.cat([y, memory[1][pick]])
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if memory is not None:
                memory_losses.append(float(F.cross_entropy(logits[len(idx):], y[len(idx):]).detach()))
    return memory_losses


def anchor(set_file: str, data, new_classes: list[int], args) -> np.ndarray:
    """(seeds, 3) rows of old-class accuracy, new-class accuracy, final memory loss."""
    saved = torch.load(set_file, weights_only=True, map_location="cpu")  # tensors and plain types only
    memory = (saved["images"].float(), saved["labels"].long())
    old_classes = sorted(memory[1].unique().tolist())
    if set(old_classes) & set(new_classes):
        raise SystemExit(f"{set_file}: its classes {old_classes} overlap --new-classes {new_classes}")
    train_y, test_y = torch.from_numpy(data.train_y).long(), torch.from_numpy(data.test_y).long()

    def real(classes, x, y):
        keep = torch.isin(y, torch.tensor(classes))
        return data.normalise(x[keep.numpy()]), y[keep]

    old_train, new_train = real(old_classes, data.train_x, train_y), real(new_classes, data.train_x, train_y)
    old_test, new_test = real(old_classes, data.test_x, test_y), real(new_classes, data.test_x, test_y)
    rows = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        net = build_learner("convnet", data.num_classes, data.shape, width=args.width)
        optimizer = torch.optim.SGD(net.parameters(), lr=RUN.lr, momentum=RUN.momentum,
                                    weight_decay=RUN.weight_decay)
        train_steps(net, optimizer, *old_train, args.epochs, args.batch_size)
        losses = train_steps(net, optimizer, *new_train, args.epochs, args.batch_size, memory, args.mem_batch,
                             dsa.DSASettings() if args.augment_memory else None)
        rows.append([accuracy(net, *old_test), accuracy(net, *new_test), float(np.mean(losses[-20:]))])
    return np.array(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="+", help="set files from `ccl condense`")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--new-classes", default="2,7")
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=RUN.batch_size)
    parser.add_argument("--mem-batch", type=int, default=RUN.mem_batch)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--augment-memory", action="store_true", help="DSA-augment the replayed memory samples")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, args.data_dir, download=False).first_per_class(args.train_per_class)
    new_classes = [int(c) for c in args.new_classes.split(",")]
    print(f"{'set':<40} {'old acc':>15} {'new acc':>15} {'memory loss':>12}  (mean +- std over seeds {args.seeds})")
    for set_file in args.sets:
        r = anchor(set_file, data, new_classes, args)
        mean, std = r.mean(0), r.std(0)
        print(f"{set_file:<40} {mean[0]:.3f} +- {std[0]:.3f}  {mean[1]:.3f} +- {std[1]:.3f}  {mean[2]:>12.3f}",
              flush=True)


if __name__ == "__main__":
    main()
