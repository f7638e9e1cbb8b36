"""Ensembles of finished runs: averaged probabilities, written as a run-like folder."""
