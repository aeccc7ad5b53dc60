"""Errors of the training job; the CLI maps each class to its exit code."""

from __future__ import annotations


class TrainingError(Exception):
    """Base class of the errors the training job raises on purpose."""


class InputDataError(TrainingError, ValueError):
    """The offline store or a split lacks data that a step needs (exit code 2)."""


class VerificationError(TrainingError):
    """The exported model disagrees with the trained one or breaks a constraint.

    The CLI exits with code 1 and does not register the model.
    """
