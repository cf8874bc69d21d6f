"""SVCE's paper-scale parts: WordNet-cluster target selection and the Madry + FT ResNet-50 loader."""

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet50

from cfx.data.wordnet import (
    HIERARCHY_FILES,
    WordNetHierarchy,
    cluster_targets,
    select_cluster_images,
    verify_hierarchy,
    wordnet_clusters,
)
from cfx.models.robust_resnet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MADRY_FT_TEMPERATURE,
    TemperatureWrapper,
    load_madry_ft_resnet50,
)
from tests.factories.datasets import IS_A

CLASS_NUMBERS = {"c0": 5, "c1": 0, "c2": 9, "c3": 1, "c4": 8, "c5": 2, "c6": 7, "c7": 3, "c8": 6, "c9": 4}


def _class(*wnids):
    return tuple(sorted(CLASS_NUMBERS[w] for w in wnids))


@pytest.fixture
def small_hierarchy(tmp_path):
    (tmp_path / "wordnet.is_a.txt").write_text(IS_A)
    names = {w: f"name of {w}" for line in IS_A.split() for w in [line]}
    (tmp_path / "words.txt").write_text("".join(f"{w}\t{n}\n" for w, n in names.items()))
    index = {str(num): [wnid, f"label_{wnid}"] for wnid, num in CLASS_NUMBERS.items()}
    (tmp_path / "imagenet_class_index.json").write_text(json.dumps(index))
    return tmp_path


def test_hierarchy_counts_and_order_follow_upstream(small_hierarchy):
    h = WordNetHierarchy.from_folder(small_hierarchy, verify=False)
    counts = {w: n for w, n, _ in h.sorted_nodes}
    assert counts["root"] == 10 and counts["A"] == 7 and counts["A2"] == 3 and counts["B1"] == 2 and counts["B"] == 3
    assert "X" not in counts and "Y" not in counts  # no ImageNet descendant
    assert h.imagenet_classes("A2") == set(_class("c3", "c4", "c6"))  # c6 under its last-listed parent
    # sorted by (#ImageNet descendants, #descendants) descending, ties in file order: B (4 descendants) before
    # A1, A2 (3 each, A1 listed first)
    order = [w for w, _, _ in h.sorted_nodes]
    assert order[:5] == ["root", "A", "B", "A1", "A2"]


def test_clusters_are_greedy_disjoint_and_size_bounded(small_hierarchy):
    h = WordNetHierarchy.from_folder(small_hierarchy, verify=False)
    clusters = wordnet_clusters(h, min_size=3, max_size=8)
    assert [(c.wnid, c.classes) for c in clusters] == [("A", _class("c0", "c1", "c2", "c3", "c4", "c5", "c6")),
                                                       ("B", _class("c7", "c8", "c9"))]
    clusters = wordnet_clusters(h, min_size=3, max_size=5)
    assert [(c.wnid, c.classes) for c in clusters] == [("B", _class("c7", "c8", "c9")),
                                                       ("A1", _class("c0", "c1", "c2")),
                                                       ("A2", _class("c3", "c4", "c6"))]
    assert clusters[1].name == "name of A1"
    taken = [c for cluster in clusters for c in cluster.classes]
    assert len(taken) == len(set(taken))
    assert [c.wnid for c in wordnet_clusters(h, min_size=3, max_size=10)] == ["root"]


def test_targets_with_and_without_the_source_class(small_hierarchy):
    clusters = wordnet_clusters(WordNetHierarchy.from_folder(small_hierarchy, verify=False), 3, 5)
    source = CLASS_NUMBERS["c1"]
    # in upstream's order: CPython's iteration of the set {5, 0, 9} (slots mod 8: 0, 9 -> 1, 5)
    assert cluster_targets(source, clusters) == [0, 9, 5]
    assert cluster_targets(source, clusters, include_source=False) == [9, 5]
    assert cluster_targets(CLASS_NUMBERS["c5"], clusters) == []  # c5 is in no cluster


def test_image_selection_is_seeded_and_per_class(small_hierarchy):
    clusters = wordnet_clusters(WordNetHierarchy.from_folder(small_hierarchy, verify=False), 3, 5)
    labels = [i % 10 for i in range(60)]
    first = select_cluster_images(labels, clusters, per_class=2, seed=0)
    assert first == select_cluster_images(labels, clusters, per_class=2, seed=0)
    assert len(first) == 2 * 9
    assert all(labels[item["index"]] == item["label"] for item in first)
    assert Counter(item["label"] for item in first) == dict.fromkeys([c for cl in clusters for c in cl.classes], 2)
    assert [item["cluster"] for item in first[:6]] == ["B"] * 6  # clusters in their greedy order


def test_hierarchy_files_are_verified_by_sha256(small_hierarchy, tmp_path):
    with pytest.raises(ValueError, match="sha256"):
        verify_hierarchy(small_hierarchy)
    with pytest.raises(FileNotFoundError, match="raw.githubusercontent.com"):
        verify_hierarchy(tmp_path / "empty")
    assert set(HIERARCHY_FILES) == {"wordnet.is_a.txt", "words.txt", "imagenet_class_index.json"}


@pytest.mark.skipif(not os.environ.get("CFX_WORDNET_DIR"), reason="set CFX_WORDNET_DIR to the downloaded "
                    "hierarchy files (cfx.data.wordnet.fetch_hierarchy) to check the published counts")
def test_published_hierarchy_gives_121_clusters_of_619_classes():
    clusters = wordnet_clusters(WordNetHierarchy.from_folder(Path(os.environ["CFX_WORDNET_DIR"])))
    sizes = Counter(len(c.classes) for c in clusters)
    assert len(clusters) == 121 and sum(sizes[k] * k for k in sizes) == 619
    assert sizes == {3: 40, 4: 23, 5: 13, 6: 13, 7: 10, 8: 8, 9: 10, 10: 4}
    assert sum(len(c.classes) ** 2 for c in clusters) == 3733  # (image, target) pairs at one image per class
    assert [c.name for c in clusters[:2]] == ["mechanism", "restraint, constraint"]


def test_madry_ft_loader_normalises_and_applies_the_temperature(tmp_path):
    torch.manual_seed(0)
    reference = resnet50().eval()
    torch.save(reference.state_dict(), tmp_path / "l2_improved_3_ep.pt")
    model = load_madry_ft_resnet50(tmp_path / "l2_improved_3_ep.pt")
    assert isinstance(model, TemperatureWrapper) and not model.training
    assert model.temperature == MADRY_FT_TEMPERATURE == pytest.approx(0.7156, abs=1e-4)
    x = torch.rand(2, 3, 64, 64)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference((x - mean) / std) / MADRY_FT_TEMPERATURE)
    assert load_madry_ft_resnet50(tmp_path / "l2_improved_3_ep.pt", temperature=1.0).temperature == 1.0


def test_madry_ft_loader_refuses_other_layouts(tmp_path):
    state = resnet50().state_dict()
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "parallel.pt")
    with pytest.raises(ValueError, match="module."):
        load_madry_ft_resnet50(tmp_path / "parallel.pt")
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, tmp_path / "headless.pt")
    with pytest.raises(ValueError, match="fc.weight"):
        load_madry_ft_resnet50(tmp_path / "headless.pt")
    with pytest.raises(ValueError, match="positive"):
        TemperatureWrapper(torch.nn.Identity(), 0.0)
