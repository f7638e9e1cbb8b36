"""Hyper-parameter search (`bloodmnist tune`): Optuna trials, each an ordinary run folder.

space.py reads SPACE.yaml, objective.py runs one trial, study.py holds storage, sampler, pruner
and the worker loop, workers.py the worker processes, results.py/report.py the outputs.
"""
