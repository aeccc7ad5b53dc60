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


class DataContractError(TrainingError):
    """A training set failed the data contract of :mod:`training.contract`.

    ``report`` lists each failed expectation on its own line. The CLI exits with
    code 3 and fits nothing.
    """

    def __init__(self, report: str) -> None:
        super().__init__(report)
        self.report = report
