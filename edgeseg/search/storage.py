"""Where a search keeps its files: a folder on local disk, NFS or any pyarrow filesystem (s3://).

Tune's experiment folder and edgeseg's control files (search record, driver record, stop requests)
live under ``<storage>/<name>/``; ``checkpoint_uri`` turns a Ray checkpoint path into a URI any
process can open.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgeseg import paths


class StorageFolder:
    """A folder on local disk or any pyarrow filesystem (s3://...), for small text files."""

    def __init__(self, uri: str) -> None:
        import pyarrow.fs as pafs

        self.uri = uri.rstrip("/")
        if "://" in self.uri:
            self.fs, self.path = pafs.FileSystem.from_uri(self.uri)
        else:
            self.fs, self.path = pafs.LocalFileSystem(), str(Path(self.uri).expanduser().resolve())

    def child(self, name: str) -> StorageFolder:
        return StorageFolder(f"{self.uri}/{name}")

    def _p(self, name: str) -> str:
        return f"{self.path}/{name}" if name else self.path

    def exists(self, name: str = "") -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self._p(name)).type != pafs.FileType.NotFound

    def read_text(self, name: str) -> str:
        with self.fs.open_input_stream(self._p(name)) as handle:
            return handle.read().decode()

    def write_text(self, name: str, text: str) -> None:
        self.fs.create_dir(self.path, recursive=True)
        tmp = self._p(f".{name}.{os.getpid()}.tmp")
        with self.fs.open_output_stream(tmp) as handle:
            handle.write(text.encode())
        self.fs.move(tmp, self._p(name))

    def delete(self, name: str) -> None:
        if self.exists(name):
            self.fs.delete_file(self._p(name))

    def delete_tree(self) -> None:
        if self.exists():
            self.fs.delete_dir(self.path)

    def upload_dir(self, local: Path, name: str) -> str:
        """Copy a local folder to ``name`` under this folder; returns its URI (or local path)."""
        import pyarrow.fs as pafs

        self.fs.create_dir(self._p(name), recursive=True)
        pafs.copy_files(str(local), self._p(name), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)  # fmt: skip
        return f"{self.uri}/{name}"

    def delete_dir(self, name: str) -> None:
        if self.exists(name):
            self.fs.delete_dir(self._p(name))

    def list(self) -> list[str]:
        import pyarrow.fs as pafs

        if not self.exists():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path))
        return sorted(Path(i.path).name for i in infos if not Path(i.path).name.startswith("."))


def experiment_uri(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}"


STOP_ALL = "ALL"  # the stop request of a whole search (a trial's is named by its id)


def control_folder(storage: str, name: str) -> StorageFolder:
    return StorageFolder(experiment_uri(storage, name)).child("edgeseg")


def default_storage() -> str:
    return str(paths.home() / "searches")


def checkpoint_uri(storage: str, path: str) -> str:
    """A Ray checkpoint path (filesystem-relative for remote stores) as a URI any process can open."""
    if "://" in path or "://" not in storage:
        return path
    return f"{storage.split('://', 1)[0]}://{path.lstrip('/')}"
