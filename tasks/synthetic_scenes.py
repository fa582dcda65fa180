"""Seeded synthetic scenes of coloured shapes for captioning by QA (CapRL, arXiv 2509.22647), and the rule-based
QA judge (``QA_JUDGES`` ``"rule"``) that answers their questions from a caption alone.

Layout
------
An image is a grid of ``rows`` x ``cols`` cells of ``cell`` x ``cell`` pixels on a plain light-grey background
(``BACKGROUND``). A cell holds at most one shape, a solid fill centred in it, with a colour (``COLOURS``), a shape
(``SHAPES``) and a size (``SIZES``: a share of the cell's side; at 28 px small is 12 px across and large 24 px).
A scene has 1 to ``max_objects`` objects in distinct cells drawn at random; colours, shapes and sizes are drawn
independently, so they may repeat.

The default grid is 2 rows x 4 columns of 28 px: a 112 x 56 image (6,272 pixels). Qwen2-VL/2.5-VL cut an image
into 14-px patches and merge 2 x 2 of them into one LLM token, so one 28-px cell is exactly one visual token. Their
processor resizes an image to sides that are multiples of 28 and to at least ``min_pixels`` (3,136 = 56 x 56)
pixels; an image whose sides are already multiples of 28 and whose area is inside the pixel budget reaches the
model unchanged, cells still aligned with tokens. (One row of 4, 112 x 28, is exactly 3,136 pixels: it passes too,
but with no margin if ``min_pixels`` is raised; two rows also give the captions a reading order.)

Caption grammar
---------------
The ground-truth caption (``caption``) states the count, then every cell in reading order, one sentence per row
(rows top to bottom, cells left to right)::

    caption := COUNT " " ROW (" " ROW)*
    COUNT   := N " shapes."            N in digits; "1 shape." for one
    ROW     := "Row " R ": " CELL (", " CELL)* "."      R = 1 .. rows; all ``cols`` cells, in order
    CELL    := "empty" | SIZE " " COLOUR " " SHAPE

e.g. ``3 shapes. Row 1: small red circle, empty, large blue square, empty. Row 2: empty, empty, small green
triangle, empty.`` Listing empty cells makes the k-th cell of a row sentence the k-th cell of that image row, so
"what is left of" is read from the caption as the previous cell of the same row sentence.

Questions
---------
``questions`` asks, in this order, every question the scene determines (``TEMPLATES``):

* ``How many shapes are there?``: the number of objects (choices are numerals);
* ``What colour is the <shape>?``: for each shape that exactly one object has;
* ``What shape is the <colour> one?``: for each colour that exactly one object has;
* ``What size is the <colour> <shape>?`` and ``What is left of the <colour> <shape>?``: for each colour-and-shape
  pair that exactly one object has. The left answer is the object in the cell directly left in the same row,
  ``the <colour> <shape>``, or ``nothing`` (an empty cell, or the first column).

Each question has the correct answer and 3 to 5 distractors of the same kind (fewer when the kind has fewer
values: sizes), in a seeded order. Colour, shape and size distractors come from the whole vocabulary
(``COLOURS``, ``SHAPES``, ``SIZES``), counts from 1 to ``max(rows * cols, 6)``; the left question always offers
``nothing`` and descriptions of the scene's objects and of the settings' colour-and-shape pairs.

The rule judge
--------------
``RuleJudge`` answers only what a caption states. ``read_caption`` lowercases the caption and reads it token by
token (words, numbers, separators ``, . ; : ! ?`` and newlines), in one pass:

* ``row`` (with an optional number after it) starts a new row; text before the first ``row`` is a row of its own;
* a number (digits, or ``zero`` .. ``twelve``) directly followed by ``shape(s)`` / ``object(s)`` states the count;
* the words between two separators form a segment. In a segment, a shape word closes an object mention made of it
  and the size and colour words before it; a colour with no shape after it is a mention with no shape. Two
  different colours (or sizes) in one mention leave that attribute unknown. Each mention is a cell; a segment with
  no mention is an empty cell when it holds ``empty``, ``nothing``, ``blank`` or ``none``, an unknown cell when it
  holds other words, and no cell when it holds only numbers, the count or nothing.

The answers: the count is the stated number (several different stated numbers: no answer); when no number is
stated it is the number of mentions, since every listed object is a stated object (no mention: no answer). A
question about "the <shape>" (or "the <colour> one", "the <colour> <shape>") needs exactly one mention matching it,
with the asked attribute known. "Left of" is ``nothing`` for the first cell of a row sentence or after an empty
cell, ``the <colour> <shape>`` after a complete mention, and no answer after an unknown cell or a mention missing
its colour or shape. The judge returns the letter of the option whose text is the answer (case and surrounding
space ignored), else, and for an unrecognised question, the letter of the ``CANNOT_ANSWER`` option.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import operator
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from mmrl.colours import rgb8
from mmrl.errors import ConfigError
from mmrl.plugins import QA_JUDGES
from rewards.caption_qa import CANNOT_ANSWER, LETTERS, MCQ, Query

COLOURS = rgb8(("red", "green", "blue", "yellow", "orange", "purple", "pink", "cyan"))
"""Every colour a scene may use (``mmrl.colours``'s saturated ones), 8-bit RGB."""
SHAPES = ("circle", "square", "triangle", "diamond", "star")
"""Every shape a scene may use."""
SIZES = {"tiny": 2 / 7, "small": 3 / 7, "medium": 9 / 14, "large": 6 / 7}
"""Every size a scene may use: the shape's extent as a share of the cell's side (8, 12, 18, 24 px at 28 px)."""
BACKGROUND = (240, 240, 240)
NOTHING = "nothing"
"""The answer to "What is left of ..." when the cell on the left is empty or there is none."""
TEMPLATES = {
    "count": "How many shapes are there?",
    "colour": "What colour is the {shape}?",
    "shape": "What shape is the {colour} one?",
    "size": "What size is the {colour} {shape}?",
    "left": "What is left of the {colour} {shape}?",
}
"""The question templates, by kind; the judge parses questions with the same table."""
MIN_DISTRACTORS, MAX_DISTRACTORS = 3, 5
JSONL_NAME = "scenes.jsonl"
"""The file ``generate`` writes in its folder."""
PROGRESS_MIN = 1000
"""``generate`` shows a progress bar from this many images on."""


@dataclass(frozen=True)
class SceneSettings:
    """The generator's settings; building one checks them (``ConfigError`` naming the key)."""

    rows: int = 2
    """Cells per column."""
    cols: int = 4
    """Cells per row."""
    cell: int = 28
    """A cell's side in pixels (Qwen2/2.5-VL: 14-px patches merged 2 x 2 = 28, one visual token per cell)."""
    max_objects: int = 4
    """A scene has 1 to this many objects (at most ``rows * cols``)."""
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow")
    """Colours drawn from (names in ``COLOURS``)."""
    shapes: tuple[str, ...] = ("circle", "square", "triangle")
    """Shapes drawn from (names in ``SHAPES``)."""
    sizes: tuple[str, ...] = ("small", "large")
    """Sizes drawn from (names in ``SIZES``)."""

    def __post_init__(self):
        for key in ("rows", "cols", "cell", "max_objects"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{key}: expected an integer, got {value!r}")
        for key in ("rows", "cols"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: need at least 1, got {getattr(self, key)}")
        if max(self.rows, self.cols) > 200 * min(self.rows, self.cols):
            key = "rows" if self.rows > self.cols else "cols"
            raise ConfigError(f"{key}: the grid's aspect ratio is above 200 (the processor's limit): rows={self.rows}, "
                              f"cols={self.cols}")
        if self.cell < 14:
            raise ConfigError(f"cell: need at least 14 pixels (so the sizes stay distinct), got {self.cell}")
        if not 1 <= self.max_objects <= self.rows * self.cols:
            raise ConfigError(f"max_objects: need 1 <= max_objects <= rows * cols = {self.rows * self.cols}, got "
                              f"{self.max_objects}")
        for key, valid in (("colours", COLOURS), ("shapes", SHAPES), ("sizes", SIZES)):
            object.__setattr__(self, key, _names(key, getattr(self, key), tuple(valid)))


def _names(key: str, value: object, valid: tuple[str, ...]) -> tuple[str, ...]:
    """``value`` as a tuple of distinct names from ``valid``; ``ConfigError`` naming ``key`` otherwise."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list of names from {list(valid)}, got {value!r}")
    names = tuple(value)
    unknown = [v for v in names if v not in valid]
    if not names or unknown or len(set(names)) != len(names):
        raise ConfigError(f"{key}: need distinct names from {list(valid)}, got {list(names)}")
    return names


def check_params(params: dict, prefix: str = "") -> SceneSettings:
    """The settings ``params`` (``generate``'s keyword arguments) describe; ``ConfigError`` naming the first bad
    or unknown key, as ``<prefix>.<key>`` when ``prefix`` is given."""
    lead = f"{prefix}." if prefix else ""
    valid = [f.name for f in dataclasses.fields(SceneSettings)]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(f"{lead}{unknown[0]}: unknown scene setting; valid: {', '.join(valid)}")
    try:
        return SceneSettings(**params)
    except ConfigError as error:
        raise ConfigError(f"{lead}{error}") from None


@dataclass(frozen=True)
class SceneObject:
    """One shape: its attributes and its cell (0-based row and column)."""

    shape: str
    colour: str
    size: str
    row: int
    col: int

    @property
    def phrase(self) -> str:
        """The caption's cell text: ``small red circle``."""
        return f"{self.size} {self.colour} {self.shape}"

    @property
    def description(self) -> str:
        """How an answer names it: ``the red circle``."""
        return f"the {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A scene graph: the grid and its objects in reading order (top to bottom, left to right)."""

    rows: int
    cols: int
    objects: tuple[SceneObject, ...]

    def at(self, row: int, col: int) -> SceneObject | None:
        """The object in cell ``(row, col)``, or ``None`` (empty, or outside the grid)."""
        return next((o for o in self.objects if (o.row, o.col) == (row, col)), None)


@dataclass
class Example:
    """One generated image with its scene graph, ground-truth caption and questions."""

    scene: Scene
    image: Image.Image
    caption: str
    questions: list[MCQ]

    def record(self, name: str) -> dict:
        """The JSONL row of the example with id ``name`` (see ``generate``)."""
        return {"id": name, "image": f"images/{name}.png", "caption": self.caption,
                "qa": [{"question": q.question, "choices": list(q.choices), "answer": LETTERS[q.answer]}
                       for q in self.questions]}


# -- generation ----------------------------------------------------------------------------------------------
def make_scene(rng: np.random.Generator, settings: SceneSettings) -> Scene:
    """A random scene: 1 to ``max_objects`` objects in distinct cells, attributes drawn independently."""
    count = int(rng.integers(1, settings.max_objects + 1))
    cells = sorted(int(c) for c in rng.choice(settings.rows * settings.cols, size=count, replace=False))
    objects = tuple(
        SceneObject(shape=settings.shapes[int(rng.integers(len(settings.shapes)))],
                    colour=settings.colours[int(rng.integers(len(settings.colours)))],
                    size=settings.sizes[int(rng.integers(len(settings.sizes)))],
                    row=c // settings.cols, col=c % settings.cols)
        for c in cells)
    return Scene(settings.rows, settings.cols, objects)


def shape_box(obj: SceneObject, cell: int) -> tuple[int, int, int, int]:
    """The shape's pixel extent ``(x0, y0, x1, y1)``, inclusive, centred in its cell."""
    side = round(SIZES[obj.size] * cell)
    x0, y0 = obj.col * cell + (cell - side) // 2, obj.row * cell + (cell - side) // 2
    return x0, y0, x0 + side - 1, y0 + side - 1


def _outline(shape: str, box: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    """The polygon of a triangle (apex up), diamond or five-pointed star filling ``box``."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    radius = (x1 - x0) / 2
    angles = np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
    return [(cx + r * np.cos(a), cy - r * np.sin(a)) for r, a in zip(radii, angles)]


def render(scene: Scene, cell: int) -> Image.Image:
    """The scene as an RGB image of ``cols * cell`` x ``rows * cell`` pixels (solid fills, no anti-aliasing)."""
    image = Image.new("RGB", (scene.cols * cell, scene.rows * cell), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        box, fill = shape_box(obj, cell), COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif obj.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon(_outline(obj.shape, box), fill=fill)
    return image


def caption(scene: Scene) -> str:
    """The ground-truth caption (the grammar in the module docstring)."""
    n = len(scene.objects)
    rows = [f"Row {r + 1}: " + ", ".join(_cell_text(scene.at(r, c)) for c in range(scene.cols)) + "."
            for r in range(scene.rows)]
    return " ".join([f"{n} shape{'' if n == 1 else 's'}.", *rows])


def _cell_text(obj: SceneObject | None) -> str:
    """A cell of the caption: the object's phrase or ``empty``."""
    return "empty" if obj is None else obj.phrase


def _mcq(question: str, answer: str, pool: list[str], rng: np.random.Generator,
         forced: tuple[str, ...] = ()) -> MCQ:
    """``answer``, the ``forced`` options and random distractors from ``pool`` (3 to 5 distractors in all, fewer
    when the pool is short), in a random order."""
    forced = tuple(f for f in forced if f != answer)
    others = [p for p in dict.fromkeys(pool) if p != answer and p not in forced]
    wanted = int(rng.integers(MIN_DISTRACTORS, MAX_DISTRACTORS + 1)) - len(forced)
    picked = [others[i] for i in rng.choice(len(others), size=min(wanted, len(others)), replace=False)]
    choices = [answer, *forced, *picked]
    order = [int(i) for i in rng.permutation(len(choices))]
    return MCQ(question, tuple(choices[i] for i in order), order.index(0))


def _unique(scene: Scene, obj: SceneObject, *keys: str) -> bool:
    """Whether ``obj`` is the only object with its values of ``keys``."""
    return sum(all(getattr(o, k) == getattr(obj, k) for k in keys) for o in scene.objects) == 1


def questions(scene: Scene, rng: np.random.Generator, settings: SceneSettings) -> list[MCQ]:
    """Every question the scene determines (module docstring), choices in a seeded order."""
    n_cells = scene.rows * scene.cols
    out = [_mcq(TEMPLATES["count"], str(len(scene.objects)), [str(k) for k in range(1, max(n_cells, 6) + 1)], rng)]
    pairs = [f"the {c} {s}" for c in settings.colours for s in settings.shapes]
    for obj in scene.objects:
        if _unique(scene, obj, "shape"):
            out.append(_mcq(TEMPLATES["colour"].format(shape=obj.shape), obj.colour, list(COLOURS), rng))
        if _unique(scene, obj, "colour"):
            out.append(_mcq(TEMPLATES["shape"].format(colour=obj.colour), obj.shape, list(SHAPES), rng))
        if _unique(scene, obj, "colour", "shape"):
            out.append(_mcq(TEMPLATES["size"].format(colour=obj.colour, shape=obj.shape), obj.size, list(SIZES),
                            rng))
            left = scene.at(obj.row, obj.col - 1)
            pool = [o.description for o in scene.objects] + pairs
            out.append(_mcq(TEMPLATES["left"].format(colour=obj.colour, shape=obj.shape),
                            NOTHING if left is None else left.description, pool, rng, forced=(NOTHING,)))
    return out


def make_example(seed: int, index: int, settings: SceneSettings = SceneSettings()) -> Example:
    """Example ``index`` of the stream for ``seed``: a pure function of ``(seed, index, settings)``."""
    rng = np.random.default_rng([seed, index])
    scene = make_scene(rng, settings)
    return Example(scene, render(scene, settings.cell), caption(scene), questions(scene, rng, settings))


def generate(out_dir: str | Path, n: int, seed: int, **params) -> Path:
    """Write ``n`` scenes: ``out_dir/images/<id>.png`` and ``out_dir/scenes.jsonl`` (``JSONL_NAME``, returned),
    one row per image: ``{"id", "image": "images/<id>.png", "caption", "qa": [{"question", "choices", "answer":
    letter}]}``.

    ``params`` are ``SceneSettings``' fields (``check_params``); ids are ``000000``, ``000001``, ... Image ``i``
    depends only on ``(seed, i)`` and the settings, so a seed gives the same bytes and more images extend fewer.
    ``ConfigError`` for an unknown or bad setting."""
    settings = check_params(params)
    if not isinstance(n, int) or n < 0:
        raise ConfigError(f"n: need a non-negative integer, got {n!r}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in tqdm(range(n), desc="scenes", disable=n < PROGRESS_MIN):
        example, name = make_example(seed, index, settings), f"{index:06d}"
        example.image.save(out_dir / "images" / f"{name}.png")
        rows.append(json.dumps(example.record(name)) + "\n")
    path = out_dir / JSONL_NAME
    path.write_text("".join(rows), encoding="utf-8")
    return path


# -- the rule judge ------------------------------------------------------------------------------------------
TOKEN = re.compile(r"[a-z]+|[0-9]+|[,.;:!?\n]")
SEPARATORS = frozenset(",.;:!?\n")
NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}
COUNT_NOUNS = frozenset({"shape", "shapes", "object", "objects"})
EMPTY_WORDS = frozenset({"empty", "nothing", "blank", "none"})
MAX_DIGITS = 3
"""Longer digit strings are not read as numbers."""
EMPTY, UNKNOWN = "empty", "unknown"
"""Cells of a read caption that are not object mentions."""
_CONFLICT = object()
"""A mention attribute given twice with different words."""


@dataclass(frozen=True)
class Mention:
    """An object the caption mentions; ``None``: the caption does not give that attribute."""

    size: str | None
    colour: str | None
    shape: str | None


Cell = Union[Mention, str]
"""A cell of a read caption: a ``Mention``, ``EMPTY`` or ``UNKNOWN``."""


@dataclass(frozen=True)
class CaptionFacts:
    """What a caption states: the counts it names and its rows of cells, in order."""

    counts: frozenset[int]
    rows: tuple[tuple[Cell, ...], ...]
    mentions: tuple[tuple[int, int, Mention], ...] = field(init=False)
    """``(row, position, mention)`` of every mention, in order."""

    def __post_init__(self):
        object.__setattr__(self, "mentions", tuple((r, p, c) for r, row in enumerate(self.rows)
                                                   for p, c in enumerate(row) if isinstance(c, Mention)))


@dataclass
class _Segment:
    """The words between two separators, read into cells."""

    mentions: list[Mention] = field(default_factory=list)
    pending: dict[str, object] = field(default_factory=dict)
    empty: bool = False
    other: bool = False

    def add(self, word: str) -> None:
        """Read one word (not a separator, number, count noun or ``row``)."""
        if word in SHAPES:
            self.mentions.append(Mention(self._take("size"), self._take("colour"), word))
            self.pending.clear()
        elif word in SIZES or word in COLOURS:
            key = "size" if word in SIZES else "colour"
            self.pending[key] = word if self.pending.get(key, word) == word else _CONFLICT
        elif word in EMPTY_WORDS:
            self.empty = True
        else:
            self.other = True

    def _take(self, key: str) -> str | None:
        """The pending attribute ``key``, ``None`` when absent or conflicting."""
        value = self.pending.get(key)
        return value if isinstance(value, str) else None

    def cells(self) -> list[Cell]:
        """The segment's cells (module docstring)."""
        colour = self._take("colour")
        mentions = self.mentions + ([Mention(self._take("size"), colour, None)] if colour else [])
        if mentions:
            return mentions
        return [EMPTY] if self.empty else [UNKNOWN] if self.other else []


def _number(token: str) -> int | None:
    """The value of a number token (digits, or ``zero`` .. ``twelve``), else ``None``."""
    if token.isdigit():
        return int(token) if len(token) <= MAX_DIGITS else None
    return NUMBER_WORDS.get(token)


def read_caption(text: str) -> CaptionFacts:
    """The facts a caption states (module docstring), read in one pass; never raises on any text."""
    rows: list[list[Cell]] = [[]]
    counts: set[int] = set()
    segment = _Segment()
    number: int | None = None  # the previous token's value when it was a number (not a row label)
    after_row = False
    for match in TOKEN.finditer(text.lower()):
        token = match.group()
        value = _number(token)
        if token in SEPARATORS or token == "row":
            rows[-1] += segment.cells()
            segment = _Segment()
            if token == "row":
                rows.append([])
        elif token in COUNT_NOUNS:
            if number is not None:
                counts.add(number)
        elif value is None and not token.isdigit():
            segment.add(token)
        number = value if not after_row else None
        after_row = token == "row"
    rows[-1] += segment.cells()
    return CaptionFacts(frozenset(counts), tuple(tuple(r) for r in rows))


def _pattern(template: str) -> re.Pattern:
    """A regex matching ``template`` with each ``{field}`` captured as one word."""
    parts = [re.escape(literal) + (f"(?P<{name}>[a-z]+)" if name else "")
             for literal, name, _, _ in string.Formatter().parse(template)]
    return re.compile("".join(parts), re.IGNORECASE)


QUESTIONS = {kind: _pattern(template) for kind, template in TEMPLATES.items()}
VOCABULARY = {"colour": COLOURS, "shape": SHAPES}


def parse_question(question: str) -> tuple[str, dict[str, str]] | None:
    """``(kind, fields)`` of a question written with ``TEMPLATES`` (words in the vocabulary), else ``None``."""
    text = " ".join(question.split())
    for kind, pattern in QUESTIONS.items():
        match = pattern.fullmatch(text)
        if match:
            fields = {k: v.lower() for k, v in match.groupdict().items()}
            return (kind, fields) if all(v in VOCABULARY[k] for k, v in fields.items()) else None
    return None


def _the(facts: CaptionFacts, **wanted: str) -> tuple[int, int, Mention] | None:
    """The only mention with the ``wanted`` attributes, or ``None`` when there are none or several."""
    get = operator.attrgetter(*wanted)
    target = get(Mention(**{"size": None, "colour": None, "shape": None, **wanted}))
    found = list(itertools.islice((m for m in facts.mentions if get(m[2]) == target), 2))
    return found[0] if len(found) == 1 else None


def _left_of(facts: CaptionFacts, row: int, position: int) -> str | None:
    """The answer to "what is left of" the cell at ``position`` of row ``row``, or ``None``."""
    if position == 0 or facts.rows[row][position - 1] == EMPTY:
        return NOTHING
    cell = facts.rows[row][position - 1]
    return f"the {cell.colour} {cell.shape}" if isinstance(cell, Mention) and cell.colour and cell.shape else None


def answer_text(facts: CaptionFacts, question: str) -> str | None:
    """The answer the caption's facts give to ``question`` (module docstring), or ``None``."""
    parsed = parse_question(question)
    if parsed is None:
        return None
    kind, fields = parsed
    if kind == "count":
        if facts.counts:
            return str(next(iter(facts.counts))) if len(facts.counts) == 1 else None
        return str(len(facts.mentions)) if facts.mentions else None
    found = _the(facts, **fields)
    if found is None:
        return None
    row, position, mention = found
    if kind == "left":
        return _left_of(facts, row, position)
    return getattr(mention, kind)


def choose(options: tuple[str, ...], text: str | None) -> str:
    """The letter of the option reading ``text`` (case and surrounding space ignored), else of ``CANNOT_ANSWER``;
    ``""`` when neither is among the options."""
    index = {o.strip().lower(): i for i, o in enumerate(options[:len(LETTERS)])}
    i = index.get(text.strip().lower()) if text is not None else None
    i = index.get(CANNOT_ANSWER.lower()) if i is None else i
    return "" if i is None else LETTERS[i]


@QA_JUDGES.register("rule")
class RuleJudge:
    """A deterministic judge for the synthetic scenes: answers from what the caption states (module docstring)."""

    def answer(self, queries: list[Query]) -> list[str]:
        """The option letter chosen for each query."""
        facts: dict[str, CaptionFacts] = {}
        out = []
        for q in queries:
            if q.caption not in facts:
                facts[q.caption] = read_caption(q.caption)
            out.append(choose(q.options, answer_text(facts[q.caption], q.question)))
        return out

    def close(self) -> None:
        """Nothing to release."""
