"""Searcher proposals that survive a killed driver: stable trial ids and a write-ahead journal.

Tune saves its experiment state (trials and searcher) at most every ``TUNE_GLOBAL_CHECKPOINT_S``
(10 s, longer when saving is slow). A driver killed between two saves forgets the trials it created
since the last one although they ran: their checkpoints and MLflow runs exist. Tune's grid generator
gets away with it, because after a restore it proposes the same configurations again under the same
trial ids (a fixed prefix and a counter), and each replayed trial finds its checkpoints and MLflow
run. A ``Searcher`` such as OptunaSearch does not: Tune gives its trials random ids, and the restored
sampler, rewound to the last save, proposes the forgotten configurations again under new ids. Seen
here: a trial that had finished trained a second time, and a killed trial's MLflow run stayed RUNNING
for good (8 runs for 6 samples).

:class:`ResumableSearchGenerator` gives a searcher the grid's guarantee. Trial ids are
``<prefix>_<counter>``, and every proposal is written to ``proposals/<trial id>.json`` in the search's
control folder before Tune gets the trial. After a restore, a counter the journal holds is proposed
again with its id and configuration, and the searcher records it as its own (Optuna's study gets it as
an enqueued trial, so the study stays whole); past the journal the searcher proposes anew.
"""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.search_generator import SearchGenerator

from edgeseg.search.storage import StorageFolder


class ReplayMismatchError(RuntimeError):
    """A searcher proposed something else than its journal holds for a trial id (never silently)."""


class ResumableOptunaSearch(OptunaSearch):
    """OptunaSearch that can be told what to propose for a trial id (a replayed proposal)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._replays: dict[str, dict[str, Any]] = {}  # saved with the searcher's state

    def replay(self, trial_id: str, config: dict[str, Any]) -> None:
        self._replays[trial_id] = config

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = self._replays.pop(trial_id, None)
        if config is not None and trial_id not in self._ot_trials:
            space, study = self._space, self._ot_study
            if not isinstance(space, dict) or study is None:  # define-by-run: edgeseg never builds one
                raise TypeError(f"trial {trial_id}: only a search space of distributions can be replayed")
            # Optuna's own way to fix a trial's parameters; the sampler draws nothing for it.
            study.enqueue_trial({str(name): _at(config, str(name)) for name in space})
        return super().suggest(trial_id)


def _at(config: dict[str, Any], flat_name: str) -> Any:
    """The value of Optuna's parameter ``a/b`` (OptunaSearch flattens the space with ``/``) in a config."""
    value: Any = config
    for part in flat_name.split("/"):
        value = value[part]
    return value


class ResumableSearchGenerator(SearchGenerator):
    """A ``SearchGenerator`` with trial ids ``<prefix>_<counter>`` and a journal of its proposals."""

    def __init__(self, searcher: Searcher, journal_uri: str) -> None:
        super().__init__(searcher)
        self.journal_uri = journal_uri
        self.id_prefix = uuid.uuid4().hex[:5]  # fixed for the search: pickled with the Tuner
        self._replaying = True  # until the first counter the journal does not hold
        self._looked_up: tuple[str, dict[str, Any] | None] = ("", None)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_parser", None)  # rebuilt on load
        state["_replaying"] = True  # a restored generator looks in the journal again
        state["_looked_up"] = ("", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from ray.tune.experiment.config_parser import _make_parser

        self.__dict__.update(state)
        self._parser = _make_parser()

    def _journaled(self, trial_id: str) -> dict[str, Any] | None:
        if not self._replaying:
            return None
        if self._looked_up[0] == trial_id:  # asked again while the concurrency limit held it back
            return self._looked_up[1]
        folder = StorageFolder(self.journal_uri)
        if not folder.exists(f"{trial_id}.json"):
            self._replaying = False  # the journal is contiguous: nothing after this counter either
            return None
        config = dict(json.loads(folder.read_text(f"{trial_id}.json"))["config"])
        self._looked_up = (trial_id, config)
        return config

    def create_trial_if_possible(self, experiment_spec: dict[str, Any]) -> Any:
        from ray.tune.experiment.config_parser import _create_trial_from_spec
        from ray.tune.search.variant_generator import _resolve_nested_dict, format_vars
        from ray.tune.utils.util import flatten_dict, merge_dicts

        trial_id = f"{self.id_prefix}_{self._counter + 1:05d}"
        journaled = self._journaled(trial_id)
        if journaled is not None:
            _base(self.searcher).replay(trial_id, journaled)
        suggested = self.searcher.suggest(trial_id)
        if suggested == Searcher.FINISHED:
            self._finished = True
            return None
        if suggested is None:  # the concurrency limit, or the searcher waits
            return None
        if journaled is None:
            # written before Tune starts the trial: a driver killed from now on replays it
            StorageFolder(self.journal_uri).write_text(f"{trial_id}.json", json.dumps({"config": suggested}))
        elif suggested != journaled:
            raise ReplayMismatchError(
                f"trial {trial_id}: the searcher proposed {suggested!r} on resume, but its journal "
                f"{self.journal_uri}/{trial_id}.json holds {journaled!r}"
            )
        spec = copy.deepcopy(experiment_spec)
        spec["config"] = merge_dicts(spec["config"], copy.deepcopy(suggested))
        self._counter += 1
        tag = f"{self._counter}_{format_vars(_resolve_nested_dict(spec['config']))}"
        return _create_trial_from_spec(
            spec,
            self._parser,
            evaluated_params=flatten_dict(suggested),
            experiment_tag=tag,
            trial_id=trial_id,
        )


def _base(searcher: Searcher) -> Any:
    while hasattr(searcher, "searcher"):  # ConcurrencyLimiter and other wrappers
        searcher = searcher.searcher
    if not hasattr(searcher, "replay"):
        raise TypeError(f"{type(searcher).__name__} cannot replay a journaled proposal")
    return searcher


def resumable_optuna(
    sampler: Any, metric: str, mode: str, max_concurrent: int, journal_uri: str
) -> ResumableSearchGenerator:
    """OptunaSearch with a concurrency limit, stable trial ids and a journal of its proposals."""
    searcher = ResumableOptunaSearch(sampler=sampler, metric=metric, mode=mode)
    return ResumableSearchGenerator(ConcurrencyLimiter(searcher, max_concurrent=max_concurrent), journal_uri)
