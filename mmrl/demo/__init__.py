"""The rollout inspector (``mmrl demo RUN_DIR``): ``runs`` reads a run directory, ``tables`` and ``render`` turn
it into tables and pictures, ``app`` wires them into a Gradio page."""
