"""`edgeseg data ...` commands: argparse wiring, one-line summaries, files written."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from edgeseg.cli import data as commands
from edgeseg.data.cocoio import DataError


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edgeseg")
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_synth_then_stats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path / "home"))
    assert (
        _run(
            [
                "data",
                "synth",
                "--out",
                str(tmp_path / "s"),
                "--images",
                "4",
                "--val-images",
                "2",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote synthetic people to {tmp_path / 's'}: train 4 images") and "\n" not in line
    assert (tmp_path / "s" / "val" / "annotations.json").is_file()

    assert _run(["data", "stats", "--data", str(tmp_path / "s"), "--input-size", "320"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert sum(stats["ratios"]) == pytest.approx(1.0)
    raw = [math.log(1 / (r + 1e-3)) for r in stats["ratios"]]
    assert stats["log_class_weights"] == pytest.approx([3 * w / sum(raw) for w in raw])


def test_coco_person(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "instances_val2017.json"
    source.write_text(json.dumps({
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 10, "height": 10} for i in (1, 2, 3)],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 5, 5], "area": 25,
                         "segmentation": [[0, 0, 5, 0, 5, 5, 0, 5]]} for i in (1, 2, 3)],
        "categories": [{"id": 1, "name": "person"}],
    }))  # fmt: skip
    assert (
        _run(
            ["data", "coco-person", "--instances", str(source), "--out", str(tmp_path / "o"), "--subset", "2"]
        )
        == 0
    )
    assert "instances_val2017_person_only_no_crowd_2.json" in capsys.readouterr().out
    assert (
        len(
            json.loads((tmp_path / "o" / "instances_val2017_person_only_no_crowd_2.json").read_text())[
                "images"
            ]
        )
        == 2
    )


def test_video_people_default_path_is_under_edgeseg_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path / "home"))
    with pytest.raises(DataError, match=rf"{tmp_path / 'home' / 'video' / 'vtest.avi'}: video not found"):
        _run(["data", "video-people", "--out", str(tmp_path / "v"), "--images", "2", "--val-images", "1"])
