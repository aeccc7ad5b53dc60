"""Training job: load the offline store, fit, export to ONNX, verify and register.

Run the chapter-3 single split with ``python -m training.train`` and the
chapter-5 prequential protocol (search, refit per test fold, report) with
``python -m training.prequential``, which ``make train`` runs. The split, the
known-compromised card filter and the metrics in :mod:`training.evaluation`
follow the chapter-3 baseline protocol of the fraud-detection handbook (Le
Borgne et al., 2022) and also work on scores that come from the scorer over
HTTP.
"""
