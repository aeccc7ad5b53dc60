"""Waiting for a scorer process started by the demo or a benchmark."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx

from deploy.stack import log_tail

READY_TIMEOUT_SECONDS = 90


def wait_ready(base_url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Wait for ``/readyz`` to return 200.

    Raises:
        RuntimeError: if the scorer exits or is not ready in time; the message
            ends with the last lines of its log.
    """
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the scorer exited:\n{log_tail(log_path)}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(
        f"the scorer was not ready in {READY_TIMEOUT_SECONDS} s:\n{log_tail(log_path)}"
    )
