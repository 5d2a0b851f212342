"""Matplotlib figures the lessons draw. Each function takes data, returns the Figure, and never calls plt.show()."""

from __future__ import annotations
