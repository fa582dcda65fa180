"""Task adapters: load records, build prompts, parse answers, reward and grade.

Importing this package registers mmrl's tasks (``pyproject.toml`` names it in the ``mmrl.plugins`` entry-point
group, the way a plugin package names its own module).
"""
from tasks import cad_code, caption_qa, detection, gui_grounding, temporal_grounding  # noqa: F401  (registers)
