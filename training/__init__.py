"""Training job: load the offline store, fit, export to ONNX, verify and register.

Run it with ``python -m training.train``. The split, the known-compromised card
filter and the metrics in :mod:`training.evaluation` follow the chapter-3 baseline
protocol of the fraud-detection handbook (Le Borgne et al., 2022) and also work on
scores that come from the scorer over HTTP.
"""
