"""``python generate_on_ranks.py OUT.json key=value ...``: greedy outputs of ``model.path`` on the gui_grounding
eval split (one sample per batch) through ``mmrl.evaluate.generate_outputs``, written with the number of
processes by the main process; run under ``accelerate launch`` by tests/e2e/test_train.py to compare several ranks
with one process."""
import json
import sys
from pathlib import Path

from mmrl.config import TrainConfig, load_config
from mmrl.data import load_context, media_cache
from mmrl.evaluate import generate_outputs, process_state
from mmrl.models.load import load_policy, placeholder_ids
from mmrl.task import opened


def main(out: str, overrides: list[str]) -> list[str]:
    cfg = load_config(TrainConfig, None, overrides)
    state = process_state()
    with state.main_process_first(), opened("gui_grounding", cfg.data) as (task, data_cfg):  # as the trainer: the
        samples = task.load("eval", data_cfg, load_context(cfg.model, "qwen2_5_vl"))  # main rank writes the data
    model, processor, _ = load_policy(cfg.model)
    outputs = generate_outputs(model, processor, samples, media_cache(cfg.model, "qwen2_5_vl"), batch_size=1,
                               max_new_tokens=cfg.eval.max_new_tokens,
                               suppress_ids=placeholder_ids(processor.tokenizer), progress=False)
    if state.is_main_process:
        Path(out).write_text(json.dumps({"processes": state.num_processes, "outputs": outputs}))
    return outputs


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
    process_state().destroy_process_group()  # under accelerate launch: leaving the group open can abort at exit
