"""Stages, training and evaluation loops, MLflow registry code, the typed config and the CLI."""
