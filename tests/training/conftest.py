"""Fixtures of the training tests: offline stores and a model fit on the reference."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import onnxruntime as ort
import pandas as pd
import pytest

from fraudcore.settings import PlatformSettings
from training import model as classifier
from training.dataset import load_labelled_features
from training.evaluation import CHAPTER3_WINDOW, split_train_test
from training.reference import REFERENCE_FILE, build_offline_store

REFERENCE_PATH = PlatformSettings().data_dir / REFERENCE_FILE


@pytest.fixture(scope="session")
def reference_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Offline store written from the handbook's reference features file."""
    root = tmp_path_factory.mktemp("reference") / "offline"
    build_offline_store(REFERENCE_PATH, root)
    return root


@pytest.fixture(scope="session")
def reference_split(reference_store: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Chapter-3 training and filtered test rows of the reference store."""
    return split_train_test(load_labelled_features(reference_store), CHAPTER3_WINDOW)


@pytest.fixture(scope="session")
def reference_model(
    reference_split: tuple[pd.DataFrame, pd.DataFrame],
) -> lgb.LGBMClassifier:
    """The job's classifier fit on the reference training week."""
    train, _ = reference_split
    return classifier.fit_classifier(
        classifier.model_matrix(train), train["fraud"].to_numpy()
    )


@pytest.fixture(scope="session")
def reference_session(reference_model: lgb.LGBMClassifier) -> ort.InferenceSession:
    """onnxruntime session on the ONNX export of ``reference_model``."""
    return classifier.onnx_session(classifier.to_onnx(reference_model))
