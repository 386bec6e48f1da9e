"""Group-aware split balance: picstory's group_split against scikit-learn's GroupShuffleSplit, same data and seeds.

40 groups of 5–29 images whose class-1 rate varies from 10 % to 90 % (as production lines or patients do); a 20 %
test split that keeps every group whole. The figure is how far the test split's class-1 share lands from the whole
data's, in percentage points, over 20 seeds. Run: ``python bench/group_split.py`` (seconds).
"""

import numpy as np
from sklearn.model_selection import GroupShuffleSplit

from picstory.data.split import group_split


def main(seeds: int = 20) -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat([f"g{i}" for i in range(40)], rng.integers(5, 30, 40))
    rate = {g: rng.uniform(0.1, 0.9) for g in sorted(set(groups))}
    labels = np.array([str(int(rng.random() < rate[g])) for g in groups])
    whole = (labels == "1").mean()
    ours, peer = [], []
    for seed in range(seeds):
        s = np.array(group_split(labels, groups, {"test": 0.2}, seed=seed))
        ours.append(abs((labels[s == "test"] == "1").mean() - whole) * 100)
        _, test = next(GroupShuffleSplit(test_size=0.2, random_state=seed).split(labels, groups=groups))
        peer.append(abs((labels[test] == "1").mean() - whole) * 100)
    print(f"{len(labels)} images, 40 groups; |test share of class 1 - overall| in points over {seeds} seeds:")
    print(f"picstory group_split  mean {np.mean(ours):.2f}  max {np.max(ours):.2f}")
    print(f"GroupShuffleSplit     mean {np.mean(peer):.2f}  max {np.max(peer):.2f}")


if __name__ == "__main__":
    main()
