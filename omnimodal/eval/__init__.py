"""Evaluation: a run's held-out questions (``heldout``) and benchmark-style task files.

- ``tasks.py``: task YAML -> items (prompt template, options, few-shot, CircularEval rotations)
- ``metrics.py``: answer extraction and metrics (exact match, VQA accuracy, multiple choice,
  numeric tolerance, yes/no P/R/F1)
- ``runner.py``: asks a model in-process or through an OpenAI-compatible endpoint, scores,
  computes the baselines (chance, blind_frequent, blind_model)
- ``report.py``: printed table, JSON per task, PNG chart, comparison of two runs
- ``heldout.py``: the end-of-training evaluation on the run's own test file (``eval.json``)

Importing this package stays light; the runner imports torch only in-process.
"""
