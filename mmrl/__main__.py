"""``python -m mmrl ...`` (what ``accelerate launch -m mmrl`` runs)."""
from mmrl.cli import main

main()
