"""The feature cache on the tiny ONNX backbone: hits, invalidation, concurrent builds, size limit, fp16."""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import race_two_processes
from test_backbone_extractor import TINY_MAP, TINY_SIZE, make_tiny_onnx, tiny_reference

from edgeseg.backbone.cache import CachedFeatures, FeatureCache, FeatureCacheTooLarge, OnTheFlyFeatures
from edgeseg.backbone.extractor import OnnxFeatureExtractor

# Bytes per image at float16 for the tiny backbone's three layers: channels x height x width x 2.
BYTES_PER_IMAGE = (4 * 32 * 32 + 6 * 16 * 16 + 8 * 8 * 8) * 2


class FakeDataset:
    """The data-set protocol the cache reads: len, identity(), load_image(i) -> uint8 [3,S,S]."""

    def __init__(
        self, n: int = 6, seed: int = 0, name: str = "fake", delay: float = 0.0, as_tensor: bool = False
    ):
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, size=(n, 3, TINY_SIZE, TINY_SIZE), dtype=np.uint8)
        self.name, self.delay, self.as_tensor = name, delay, as_tensor

    def __len__(self) -> int:
        return len(self.images)

    def identity(self) -> str:
        return self.name

    def load_image(self, index: int):
        time.sleep(self.delay)
        return torch.from_numpy(self.images[index]) if self.as_tensor else self.images[index]


class CountingExtractor:
    """Delegates to a real extractor and counts backbone runs."""

    def __init__(self, inner: OnnxFeatureExtractor) -> None:
        self.inner = inner
        self.calls = 0
        self.layers = inner.layers

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def __call__(self, images):
        self.calls += 1
        return self.inner(images)


def extractor_for(tmp_path: Path, layers=None, seed: int = 0, name: str = "tiny.onnx") -> CountingExtractor:
    spec = TINY_MAP.bind(make_tiny_onnx(tmp_path / name, seed), "x", TINY_SIZE)
    return CountingExtractor(OnnxFeatureExtractor(spec, layers=layers))


def cache_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_build_then_hit_without_running_the_backbone(tmp_path: Path):
    extractor = extractor_for(tmp_path)
    dataset = FakeDataset(n=6)
    root = tmp_path / "cache"
    first = FeatureCache.open_or_build(extractor, dataset, root=root, batch_size=4, log=lambda _: None)
    assert not first.hit and extractor.calls == 2  # ceil(6 / 4) batches
    assert first.nbytes == 6 * BYTES_PER_IMAGE
    assert sum(f.stat().st_size for f in first.path.glob("*.npy")) >= first.nbytes
    second = FeatureCache.open_or_build(extractor, dataset, root=root, log=lambda _: None)
    assert second.hit and extractor.calls == 2
    assert second.path == first.path and cache_folders(root) == [first.path]
    for layer_id, values in first.features([5, 0, 3]).items():
        assert torch.equal(values, second.features([5, 0, 3])[layer_id])


def test_cached_values_are_fp16_of_the_reference(tmp_path: Path):
    dataset = FakeDataset(n=5, as_tensor=True)
    cached = FeatureCache.open_or_build(
        extractor_for(tmp_path), dataset, root=tmp_path / "c", log=lambda _: None
    )
    got = cached.features([4, 1])
    want = tiny_reference(dataset.images[[4, 1]])
    for layer_id, values in got.items():
        assert values.dtype == torch.float32 and tuple(values.shape) == want[layer_id].shape
        # float16 keeps 11 significant bits: relative error <= 2**-11 plus rounding of tiny values
        np.testing.assert_allclose(values.numpy(), want[layer_id], rtol=2e-3, atol=1e-3)
    assert {k: (v.channels, v.height) for k, v in cached.layer_info().items()} == {
        "s2": (4, 32), "s4": (6, 16), "s8": (8, 8)
    }  # fmt: skip


def test_any_key_part_change_rebuilds_elsewhere(tmp_path: Path):
    root = tmp_path / "cache"
    quiet: dict[str, Any] = {"root": root, "log": lambda _: None}
    base = FeatureCache.open_or_build(extractor_for(tmp_path), FakeDataset(), **quiet)
    renamed = FeatureCache.open_or_build(extractor_for(tmp_path), FakeDataset(name="other"), **quiet)
    fewer = FeatureCache.open_or_build(
        extractor_for(tmp_path, layers=["fine", "deep"]), FakeDataset(), **quiet
    )
    # Same path, new bytes: different weights must not reuse the old features.
    new_weights = extractor_for(tmp_path, seed=1)
    rebuilt = FeatureCache.open_or_build(new_weights, FakeDataset(), **quiet)
    assert not any(c.hit for c in (base, renamed, fewer, rebuilt)) and new_weights.calls > 0
    assert len({c.path for c in (base, renamed, fewer, rebuilt)}) == 4
    assert set(fewer.layers) == {"s2", "s8"}
    want = tiny_reference(FakeDataset().images[:1], seed=1)["s8"]
    np.testing.assert_allclose(rebuilt.features([0])["s8"].numpy(), want, rtol=2e-3, atol=1e-3)
    # The layer order does not change the key: the same set is a hit.
    again = FeatureCache.open_or_build(
        extractor_for(tmp_path, layers=["deep", "fine"]), FakeDataset(), **quiet
    )
    assert again.hit and again.path == fewer.path


