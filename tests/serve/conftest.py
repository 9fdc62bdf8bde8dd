"""Servers the serve tests share: the tiny model behind an API key, and a one-slot server of an endless model
for queueing and disconnects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serving import AUTH, KEY, Server, build_endless_model_dir

from gristmill.model.io import load_for_inference
from gristmill.serve.app import create_app
from gristmill.serve.config import ServeConfig


@pytest.fixture(scope="session")
def tiny_app(tiny_model_dir: Path):
    return create_app(tiny_model_dir, ServeConfig(max_tokens=16, device="cpu", weights="fp32"), api_key=KEY)


@pytest.fixture(scope="session")
def base(tiny_app) -> Iterator[str]:
    with Server(tiny_app) as url:
        yield url


@pytest.fixture(scope="session")
def client(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, headers=AUTH, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def loaded(tiny_model_dir: Path):
    return load_for_inference(tiny_model_dir, "cpu")


@pytest.fixture(scope="session")
def endless_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_endless_model_dir(tiny_model_dir, tmp_path_factory.mktemp("endless") / "model")


@pytest.fixture(scope="session")
def one_slot(endless_dir: Path) -> Iterator[tuple[str, object]]:
    """(url, app) of an open server with one sequence slot and room for one waiting request."""
    cfg = ServeConfig(device="cpu", max_batch=1, max_queue=1, api_key_env="GRISTMILL_TEST_UNSET_KEY", weights="fp32")
    app = create_app(endless_dir, cfg)
    with Server(app) as url:
        yield url, app
