"""``mmrl demo RUN_DIR``: a Gradio app over one run directory (VLM or diffusion).

The page has two panels side by side, A and B, each showing one step: choose the step and a group, click a row of
the sample table (sorted failures first, best first or as logged) and the panel shows the task-aware picture
(``mmrl.demo.render``), the prompt and completion, and the reward table. Above them the two steps' summaries
stand side by side; below, the training curves from ``metrics.jsonl``. A timer re-reads the run every
``refresh_seconds``, so a run still training shows its new steps and curves without a restart.

Security: the server binds 127.0.0.1 unless told otherwise. It serves no file of the run directory itself: the
pictures are drawn here from files that ``RunView.file`` resolved inside the run, and Gradio serves the PNGs it
saved of them from its own cache folder (``launch``). Text from the run is shown as text (``mmrl.demo.text``):
prompts and completions in text boxes, cut at ``DISPLAY_CHARS`` with a marker; names and messages in the Markdown
panels escaped.
"""
import os
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from mmrl.demo import tables
from mmrl.demo.render import RenderError, renderer_for
from mmrl.demo.runs import RunView, Sample, StepRollouts
from mmrl.demo.text import for_display, markdown_literal, visible
from mmrl.plugins import RENDERERS

NO_STEP = "none"


@dataclass
class Panel:
    """The components of one side (A or B)."""

    step: object
    group: object
    table: object
    keys: object
    notes: object
    picture: object
    prompt: object
    completion: object
    rewards: object


def _problems(messages: list[str]) -> str:
    """The messages as Markdown, one line each, escaped: they quote paths and names from the run's files."""
    return "\n\n".join(f"⚠️ {markdown_literal(m)}" for m in messages)


class Viewer:
    """What the callbacks compute, independent of the page layout (tests call it directly)."""

    def __init__(self, run_dir: str | Path):
        self.view = RunView(run_dir)
        self.settings = {"alpha": float((self.view.config().get("data") or {}).get("alpha", 0.5))}

    def step_choices(self, optional: bool = False) -> list:
        steps = self.view.steps()
        return ([NO_STEP] if optional else []) + steps

    def rollouts(self, step) -> StepRollouts | None:
        return None if step in (None, "", NO_STEP) else self.view.rollouts(int(step))

    def run_info(self) -> str:
        steps = self.view.steps()
        latest = f", latest step {steps[-1]}" if steps else ""
        root, kind = markdown_literal(str(self.view.root)), markdown_literal(self.view.kind())
        return f"**{root}** · task *{kind}* · {len(steps)} steps with rollouts{latest}"

    def sample_view(self, rollouts: StepRollouts, sample: Sample | None):
        """(picture, prompt, completion, reward table, notes) of one sample; prompt and completion ``for_display``."""
        if sample is None:
            return None, "", "", None, _problems(rollouts.problems) or "No samples in this step."
        group = rollouts.groups[sample.group]
        notes = list(rollouts.problems)
        renderer = renderer_for(self.view.kind(), group)
        try:
            picture = RENDERERS.get(renderer)(self.view, group, sample, self.settings)
        except RenderError as exc:
            picture, notes = None, notes + [f"cannot draw this sample: {exc}"]
        answer = group.get("answer")
        source = f"rollouts/step_{rollouts.step:06d}.jsonl"
        prompt = for_display(str(group.get("prompt", "")) + (f"\n\n[ground truth] {answer}" if answer else ""), source)
        completion = (for_display(sample.completion, source) if sample.completion is not None
                      else f"(image #{sample.index})")
        legend = RENDERERS.capability(renderer, "legend") if picture is not None else ""
        return picture, prompt, completion, tables.reward_frame(sample), "\n\n".join(
            part for part in (_problems(notes), legend) if part)

    def plot_frames(self) -> tuple[list, str]:
        rows, problems = self.view.metrics()
        return [tables.plot_frame(rows, keep) for _, keep in tables.PLOTS.values()], _problems(problems)

    def plots(self) -> tuple[list, str]:
        """The curves as plot updates (a curve this run does not log says so in its label), and problems."""
        frames, problems = self.plot_frames()
        updates = [gr.LinePlot(value=frame, label=title if len(frame) else f"{title}: not logged by this run")
                   for frame, (title, _) in zip(frames, tables.PLOTS.values())]
        return updates, problems

    def metrics_signature(self) -> tuple:
        """Changes whenever ``metrics.jsonl`` or the rollout folder does (cheap: two ``stat`` calls)."""
        sig = []
        for name in ("metrics.jsonl", "rollouts"):
            try:
                st = os.stat(self.view.root / name)
                sig.append((st.st_mtime_ns, st.st_size))
            except OSError:
                sig.append(None)
        return tuple(sig)


def _panel(name: str):
    suffix = name.lower()
    with gr.Column():
        with gr.Row():
            step = gr.Dropdown(label=f"Step {name}", elem_id=f"step-{suffix}", choices=[], scale=1)
            group = gr.Dropdown(label="Group", elem_id=f"group-{suffix}", choices=[tables.ALL_GROUPS],
                                value=tables.ALL_GROUPS, scale=2)
        notes = gr.Markdown(elem_id=f"notes-{suffix}", latex_delimiters=[])
        table = gr.Dataframe(label="Samples (click a row)", elem_id=f"samples-{suffix}", interactive=False,
                             max_height=320, wrap=True)
        keys = gr.State([])
        picture = gr.Image(label="Sample", elem_id=f"picture-{suffix}", type="pil", format="png",
                           interactive=False, height=420)
        prompt = gr.Textbox(label="Prompt", elem_id=f"prompt-{suffix}", interactive=False, lines=3)
        completion = gr.Textbox(label="Completion", elem_id=f"completion-{suffix}", interactive=False, lines=2)
        rewards = gr.Dataframe(label="Rewards", elem_id=f"rewards-{suffix}", interactive=False)
    return Panel(step, group, table, keys, notes, picture, prompt, completion, rewards)