def test_size_limit_refuses_before_building(tmp_path: Path):
    extractor = extractor_for(tmp_path)
    messages: list[str] = []
    with pytest.raises(FeatureCacheTooLarge) as error:
        FeatureCache.open_or_build(
            extractor,
            FakeDataset(n=6),
            root=tmp_path / "c",
            max_bytes=6 * BYTES_PER_IMAGE - 1,
            log=messages.append,
        )
    assert f"({6 * BYTES_PER_IMAGE} bytes)" in str(error.value)
    assert "data.cache_max_gb" in str(error.value)
    assert extractor.calls == 0 and cache_folders(tmp_path / "c") == []
    assert "will take" in messages[0]
    ok = FeatureCache.open_or_build(
        extractor, FakeDataset(n=6), root=tmp_path / "c", max_bytes=6 * BYTES_PER_IMAGE, log=messages.append
    )
    assert not ok.hit


def test_incomplete_folder_is_rebuilt(tmp_path: Path):
    extractor = extractor_for(tmp_path)
    root = tmp_path / "c"
    built = FeatureCache.open_or_build(extractor, FakeDataset(), root=root, log=lambda _: None)
    (built.path / "manifest.json").unlink()
    rebuilt = FeatureCache.open_or_build(extractor, FakeDataset(), root=root, log=lambda _: None)
    assert (
        not rebuilt.hit
        and rebuilt.path == built.path
        and json.loads((built.path / "manifest.json").read_text())
    )


def test_wrong_image_size_names_the_dataset_and_index(tmp_path: Path):
    dataset = FakeDataset(name="tiny-set")
    dataset.images = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"'tiny-set' image 0.*\[3, 32, 32\]"):
        FeatureCache.open_or_build(extractor_for(tmp_path), dataset, root=tmp_path / "c", log=lambda _: None)


def test_float16_overflow_is_an_error(tmp_path: Path):
    spec = TINY_MAP.bind(make_tiny_onnx(tmp_path / "t.onnx"), "x", TINY_SIZE)
    spec = spec.replace(preprocessing=type(spec.preprocessing)(scale=1e5))
    with pytest.raises(ValueError, match="float16 range"):
        FeatureCache.open_or_build(
            OnnxFeatureExtractor(spec), FakeDataset(), root=tmp_path / "c", log=lambda _: None
        )


def test_out_of_range_index_names_the_cache(tmp_path: Path):
    cached = FeatureCache.open_or_build(
        extractor_for(tmp_path), FakeDataset(n=3), root=tmp_path / "c", log=lambda _: None
    )
    with pytest.raises(IndexError, match="holds 3 images"):
        cached.features([3])


def test_select_serves_a_subset_of_a_wider_cache(tmp_path: Path):
    cached = FeatureCache.open_or_build(
        extractor_for(tmp_path), FakeDataset(), root=tmp_path / "c", log=lambda _: None
    )
    view = cached.select(["s8", "s2"])
    got = view.features([1])
    assert list(got) == ["s8", "s2"] and list(view.layer_info()) == ["s8", "s2"]
    assert torch.equal(got["s2"], cached.features([1])["s2"])
    with pytest.raises(ValueError, match=r"no layers \['nope'\]"):
        cached.select(["nope"])


def test_cached_features_survive_pickling(tmp_path: Path):
    cached = FeatureCache.open_or_build(
        extractor_for(tmp_path), FakeDataset(), root=tmp_path / "c", log=lambda _: None
    )
    cached.features([0])  # opens the memory maps
    copy: CachedFeatures = pickle.loads(pickle.dumps(cached))
    assert torch.equal(copy.features([2])["s4"], cached.features([2])["s4"])


def test_on_the_fly_matches_the_extractor(tmp_path: Path):
    extractor = extractor_for(tmp_path, layers=["mid"])
    source = OnTheFlyFeatures(extractor)
    images = FakeDataset(n=3).images
    got = source.features([0, 1, 2], torch.from_numpy(images))
    np.testing.assert_allclose(got["s4"].numpy(), tiny_reference(images)["s4"], rtol=1e-4, atol=1e-4)
    assert extractor.calls == 1 and source.layer_info()["s4"].channels == 6
    with pytest.raises(ValueError, match="needs the images"):
        source.features([0])


def _build_in_process(onnx_path: str, root: str, barrier, results) -> None:
    spec = TINY_MAP.bind(onnx_path, "x", TINY_SIZE)
    extractor = CountingExtractor(OnnxFeatureExtractor(spec))
    barrier.wait()
    cached = FeatureCache.open_or_build(
        extractor, FakeDataset(n=6, delay=0.05), root=root, batch_size=2, log=lambda _: None
    )
    results.put((cached.hit, extractor.calls, str(cached.path), cached.features(range(6))["s8"].numpy()))


@pytest.mark.slow  # two spawned interpreters import torch and onnxruntime (~5 s)
def test_concurrent_builds_make_one_cache(tmp_path: Path):
    onnx_path = str(make_tiny_onnx(tmp_path / "tiny.onnx"))
    root = tmp_path / "cache"
    outcomes = race_two_processes(_build_in_process, (onnx_path, str(root)), timeout=60)
    assert sorted(o[0] for o in outcomes) == [False, True]  # one built, the other waited and read it
    assert sorted(o[1] for o in outcomes) == [0, 3]  # the backbone ran 3 batches once in total
    assert outcomes[0][2] == outcomes[1][2] and cache_folders(root) == [Path(outcomes[0][2])]
    np.testing.assert_array_equal(outcomes[0][3], outcomes[1][3])
    assert not list(root.glob(".*tmp*"))
