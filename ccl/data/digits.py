"""scikit-learn's handwritten digits: 1,797 8x8 greyscale images, no download needed."""
from __future__ import annotations

import numpy as np

from ccl.data.images import ImageSet, channel_stats

TEST_FRACTION = 0.2
SPLIT_SEED = 0  # fixed: the train/test split is part of the data set, not of a run


def load_digits() -> ImageSet:
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    d = sk_digits()
    x = np.round(d.images * (255 / 16)).astype(np.uint8)[..., None]  # (1797, 8, 8, 1), pixel values 0..16
    y = d.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED)
    mean, std = channel_stats(train_x)
    return ImageSet("digits", [str(i) for i in range(10)], train_x, train_y, test_x, test_y, mean, std)
