"""Fitness: calibration and evaluation data, metrics, and the evaluators that score genomes."""
