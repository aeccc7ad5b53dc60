"""Customer segmentation: cluster numeric profiles and publish the segments.

Run ``python -m training.segmentation --help``. Training reads the published
segments with :func:`load_segments`; the scorer reads them from Redis with
:func:`fraudcore.segments.segment_of`.
"""

from training.segmentation.analysis import Analysis, analyse
from training.segmentation.config import METHODS, SegmentationConfig
from training.segmentation.profiles import (
    build_customer_profiles,
    load_customer_profiles,
)
from training.segmentation.publish import load_segments, offline_versions

__all__ = [
    "METHODS",
    "Analysis",
    "SegmentationConfig",
    "analyse",
    "build_customer_profiles",
    "load_customer_profiles",
    "load_segments",
    "offline_versions",
]
