"""What ``search submit`` ships with a job: the project folder and, unless told otherwise, its deps."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeseg.search.spec import SpecError
from edgeseg.search.submit import EXCLUDES, project_root, runtime_env

ROOT = Path(__file__).resolve().parents[2]


def test_default_ships_the_project_and_its_pyproject_dependencies(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\nversion = "0"\ndependencies = ["optuna>=4", "ray[default,tune,train]==2.60.0"]\n'
    )
    env = runtime_env(tmp_path, "pyproject")
    assert env == {"working_dir": str(tmp_path), "excludes": EXCLUDES,
                   "pip": ["optuna>=4", "ray[default,tune,train]==2.60.0"]}  # fmt: skip


def test_this_projects_dependencies_are_what_a_job_gets():
    env = runtime_env(ROOT, "pyproject")
    assert any(dep.startswith("ray[") for dep in env["pip"]) and any(
        d.startswith("mlflow") for d in env["pip"]
    )
    assert ".venv" in EXCLUDES and ".git" in EXCLUDES  # the local virtualenv is never uploaded


def test_requirements_file_lines_without_comments_or_blanks(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("# pinned for the cluster\nedgeseg-extra==1.0\n\nscipy\n")
    assert runtime_env(tmp_path, req)["pip"] == ["edgeseg-extra==1.0", "scipy"]


def test_no_dependencies_ships_only_the_folder(tmp_path):
    assert "pip" not in runtime_env(tmp_path, None)


def test_missing_requirements_file_is_named(tmp_path):
    with pytest.raises(SpecError, match="nope.txt"):
        runtime_env(tmp_path, tmp_path / "nope.txt")


def test_project_root_is_found_above_the_spec(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    (tmp_path / "searches").mkdir()
    assert project_root(tmp_path / "searches") == tmp_path
