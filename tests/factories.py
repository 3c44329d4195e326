"""Bundles built in memory for tests that need no worker (domain and store tests)."""

from __future__ import annotations

from typing import Any

from process_manager import saga, transition
from process_manager.bundle import Bundle
from process_manager.messages import example_request, parse_request


def fresh_bundle(**changes: Any) -> Bundle:
    """A bundle as the intake builds it from a valid request, not stored yet."""
    return Bundle.from_request(parse_request(example_request(**changes)))


def new_bundle(**changes: Any) -> Bundle:
    """A bundle just initialized: its first version, history opened."""
    fresh = fresh_bundle(**changes)
    return transition.apply_initial(fresh, saga.initialized(fresh))
