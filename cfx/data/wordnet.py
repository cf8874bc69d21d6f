"""SVCE's target selection: disjoint WordNet clusters of ImageNet classes (docs/upstream/ldce_gcd_svce.md §3.2).

Upstream (``imagenet_visual_transfer_hierachy.py`` with MadryLab/robustness
``robustness/tools/imagenet_helpers.py:ImageNetHierarchy``): the WordNet is-a tree is read from
``wordnet.is_a.txt`` (one ``parent child`` pair a line; a node keeps the parent of the LAST line naming it as a
child), names from ``words.txt``, class numbers from ``imagenet_class_index.json``. Every internal node counts its
ImageNet descendants; nodes with none that are not ImageNet classes are dropped; the rest are sorted by (#ImageNet
descendants, #descendants on ImageNet paths), both descending, ties in file order. Walking that list, a node with
3–10 ImageNet descendants becomes a cluster unless it shares a class with a cluster already kept: on the shipped
files, 121 clusters holding 619 classes. An image's targets are the classes of its cluster (its own class
included, as upstream; :func:`cluster_targets` can leave it out).

The three files are a versioned resource (:data:`HIERARCHY_FILES`: URL at SVCEs_code commit 2dac850 + sha256),
downloaded by :func:`fetch_hierarchy` and checked by :func:`verify_hierarchy`; they are not shipped with cfx.

A cluster's classes are kept in ascending order; upstream iterates them as a Python ``set`` of class numbers
(``ImageNetHierarchy.get_descendants(in_imagenet=True)``), and that order decides which images its seeded
``randperm`` stream draws for which class and the order of each image's targets. :func:`upstream_class_order`
reproduces CPython's iteration of such a set; where two classes of a cluster collide in the set's hash table their
order also depends on the order of insertion, which upstream takes from a set of wnid strings (hash-randomised per
process), so upstream itself is not reproducible there.

Deviation: the ImageNet classes are those of ``imagenet_class_index.json`` (upstream lists the folders of
``<imagenet>/train``, the same 1000 for a complete ImageNet).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cfx.runtime.download import fetch_pinned_files, verify_pinned_files

_BASE = "https://raw.githubusercontent.com/valentyn1boreiko/SVCEs_code/2dac85025bcaca491d45434c7ef5887174fefa6b/IN_info"
# name -> (url, sha256): the IN_info files SVCE ships (SVCEs_code commit 2dac850, 2022-06-22)
HIERARCHY_FILES: dict[str, tuple[str, str]] = {
    "wordnet.is_a.txt": (f"{_BASE}/wordnet.is_a.txt",
                         "ff7206572ae989d1de8acbd6cbd921854fefd32dcdcb50eab11b81e797e28cd1"),
    "words.txt": (f"{_BASE}/words.txt", "55df3c6ee75859de344e2834ef65d88d61cec389d57e787be59e942c9b73e9aa"),
    "imagenet_class_index.json": (f"{_BASE}/imagenet_class_index.json",
                                  "70417ad8985ddbf008d22f5ef2e57254a56f7a3e215b8c7e86c315af53467035"),
}
HIERARCHY_VERSION = "SVCEs_code@2dac850 IN_info"
# where the workflow keeps them (rule fetch_svce_hierarchy), relative to the workflow's directory
SVCE_HIERARCHY_DIR = "resources/data/svce/IN_info"
SVCE_HIERARCHY_PATHS = [f"{SVCE_HIERARCHY_DIR}/{name}" for name in HIERARCHY_FILES]
SVCE_CLUSTER_TARGETS = "svce_clusters"  # an experiment's image_targets for SVCE's ImageNet run (cfx.generate)
SVCE_SAMPLES_PER_CLASS = 5  # imagenet_visual_transfer_hierachy.py --samples default (its README runs 1)


def verify_hierarchy(folder: str | Path) -> Path:
    """Check that ``folder`` holds the three hierarchy files with their pinned sha256; errors name the file and
    where to get it."""
    return verify_pinned_files(folder, HIERARCHY_FILES, what="WordNet hierarchy file", version=HIERARCHY_VERSION,
                               fetch_hint=f"cfx.data.wordnet.fetch_hierarchy('{folder}')")


def fetch_hierarchy(folder: str | Path, timeout: float = 60.0) -> Path:
    """Download the missing hierarchy files into ``folder`` (atomic, sha256-checked, retried) and verify all
    three."""
    fetch_pinned_files(folder, HIERARCHY_FILES, timeout=timeout)
    return verify_hierarchy(folder)


@dataclass(frozen=True)
class Cluster:
    """A WordNet node and the ImageNet classes below it (ascending class numbers)."""

    wnid: str
    name: str
    classes: tuple[int, ...]


class WordNetHierarchy:
    """The is-a tree restricted to ImageNet (``ImageNetHierarchy``): per node its ImageNet descendant count and
    its descendants on paths from ImageNet classes."""

    def __init__(self, is_a: Sequence[tuple[str, str]], names: dict[str, str], class_index: dict[int, str],
                 imagenet_wnids: Sequence[str] | None = None) -> None:
        self.names = names
        self.wnid_to_class = {wnid: num for num, wnid in class_index.items()}
        in_wnids = list(class_index.values()) if imagenet_wnids is None else list(imagenet_wnids)
        parent: dict[str, str | None] = {}
        for parent_wnid, child_wnid in is_a:  # insertion order = first appearance; the last parent line wins
            for wnid in (parent_wnid, child_wnid):
                if wnid not in names:
                    raise ValueError(f"wnid {wnid} of the is-a file has no name in words.txt")
                parent.setdefault(wnid, None)
            parent[child_wnid] = parent_wnid
        missing = [w for w in in_wnids if w not in parent]
        if missing:
            raise ValueError(f"{len(missing)} ImageNet wnids are not in the is-a file, e.g. {missing[:3]}")
        unknown = [w for w in in_wnids if w not in self.wnid_to_class]
        if unknown:
            raise ValueError(f"{len(unknown)} ImageNet wnids have no class number, e.g. {unknown[:3]}")
        self.in_wnids = in_wnids
        self.count_in = dict.fromkeys(parent, 0)
        self.descendants: dict[str, set[str]] = {wnid: set() for wnid in parent}
        for wnid in in_wnids:
            path, node, seen = [wnid], parent[wnid], {wnid}
            while node is not None:
                if node in seen:
                    raise ValueError(f"the is-a file has a cycle through {node}")
                seen.add(node)
                self.count_in[node] += 1
                self.descendants[node].update(path)
                path.append(node)
                node = parent[node]
        classes = set(in_wnids)
        kept = [w for w in parent if self.count_in[w] > 0 or w in classes]
        # stable sort: ImageNet descendants, then all descendants, both descending; ties in file order
        self.sorted_nodes = sorted(((w, self.count_in[w], len(self.descendants[w])) for w in kept),
                                   key=lambda item: (-item[1], -item[2]))

    @classmethod
    def from_folder(cls, folder: str | Path, verify: bool = True,
                    imagenet_wnids: Sequence[str] | None = None) -> WordNetHierarchy:
        """Read ``wordnet.is_a.txt``, ``words.txt`` and ``imagenet_class_index.json`` from ``folder`` (checking
        their sha256 unless ``verify`` is False: small hand-made hierarchies in tests)."""
        folder = Path(folder)
        if verify:
            verify_hierarchy(folder)
        is_a = [tuple(line.split()) for line in (folder / "wordnet.is_a.txt").read_text().splitlines() if line.strip()]
        bad = [pair for pair in is_a if len(pair) != 2]
        if bad:
            raise ValueError(f"{folder / 'wordnet.is_a.txt'}: lines must be 'parent child', got {bad[0]}")
        names = {}
        for line in (folder / "words.txt").read_text().splitlines():
            if "\t" in line:
                wnid, name = line.split("\t", 1)
                names[wnid] = name.strip()
        index = json.loads((folder / "imagenet_class_index.json").read_text())
        class_index = {int(k): v[0] for k, v in index.items()}
        return cls(is_a, names, class_index, imagenet_wnids)

    def imagenet_classes(self, wnid: str) -> set[int]:
        """Class numbers of the ImageNet wnids below ``wnid`` (``get_descendants(in_imagenet=True)``)."""
        in_set = set(self.in_wnids)
        return {self.wnid_to_class[w] for w in self.descendants[wnid] if w in in_set}


def wordnet_clusters(hierarchy: WordNetHierarchy, min_size: int = 3, max_size: int = 10) -> list[Cluster]:
    """Disjoint clusters, greedy in the hierarchy's sorted order: nodes with ``min_size``–``max_size`` ImageNet
    descendants that share no class with a cluster already kept (``imagenet_visual_transfer_hierachy.py``)."""
    taken: set[int] = set()
    clusters = []
    for wnid, count, _ in hierarchy.sorted_nodes:
        if not min_size <= count <= max_size:
            continue
        classes = hierarchy.imagenet_classes(wnid)
        if classes & taken:
            continue
        taken |= classes
        clusters.append(Cluster(wnid, hierarchy.names[wnid], tuple(sorted(classes))))
    return clusters


def cluster_targets(label: int, clusters: Sequence[Cluster], include_source: bool = True) -> list[int]:
    """The targets of an image of class ``label``: its cluster's classes in upstream's order
    (:func:`upstream_class_order`, ``targets_lists.append(list(wnid_subclasses))``), without ``label`` itself when
    ``include_source`` is False (upstream includes it, P-S7); empty when no cluster holds ``label``."""
    for cluster in clusters:
        if label in cluster.classes:
            return [c for c in upstream_class_order(cluster.classes) if include_source or c != label]
    return []


def upstream_class_order(classes: Sequence[int]) -> list[int]:
    """The order in which upstream iterates a cluster's classes: CPython's iteration of the ``set`` of class numbers
    (slot order in the hash table, ints hashing to themselves), here built by inserting them in ascending order."""
    return list(set(sorted(int(c) for c in classes)))


def select_cluster_images(labels: Sequence[int], clusters: Sequence[Cluster], per_class: int,
                          seed: int = 0) -> list[dict]:
    """Upstream's image selection: for every cluster and every class in it (in :func:`upstream_class_order`),
    ``per_class`` images of that class drawn by a seeded ``torch.randperm`` over the class's images (in dataset
    order), one stream for the whole walk (``torch.manual_seed(0)``). Returns dicts ``index`` (into ``labels``),
    ``label``, ``cluster`` (wnid), ``cluster_name``, ``rank``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    labels_t = torch.as_tensor(list(labels), dtype=torch.long)
    selected = []
    for cluster in clusters:
        for label in upstream_class_order(cluster.classes):
            candidates = torch.nonzero(labels_t == label).flatten()
            chosen = candidates[torch.randperm(len(candidates), generator=generator)][:per_class]
            selected += [{"index": int(i), "label": label, "cluster": cluster.wnid, "cluster_name": cluster.name,
                          "rank": rank} for rank, i in enumerate(chosen.tolist())]
    return selected