def _picker(choices: list, value) -> gr.Dropdown:
    """A step picker with ``choices``, keeping ``value`` selectable even if its rollout file has gone (the panel
    then says so, instead of Gradio rejecting the value)."""
    kept = choices + [value] if value is not None and value not in choices else choices
    return gr.Dropdown(choices=kept, value=value)


def build_app(run_dir: str | Path, refresh_seconds: float = 5.0):
    """The Gradio ``Blocks`` app over ``run_dir`` (launch it with ``launch``)."""
    viewer = Viewer(run_dir)

    def show_step(step, group, order):
        rollouts = viewer.rollouts(step)
        if rollouts is None:
            return (gr.Dropdown(choices=[tables.ALL_GROUPS], value=tables.ALL_GROUPS), None, [], None, "", "", None,
                    "Choose a step.")
        choices = tables.group_choices(rollouts)
        group = group if group in choices else tables.ALL_GROUPS
        samples = tables.chosen_samples(rollouts, group, order)
        keys = [(s.group, s.index) for s in samples]
        first = viewer.sample_view(rollouts, samples[0] if samples else None)
        return (gr.Dropdown(choices=choices, value=group), tables.sample_frame(rollouts, samples), keys, *first)

    def show_sample(step, keys, evt: gr.SelectData):
        rollouts = viewer.rollouts(step)
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if rollouts is None or not isinstance(row, int) or not 0 <= row < len(keys):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        g, i = keys[row]
        sample = next((s for s in rollouts.samples() if (s.group, s.index) == (g, i)), None)
        return viewer.sample_view(rollouts, sample)

    def summary(step_a, step_b):
        return tables.summary_frame(viewer.rollouts(step_a), viewer.rollouts(step_b))

    def run_state(step_a, step_b):
        """The run as of now: its change signature, the header, both step pickers and the curves."""
        plots, problems = viewer.plots()
        info = "\n\n".join(part for part in (viewer.run_info(), problems) if part)
        return (viewer.metrics_signature(), info, _picker(viewer.step_choices(), step_a),
                _picker(viewer.step_choices(optional=True), step_b), *plots)

    def start():
        """Page load: panel A on the latest step, panel B on the first (when there are two)."""
        steps = viewer.step_choices()
        return run_state(steps[-1] if steps else None, steps[0] if len(steps) > 1 else NO_STEP)

    def refresh(step_a, step_b, signature):
        """Timer tick: new steps and curves if the run changed since the last tick, else nothing."""
        if viewer.metrics_signature() == signature:
            return (gr.skip(),) * (4 + len(tables.PLOTS))
        return run_state(step_a, step_b)

    with gr.Blocks(title=f"mmrl demo · {visible(viewer.view.root.name)}") as app:
        signature = gr.State(None)
        info = gr.Markdown(elem_id="run-info", latex_delimiters=[])
        order = gr.Radio(list(tables.ORDERS), value=tables.ORDERS[0], label="Sort samples", elem_id="order")
        summary_table = gr.Dataframe(label="Steps side by side", elem_id="summary", interactive=False)
        with gr.Row(equal_height=False):
            panels = [_panel("A"), _panel("B")]
        with gr.Accordion("Training curves", open=True):
            with gr.Row():
                plots = [gr.LinePlot(x="step", y="value", color="series", title=title, label=title,
                                     elem_id=f"plot-{key}", height=260)
                         for key, (title, _) in tables.PLOTS.items()]
        timer = gr.Timer(refresh_seconds)
        a, b = panels
        start_outputs = [signature, info, a.step, b.step, *plots]
        app.load(start, outputs=start_outputs)
        timer.tick(refresh, inputs=[a.step, b.step, signature], outputs=start_outputs)
        for p in panels:
            step_outputs = [p.group, p.table, p.keys, p.picture, p.prompt, p.completion, p.rewards, p.notes]
            for trigger in (p.step.change, p.group.input, order.input):
                trigger(show_step, inputs=[p.step, p.group, order], outputs=step_outputs)
            p.table.select(show_sample, inputs=[p.step, p.keys],
                           outputs=[p.picture, p.prompt, p.completion, p.rewards, p.notes])
            p.step.change(summary, inputs=[a.step, b.step], outputs=summary_table)
    return app


def launch(run_dir: str | Path, host: str = "127.0.0.1", port: int | None = 7860, block: bool = True,
           refresh_seconds: float = 5.0):
    """Serve the app on ``host:port`` (127.0.0.1 by default: only this machine can connect). Returns the app
    (``block=False`` returns at once; call ``app.close()``).

    The server reads no file of the run directory on request: no ``allowed_paths``, because a run's ``media/`` holds
    copies of whatever files its data set named, and Gradio would serve an ``.html`` one there as a page of this
    site. What it serves from disk is its own front end and the PNGs it saved of the pictures drawn here, in its
    cache folder (``GRADIO_TEMP_DIR``, by default ``/tmp/gradio``); the examples cache, which this page never uses,
    is blocked, uploads are refused (``max_file_size=0``: the page takes none) and the traffic monitor is off."""
    app = build_app(run_dir, refresh_seconds)
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=not block, footer_links=[],
               blocked_paths=[str(gr.utils.get_cache_folder().resolve())], max_file_size=0, enable_monitoring=False)
    return app
