"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest


@pytest.fixture
def forward_calls(monkeypatch) -> list:
    """Count the forward passes the extractor runs (one entry per batch)."""
    from featurecache.engines._runner import ShardRunner

    calls = []
    original = ShardRunner._forward

    def forward(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ShardRunner, "_forward", forward)
    return calls


@pytest.fixture(autouse=True)
def _offline(monkeypatch) -> None:
    """Tests never touch the network: downloads are off unless a test turns them on."""
    monkeypatch.setenv("FEATURECACHE_OFFLINE", "1")
