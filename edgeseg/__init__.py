"""edgeseg: searches and feature ablations of ROI-based person segmentation heads on Ray + MLflow."""

__version__ = "0.1.0"
