"""A reusable Django app for blob storage, speaking ProxyStore's endpoint storage protocol."""

from __future__ import annotations

__version__ = "0.1.0"
