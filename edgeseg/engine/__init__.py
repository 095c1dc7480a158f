"""The model layer's engine: one trial, no Ray, no MLflow.

- ``prepare.py``: a config -> data sets, backbone, feature caches, class weights, a head
- ``loop.py``: ``train_one_epoch`` and ``evaluate`` (data-parallel when a process group is up)
- ``checkpoint.py``: save, load and rebuild a head from a checkpoint; resume state
- ``fit.py``: ``fit`` (epochs, checkpoints, a reporter per epoch) and ``train`` (``edgeseg train``)
"""
