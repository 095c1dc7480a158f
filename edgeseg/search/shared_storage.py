"""Refuse node-local search storage on a multi-node Ray cluster.

Since Ray 2.7 nothing is synced to the head node (ray#37177): Tune's experiment folder, the Ray
Train runs and edgeseg's trial checkpoints must be on storage that every node sees. The default
storage, ``$EDGESEG_HOME/searches``, is a folder on whichever disk each node has; under ``ray up``
every node writes its own copy, and exports and ``search resume`` then miss checkpoints.

So a search starts with a probe when the cluster has more than one alive node and the storage is a
local path: the driver writes a marker holding a random nonce into the storage folder, and a tiny
task pinned to each other alive node (``NodeAffinitySchedulingStrategy(soft=False)``) reads it back.
A node that cannot read the marker, reads another nonce, or does not answer within the probe's
timeout means the folder is not shared, and the search is refused (:class:`NodeLocalStorageError`,
exit code 2 in the CLI) before any trial starts. ``s3://`` (any ``scheme://``) storage and
single-node clusters skip the probe.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseg.search.spec import SpecError

PROBE_TIMEOUT_S = 30.0  # per node: a task on an idle node answers in well under a second


class NodeLocalStorageError(SpecError):
    """The search storage is a folder that some nodes of the Ray cluster do not share."""


@dataclass(frozen=True)
class NodeView:
    """What one node saw at the marker's path."""

    node_id: str
    address: str  # the node's IP address as Ray knows it
    hostname: str = ""
    seen: str | None = None  # the marker's content there; None: not readable there
    error: str = ""  # why not: no such file, an OS error, no answer within the timeout, a failed task

    def describe(self) -> str:
        name = f"{self.address} ({self.hostname}, node id {self.node_id[:12]})" if self.hostname else (
            f"{self.address} (node id {self.node_id[:12]})"
        )  # fmt: skip
        return f"node {name}: {self.error}"


def local_storage_path(storage: str) -> Path | None:
    """The folder of a local storage (a path or ``file://``), None for a remote one (``s3://``...)."""
    if storage.startswith("file://"):
        storage = storage[len("file://") :]
    elif "://" in storage:
        return None
    return Path(storage).expanduser().resolve()


def read_marker(path: str) -> tuple[str, str | None, str]:
    """Runs on each probed node: (hostname, the marker's content or None, why not)."""
    try:
        return socket.gethostname(), Path(path).read_text(), ""
    except FileNotFoundError:
        return socket.gethostname(), None, "no such file there"
    except OSError as exc:
        return socket.gethostname(), None, f"cannot read it there: {type(exc).__name__}: {exc}"


def probe_nodes(marker: Path, nodes: list[dict[str, Any]], timeout_s: float) -> list[NodeView]:
    """Read ``marker`` on each of ``nodes`` (entries of ``ray.nodes()``), at most ``timeout_s`` in all."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(read_marker)
    refs = {
        task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
            str(marker)
        ): node
        for node in nodes
    }
    ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    views = []
    for ref in ready:
        node = refs[ref]
        try:
            hostname, seen, why = ray.get(ref)
        except Exception as exc:  # the node died, the worker could not start: it did not read the marker
            hostname, seen, why = "", None, f"the probe task failed: {type(exc).__name__}: {exc}"
        views.append(NodeView(node["NodeID"], node["NodeManagerAddress"], hostname, seen, why))
    for ref in pending:
        ray.cancel(ref, force=True)
        node = refs[ref]
        why = f"did not answer within the probe's timeout of {timeout_s:g} s"
        views.append(NodeView(node["NodeID"], node["NodeManagerAddress"], node.get("NodeManagerHostname", ""),
                              None, why))  # fmt: skip
    return views


def refusal(
    storage: str, marker: Path, nonce: str, views: list[NodeView], timeout_s: float, nodes: int
) -> str:
    """The error message for the nodes that did not see the driver's marker; "" when all did."""
    blind = []
    for view in views:
        if view.seen is None:
            blind.append(view)
        elif view.seen != nonce:
            blind.append(NodeView(view.node_id, view.address, view.hostname, view.seen,
                                  "found the marker with another nonce: a folder of its own at the same path"))  # fmt: skip
    if not blind:
        return ""
    lines = "\n".join(f"  - {view.describe()}" for view in blind)
    return (
        f"search storage {storage} is not shared by the {nodes} alive nodes of the Ray cluster: the driver "
        f"wrote the marker {marker} there, and {len(blind)} node(s) could not read it back "
        f"(probe timeout {timeout_s:g} s per node):\n{lines}\n"
        "Trial checkpoints, Tune's state and exports live in the storage, and Ray syncs nothing between "
        "nodes. Use shared storage: set `storage:` in the search spec to an NFS path mounted at the same "
        "place on every node, or to s3://bucket/prefix."
    )


def check_shared_storage(storage: str, timeout_s: float = PROBE_TIMEOUT_S) -> list[NodeView]:
    """Refuse a local ``storage`` folder that another alive node of the connected Ray cluster does not
    share (:class:`NodeLocalStorageError`). Returns what each probed node saw (nothing probed: [])."""
    import ray

    folder = local_storage_path(storage)
    alive = [node for node in ray.nodes() if node.get("Alive")]
    if folder is None or len(alive) < 2:
        return []
    from ray.util.client import ray as ray_client

    # A Ray Client driver (ray://) writes the marker on its own machine, which is no node: probe all.
    here = None if ray_client.is_connected() else ray.get_runtime_context().get_node_id()
    others = [node for node in alive if node["NodeID"] != here]
    nonce = secrets.token_hex(16)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f".edgeseg-storage-probe-{socket.gethostname()}-{os.getpid()}"
    marker.write_text(nonce)
    try:
        views = probe_nodes(marker, others, timeout_s)
    finally:
        marker.unlink(missing_ok=True)
    message = refusal(storage, marker, nonce, views, timeout_s, len(alive))
    if message:
        raise NodeLocalStorageError(message)
    return views
