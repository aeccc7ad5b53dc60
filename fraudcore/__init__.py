"""Definitions that every part of the platform must agree on.

The transaction and label schemas, the feature names and windows, and the model
input order live here once, so the stream job, the training job and the scorer
cannot drift apart.
"""
