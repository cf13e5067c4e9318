"""alpacon-agent: the on-server half of the workspace audit system."""

from __future__ import annotations

__version__ = "0.1.0"
