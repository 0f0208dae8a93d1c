"""Shared test set-up.

Engine tests (tests/engine) import ``zoodip`` directly and must never pull in the host;
the ``host`` fixture imports and starts ComfyUI only when a test asks for it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    # Engine tests import the engine as `zoodip`; devtools is imported the same way.
    sys.path.insert(0, str(REPO_ROOT))

if TYPE_CHECKING:
    from devtools.host import HeadlessHost

SLOW_ENV = "ZOODIP_SLOW"
HOST_FREE_DIRS = (REPO_ROOT / "tests" / "engine",)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"slow: long-running test; skipped unless {SLOW_ENV}=1"
    )


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    run_slow = os.environ.get(SLOW_ENV) == "1"
    skip_slow = pytest.mark.skip(reason=f"slow test: set {SLOW_ENV}=1 to run")
    for item in items:
        if not run_slow and "slow" in item.keywords:
            item.add_marker(skip_slow)
        # Keep the engine testable without ComfyUI: it must not lean on the host fixture.
        if "host" in getattr(item, "fixturenames", ()) and any(
            Path(item.path).is_relative_to(d) for d in HOST_FREE_DIRS
        ):
            raise pytest.UsageError(
                f"{item.nodeid}: engine tests must not use the host fixture"
            )


@pytest.fixture(scope="session")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeadlessHost]:
    """One headless ComfyUI with the pack loaded, for the whole session.

    The host keeps its node registry and folder paths in globals and can only be set up
    once per process, hence session scope. All its folders live under a pytest temp dir.
    """
    from devtools.host import (
        HeadlessHost,  # lazy: importing the host costs seconds and torch
    )

    with HeadlessHost(tmp_path_factory.mktemp("comfy_host")) as h:
        yield h
