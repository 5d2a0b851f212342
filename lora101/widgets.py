"""ipywidgets explorers the lessons use. Each function returns a widget; the computation lives in the package modules."""

from __future__ import annotations
