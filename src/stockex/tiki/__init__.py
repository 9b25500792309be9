"""The upstream: Tiki-Exchange one-minute k-lines (client) and a local stand-in (simulator)."""

from __future__ import annotations

from stockex.tiki.client import (
    DEFAULT_BASE_URL,
    Kline,
    TikiClient,
    UpstreamDataError,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "Kline",
    "TikiClient",
    "UpstreamDataError",
    "UpstreamError",
    "UpstreamRejected",
    "UpstreamUnavailable",
]
