"""``python crash_on_ranks.py STEP TASK key=value ...``: what ``mmrl train TASK key=value ...`` does, every rank dying
at once (``os._exit``: no clean-up, no final model, as if killed) when RL step STEP is done; run under ``accelerate
launch`` by tests/e2e/test_train.py to resume several ranks from their last checkpoint."""
import os
import sys

from mmrl.config import TrainConfig, default_config, load_config
from mmrl.trainer import train


def main(step: int, task: str, overrides: list[str]) -> None:
    def die(done: int) -> None:
        if done == step:
            os._exit(3)

    train(load_config(TrainConfig, default_config(task), [f"task={task}", *overrides]), on_step=die)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3:])
