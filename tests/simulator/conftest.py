"""The simulator tier: one simulator server per module, its state reset for every test."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from partner_simulator.server import SimulatorClient, SimulatorServer


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    with SimulatorServer() as running:
        yield running


@pytest.fixture
def sim(server: SimulatorServer) -> Iterator[SimulatorClient]:
    with server.client() as client:
        client.reset()
        yield client


@pytest.fixture
def http(server: SimulatorServer, sim: SimulatorClient) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10.0) as client:
        yield client
