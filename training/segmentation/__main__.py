"""Entry point of ``python -m training.segmentation``."""

import sys

from training.segmentation.job import main

sys.exit(main())
