"""Analysis layer: MLflow runs of a search -> trial tables and cross-feature ablation tables.

Reads MLflow only (pandas, no torch), so a report can be made on any machine that reaches the
tracking store.
"""
