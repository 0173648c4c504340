"""Scoring predictions: SQuAD EM/F1 as the official scripts compute them (:mod:`.squad`).

Pure Python on strings, no torch: the training loop, ``qa-ray score`` and the report all score
with these functions. May import only :mod:`qa_ray.errors` and :mod:`qa_ray.metrics`.
"""
