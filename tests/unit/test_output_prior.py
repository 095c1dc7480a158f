"""``model.output_prior``: the head's logit bias starts from where each class lies in the training ROIs.

``prepare`` derives ``log p(class | mask cell)`` from the (cached) pixel statistics of the training
targets plus the loss's ``log w_class``; ``fit`` starts the head's :class:`OutputPrior` from it, trains it
with the rest of the head, and the checkpoint carries it (a resumed or exported head has the trained one).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY_FIT

from edgeseg.config import ConfigError, load_config
from edgeseg.data.stats import log_position_prior
from edgeseg.engine.checkpoint import head_from_checkpoint, load_checkpoint
from edgeseg.engine.fit import fit
from edgeseg.engine.prepare import prepare, training_statistics

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TINY = {**TINY_FIT, "model.output_prior": "spatial", "train.epochs": 1}


def test_prior_comes_from_the_training_targets_and_the_class_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path / "home"))
    weighted = prepare(
        load_config("baseline", overrides={**TINY, "loss.class_weights": "1,2,4"}), log=lambda _: None
    )
    plain = prepare(
        load_config("baseline", overrides={**TINY, "loss.class_weights": "none"}), log=lambda _: None
    )
    expected = log_position_prior(training_statistics(plain.train))
    assert expected.shape == (3, 8, 8)
    # ROIs are centred on their own person: the middle of the mask is more likely target than the rim.
    assert expected[1, 3:5, 3:5].mean() > expected[1, [0, -1]].mean()
    np.testing.assert_allclose(np.asarray(plain.output_prior), expected)
    np.testing.assert_allclose(
        np.asarray(weighted.output_prior), expected + np.log([1.0, 2.0, 4.0])[:, None, None]
    )
    off = prepare(
        load_config("baseline", overrides={**TINY, "model.output_prior": "none"}), log=lambda _: None
    )
    assert off.output_prior is None


def test_fit_starts_from_the_prior_trains_it_and_checkpoints_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path / "home"))
    config = load_config("baseline", overrides=TINY)
    prepared = prepare(config, log=lambda _: None)
    result = fit(config, run_dir=tmp_path / "run", prepared=prepared, log=lambda _: None)
    head, _, _ = head_from_checkpoint(load_checkpoint(result.last_checkpoint))
    assert head.prior is not None
    start = torch.tensor(prepared.output_prior, dtype=torch.float32)
    start = start - start.mean(dim=0, keepdim=True)
    trained = head.prior.bias.detach()[0]
    assert (trained - start).abs().max() > 1e-4  # trained with the head
    assert (trained - start).abs().max() < 0.5  # from the prior, not from zero
    assert torch.corrcoef(torch.stack([trained.flatten(), start.flatten()]))[0, 1] > 0.9


def test_unknown_output_prior_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="model.output_prior"):
        load_config("baseline", overrides={"model.output_prior": "learned"})
