"""Condensation methods: pure torch, no Avalanche, no file I/O.

Every method is a function with the same contract, so the memory layer can call any of
them at the end of an experience and the CLI can call them standalone:

    condense(real, labels, budget, device, settings, *, init=None, progress=True, stats=None)
        -> (images, image_labels)

Args:
    real:   (N, C, H, W) float real images of the classes to condense, normalised
            (mean/std of the data set); on any device.
    labels: (N,) long class labels of `real`.
    budget: {class: number of synthetic images}; every class in it has real images.
    device: where the work happens and where the result lives.
    settings: the method's frozen dataclass of settings.
    init:   optional (images, labels) to start from instead of the method's own init
            (the images must match `budget`).
    progress: show a progress bar.
    stats:  optional dict the method fills with figures worth reporting (seconds per
            phase, final loss, whether it stopped early on a non-finite loss).

Returns:
    images (sum(budget.values()), C, H, W) float32 on `device`, grouped by class in the
    order of `budget`, and their (M,) long labels.

Randomness comes from torch's global generator, seeded once by the entry point.
"""
