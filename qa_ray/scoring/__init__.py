"""Scoring predictions: SQuAD EM/F1 as the official scripts compute them, and where a trial
loses its F1.

- :mod:`.squad`: EM/F1, the SQuAD 2.0 no-answer threshold (``best_exact`` / ``best_f1``);
- :mod:`.breakdown`: an error breakdown of a trial's final predictions (overlap with the
  reference, answer lengths, SQuAD 2.0 abstentions, F1 by question word), with the official
  scorer's normalization.

Pure Python on strings, no torch, Ray or MLflow: the training loop, ``qa-ray score`` and the
report all score with these functions. May import only :mod:`qa_ray.errors` and
:mod:`qa_ray.metrics`.
"""
