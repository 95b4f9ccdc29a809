"""Lesion-grouped splits: images of one lesion, and byte-identical files, always on one side.

Groups come from the metadata's `lesion_id` and from file contents (two files with the same
bytes are one image, whatever their ids say); the holdout and the K folds are stratified by
class and deterministic for a seed.
"""

import collections
import hashlib
from pathlib import Path

import numpy as np


def find_duplicates(paths: list[Path]) -> list[list[Path]]:
    """Sets of byte-identical files (only files of equal size are hashed)."""
    by_size = collections.defaultdict(list)
    for path in paths:
        by_size[path.stat().st_size].append(path)
    by_hash = collections.defaultdict(list)
    for same_size in by_size.values():
        if len(same_size) > 1:
            for path in same_size:
                by_hash[hashlib.sha1(path.read_bytes()).hexdigest()].append(path)
    return sorted(sorted(group) for group in by_hash.values() if len(group) > 1)


class _UnionFind:
    def __init__(self):
        self.parent = {}

    def find(self, item):
        self.parent.setdefault(item, item)
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a, b):
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


def assign_groups(records: list, duplicates: list[list[Path]]) -> None:
    """Sets `record.group`: images of one lesion, or byte-identical files, share a group."""
    union = _UnionFind()
    by_path = {record.path: record for record in records}
    for record in records:
        union.union(record.image,
                    f"lesion:{record.lesion_id}" if record.lesion_id else record.image)
    for paths in duplicates:
        images = [by_path[p].image for p in paths if p in by_path]
        for other in images[1:]:
            union.union(images[0], other)
    for record in records:
        record.group = union.find(record.image)


def holdout_split(labels: np.ndarray, groups: np.ndarray, val_fraction: float,
                  seed: int) -> np.ndarray:
    """Boolean "in val" per image: whole groups, each class's val share near `val_fraction`.

    Groups are visited in a seeded random order, class by class (a group counts for its most
    frequent class); a group goes to val when that brings the class's val count closer to its
    target. Classes with many small groups land within a fraction of a point of the target; a
    class of a few large groups gets as close as its groups allow.
    """
    rng = np.random.default_rng(seed)
    unique_groups, group_index = np.unique(groups, return_inverse=True)
    sizes = np.bincount(group_index)
    group_class = np.array([np.bincount(labels[group_index == g]).argmax()
                            for g in range(len(unique_groups))])
    in_val_group = np.zeros(len(unique_groups), dtype=bool)
    for label in np.unique(labels):
        candidates = np.flatnonzero(group_class == label)
        target = val_fraction * sizes[candidates].sum()
        count = 0
        for g in rng.permutation(candidates):
            if abs(count + sizes[g] - target) < abs(count - target):
                in_val_group[g] = True
                count += sizes[g]
    return in_val_group[group_index]


def kfold_split(labels: np.ndarray, groups: np.ndarray, folds: int, fold: int,
                seed: int) -> np.ndarray:
    """Boolean "in val" per image for fold `fold` of a lesion-grouped stratified K-fold."""
    from sklearn.model_selection import StratifiedGroupKFold  # pylint: disable=g-import-not-at-top

    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    _, val_index = list(splitter.split(labels, labels, groups))[fold]
    in_val = np.zeros(len(labels), dtype=bool)
    in_val[val_index] = True
    return in_val
