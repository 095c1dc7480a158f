"""Real people from vtest.avi (skipped when the video has not been fetched: scripts/fetch-vtest.sh)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from edgeseg.data.cocoio import DataError
from edgeseg.data.video_people import default_video_path, write_video_people_dataset


def _video() -> Path:
    # The fetched copy lives in the real edgeseg home; tests isolate EDGESEG_HOME, so look it up first.
    return default_video_path()


VIDEO = _video()


def test_missing_video_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nothere\.avi: video not found"):
        write_video_people_dataset(tmp_path / "nothere.avi", tmp_path / "out", 1, 1)


def test_unreadable_video_names_the_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(DataError, match=r"bad\.avi: "):
        write_video_people_dataset(bad, tmp_path / "out", 1, 1)


@pytest.mark.slow
@pytest.mark.skipif(not VIDEO.is_file(), reason=f"{VIDEO} missing: run scripts/fetch-vtest.sh (make data)")
def test_small_video_people_dataset_loads_in_pycocotools(tmp_path: Path) -> None:
    summary = write_video_people_dataset(VIDEO, tmp_path, train_images=4, val_images=2, seed=0)
    # the recipe's filters find a few hundred single-person cut-outs, split by frame 560
    assert summary["cutouts_train"] > 0 and summary["cutouts_val"] > 0
    assert summary["cutouts_train"] + summary["cutouts_val"] > 100
    for split, count in (("train", 4), ("val", 2)):
        coco = COCO(str(tmp_path / split / "annotations.json"))
        assert len(coco.imgs) == count
        assert len(coco.anns) >= 3 * count - count  # 3-8 pasted per scene, a few may be fully hidden
        for image_id in coco.imgs:
            masks = [coco.annToMask(a) for a in coco.imgToAnns[image_id]]
            assert np.sum(masks, axis=0).max() <= 1  # visible masks do not overlap
            assert all(m.shape == (576, 768) for m in masks)


def test_generated_video_people_without_the_video_says_how_to_get_it(tmp_path: Path) -> None:
    from edgeseg import paths
    from edgeseg.config import load_config
    from edgeseg.engine.prepare import data_files

    config = load_config("baseline", overrides={"data.generated": "video-people"})
    with paths.using_home(tmp_path), pytest.raises(FileNotFoundError, match=r"vtest\.avi.*make video"):
        data_files(config)


@pytest.mark.slow
@pytest.mark.skipif(not VIDEO.is_file(), reason=f"{VIDEO} missing: run scripts/fetch-vtest.sh (make data)")
def test_generated_video_people_is_written_once_under_the_home(tmp_path: Path) -> None:
    from edgeseg import paths
    from edgeseg.config import load_config
    from edgeseg.engine.prepare import data_files

    (tmp_path / "video").mkdir()
    (tmp_path / "video" / "vtest.avi").symlink_to(VIDEO)
    overrides = {
        "data.generated": "video-people",
        "data.generated_train_images": 3,
        "data.generated_val_images": 2,
    }
    config = load_config("baseline", overrides=overrides)
    with paths.using_home(tmp_path):
        files = data_files(config)
        assert (
            files.train_annotations
            == tmp_path / "data" / "video-people-3-2-seed0" / "train" / "annotations.json"
        )
        assert len(COCO(str(files.val_annotations)).imgs) == 2
        stamp = files.train_annotations.stat().st_mtime_ns
        assert (
            data_files(config) == files and files.train_annotations.stat().st_mtime_ns == stamp
        )  # not rewritten
