"""Task registry: name -> adapter. The engine reaches concrete tasks only through here."""
from __future__ import annotations

import importlib

from mmrl.errors import ConfigError

TASKS = {
    "gui_grounding": "tasks.gui_grounding:GuiGrounding",
    "temporal_grounding": "tasks.temporal_grounding:TemporalGrounding",
}
"""Task name -> ``module:Class`` of its adapter (imported on first use)."""


def get_task(name: str):
    """Instantiate the adapter registered as ``name``; an unknown name lists the valid ones."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; valid: {', '.join(sorted(TASKS))}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)()
