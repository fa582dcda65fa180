"""Hugging Face ``datasets`` sources for the tasks' ``data:`` sections and ``mmrl eval ... --data``.

A split of a task reads its records from a file of the benchmark's own release format, or from a ``datasets``
source given as a mapping (``HFSource``)::

    data:
      eval: {dataset: rootsautomation/ScreenSpot, split: test}           # a Hub id (preset by that name)
      train: {dataset: data/my_gui.parquet, columns: {bbox: box, instruction: query}, box_format: xywh}

``dataset`` is a Hub id (loaded when the Hub is reachable; else a ``DataError`` naming the id), a local
``.parquet``/``.arrow``/``.jsonl``/``.json`` file or a folder of such files, or a ``save_to_disk`` folder. The
column mapping (task field -> dataset column) comes from the preset named ``preset`` (by default the one named
like ``dataset``, see ``PRESETS``), overridden key by key by ``columns``; a field with no mapping reads the column of
its own name. ``TASK_FIELDS`` lists each task's fields.

The rows become the task's own record types (``GroundingRecord``, ``RecRecord``, ``DetectionRecord``,
``CharadesRecord``, ``CaptionRecord``, ``CadRecord``), so prompts, rewards and metrics are those of the file formats.

Memory: parquet files are read in place, ``BATCH_ROWS`` rows of the needed columns at a time; other sources are
``datasets``' Arrow files (``save_to_disk`` folders as they are; Arrow/JSON files and Hub downloads after its one-time
conversion into its cache), read one record batch at a time from the files rather than through the memory map (whose
pages would stay resident). No image is decoded. An image cell holding bytes (a ``datasets.Image`` column) is
written once, as it is, to ``CACHE/data/hf-<digest>/<column>/<row>.<ext>`` (the digest names the dataset's files and
the split), and the record holds that path, so the trainer's ``MediaCache`` decodes it on demand like any image file.
Only its header is read here, for the size and to reject a cell that is not an image. A cell holding a path (a
``datasets.Image`` with no bytes, or a string) is used in place, relative to ``media_dir``.

Bad input is one ``DataError`` naming the dataset, the split, the row and the column:
``dataset x.parquet, split test: row 3, column 'bbox': must be a list of 4 finite numbers (xyxy), got 'a'``.
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import Image

from mmrl.errors import ConfigError, DataError
from mmrl.eval.cad import CadRecord
from mmrl.eval.caption_qa import CaptionRecord
from mmrl.eval.charades import CharadesRecord
from mmrl.eval.detection_format import DetectionRecord, RecRecord
from mmrl.eval.records import image_size, is_number, short_repr, xyxy_box
from mmrl.eval.screenspot_format import UI_TYPES, GroundingRecord
from mmrl.typed import build
from rewards.caption_qa import mcq_from_dict

BATCH_ROWS = 64
"""Rows read (parquet) and converted from Arrow to Python at a time: 64 rows of 75 KB images peak at about 100 MB
above the imports, 256 at about 230 MB."""

FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json"}
"""``datasets`` builder of each local file type."""

BOX_FORMATS = ("xyxy", "xywh")
"""``[x1, y1, x2, y2]`` or ``[x, y, width, height]``, in pixels of the original image."""


@dataclass
class HFSource:
    """A split of a Hugging Face ``datasets`` dataset and how its columns map to the task's fields."""

    dataset: str
    """A Hub id, a local ``.parquet``/``.arrow``/``.jsonl``/``.json`` file or folder of them, or a ``save_to_disk``
    folder."""
    split: str = "train"
    """The split to read (a ``save_to_disk`` folder of one ``Dataset`` is that split whatever its name)."""
    preset: str | None = None
    """The ``PRESETS`` entry giving the column mapping (default: the one named like ``dataset``, if any)."""
    columns: dict[str, str] = field(default_factory=dict)
    """Task field -> dataset column; overrides the preset's. A dotted column (``objects.bbox``) reads a key of a
    struct column."""
    box_format: str | None = None
    """``xyxy`` or ``xywh`` pixels (default: the preset's, else ``xyxy``)."""
    media_dir: str | None = None
    """Folder that relative image or video paths in cells are relative to (default: the dataset's folder; for
    videos, the task's ``video_dir`` when set)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of a Hub id."""


@dataclass(frozen=True)
class Preset:
    """The schema of a published copy of a benchmark, as its dataset card states it."""

    task: str
    columns: dict[str, str]
    box_format: str = "xyxy"
    splits: tuple[str, ...] = ()
    """The splits the card lists (for documentation and messages)."""


_REFCOCO = dict(image="image", expression="answer", bbox="bbox")

PRESETS: dict[str, Preset] = {
    # card: file_name, bbox (float64, "transformed to top-left x, top-left y, bottom-right x, bottom-right y"),
    # instruction, data_type ("icon"/"text"), data_source, image (Image); split test
    "rootsautomation/ScreenSpot": Preset("gui_grounding", dict(image="image", instruction="instruction", bbox="bbox",
                                                               ui_type="data_type", application="data_source"),
                                         "xyxy", ("test",)),
    # card: question_id, image (Image), question, answer (sequence of strings: the referring expressions),
    # segmentation, bbox (float32; COCO [x, y, w, h]), iscrowd, file_name
    "lmms-lab/RefCOCO": Preset("rec", _REFCOCO, "xywh", ("val", "test", "testA", "testB")),
    "lmms-lab/RefCOCOplus": Preset("rec", _REFCOCO, "xywh", ("val", "testA", "testB")),
    "lmms-lab/RefCOCOg": Preset("rec", _REFCOCO, "xywh", ("val",)),
    # card: video (string: the file name), caption (string), timestamp (sequence of float16: [start, end] seconds)
    "lmms-lab/charades_sta": Preset("temporal_grounding", dict(video="video", sentence="caption",
                                                                interval="timestamp"), "xyxy", ("test",)),
}
"""Column mappings of the Hub copies whose schema their dataset card states (docs/datasets.md says how each was
confirmed). ScreenSpot-v2 (``OS-Copilot/ScreenSpot-v2``) and ScreenSpot-Pro (``likaixin/ScreenSpot-Pro``) are
published on the Hub in their release's own JSON-and-images layout, which the file loaders read as they are."""

TASK_FIELDS: dict[str, dict[str, bool]] = {
    "gui_grounding": dict(image=True, instruction=True, bbox=True, ui_type=False, id=False, split=False,
                          application=False, group=False, platform=False),
    "rec": dict(image=True, expression=True, bbox=True),
    "detection": dict(image=True, bboxes=True, labels=True, id=False, crowd=False),
    "temporal_grounding": dict(video=True, sentence=True, interval=False, start=False, end=False),
    "caption_qa": dict(image=True, qa=True, id=False, caption=False),
    "cad_code": dict(description=True, code=True, id=False, images=False),
}
"""Each task's fields (name -> required). ``interval`` is ``[start, end]``; ``start`` and ``end`` are its
alternative as two columns. Detection ``labels`` are strings or ``ClassLabel`` integers; ``crowd`` is 0/1 per
box."""


def source_of(value: dict[str, Any], key: str) -> HFSource:
    """The ``HFSource`` of a ``data.train``/``data.eval`` mapping; ``ConfigError`` naming ``key``."""
    return build(HFSource, value, prefix=key + ".")


class Table:
    """One split of a dataset with its column mapping: typed, checked access to its rows' fields."""

    def __init__(self, source: HFSource, task: str, cache_dir: str):
        self.source, self.task = source, task
        self.name = f"dataset {source.dataset}, split {source.split}"
        self.label = f"{source.dataset}[{source.split}]"
        """The records' ``source_file`` (their ``line`` is the 0-based row)."""
        preset = _preset(source, task)
        self.box_format = source.box_format or (preset.box_format if preset else "xyxy")
        if self.box_format not in BOX_FORMATS:
            raise ConfigError(f"{self.name}: box_format {self.box_format!r}; valid: {', '.join(BOX_FORMATS)}")
        fields = TASK_FIELDS[task]
        unknown = sorted(set(source.columns) - set(fields))
        if unknown:
            raise ConfigError(f"{self.name}: columns names no field {unknown[0]!r} of task {task}; fields: "
                              f"{', '.join(fields)}")
        self.dataset = open_dataset(source)
        mapping = {name: name for name in fields} | (preset.columns if preset else {}) | source.columns
        present = set(self.dataset.column_names)
        self.columns = {name: column for name, column in mapping.items()
                        if column.split(".")[0] in present or name in source.columns or fields[name]}
        for name, column in self.columns.items():
            if column.split(".")[0] not in present:
                raise DataError(f"{self.name}: missing column {column!r} (task field {name!r}); columns: "
                                f"{', '.join(self.dataset.column_names)}")
        self.media_dir = Path(source.media_dir) if source.media_dir else _local_folder(source.dataset)
        self.cache = Path(cache_dir).expanduser() / "data" / f"hf-{self._digest()}"

    def _digest(self) -> str:
        stats = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in self.dataset.files]
        key = repr((stats or self.source.dataset, self.source.split, self.source.revision))
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    def where(self, row: int, name: str) -> str:
        return f"{self.name}: row {row}, column {self.columns[name]!r}"

    def rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(row index, {field: raw cell})`` in order, one Arrow record batch at a time (images undecoded)."""
        tops = sorted({c.split(".")[0] for c in self.columns.values()})
        index = 0
        for whole in self.dataset.batches(tops):
            for batch in (whole.slice(start, BATCH_ROWS) for start in range(0, whole.num_rows, BATCH_ROWS)):
                cells = {top: batch.column(top).to_pylist() for top in tops}
                for i in range(batch.num_rows):
                    yield index, {name: _dig(cells[column.split(".")[0]][i], column) for name, column in
                                  self.columns.items()}
                    index += 1
        if index != self.dataset.num_rows:
            raise DataError(f"{self.name}: its Arrow files hold {index} rows, the dataset {self.dataset.num_rows} "
                            "(an indices mapping from select or shuffle); write it again with save_to_disk")

    def bad(self, row: int, name: str, expected: str, value: Any) -> DataError:
        return DataError(f"{self.where(row, name)}: must be {expected}, got {short_repr(value)}")

    def text(self, row: int, cells: dict, name: str, default: str | None = None) -> str:
        value = cells.get(name, default)
        if not isinstance(value, str):
            raise self.bad(row, name, "a string", value)
        return value

    def number(self, row: int, cells: dict, name: str) -> float:
        value = cells[name]
        if not is_number(value):
            raise self.bad(row, name, "a finite number", value)
        return float(value)

    def numbers(self, row: int, cells: dict, name: str, count: int) -> list[float]:
        value = cells[name]
        if not (isinstance(value, list) and len(value) == count and all(is_number(v) for v in value)):
            raise self.bad(row, name, f"a list of {count} finite numbers", value)
        return [float(v) for v in value]

    def box(self, row: int, name: str, value: Any) -> list[float]:
        """A ``box_format`` box as ``[x1, y1, x2, y2]``."""
        if not (isinstance(value, list) and len(value) == 4 and all(is_number(v) for v in value)):
            raise self.bad(row, name, f"a list of 4 finite numbers ({self.box_format})", value)
        box = xyxy_box([float(v) for v in value], self.box_format == "xywh")
        if box is None:
            raise self.bad(row, name, f"a {self.box_format} box with a non-negative width and height", value)
        return box

    def image(self, row: int, cells: dict, name: str = "image",
              index: int | None = None) -> tuple[str, tuple[int, int]]:
        """``(path, (width, height))`` of an image cell (item ``index`` of a list cell): its bytes written to the
        cache once, or its path."""
        value = cells[name] if index is None else cells[name][index]
        data = value.get("bytes") if isinstance(value, dict) else None
        path = value.get("path") if isinstance(value, dict) else value
        if data is None and not isinstance(path, str):
            raise self.bad(row, name, "an image (a datasets.Image cell or a path)", value)
        if data is None:
            file = self.media_dir / path
            if not file.is_file():
                raise DataError(f"{self.where(row, name)}: image not found: {file}")
            return str(file), image_size(str(file), self.where(row, name))
        size, ext = _header(data, self.where(row, name))
        stem = str(row) if index is None else f"{row}-{index}"
        file = self.cache / self.columns[name].replace("/", "_") / f"{stem}.{ext}"
        if not file.is_file():
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_name(f".{file.name}.tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, file)
        return str(file), size


def _dig(cell: Any, column: str) -> Any:
    """The value of a dotted column: the keys after the first read from a struct cell (a list of structs gives
    the list of that key)."""
    for key in column.split(".")[1:]:
        if isinstance(cell, list):
            cell = [c.get(key) if isinstance(c, dict) else None for c in cell]
        else:
            cell = cell.get(key) if isinstance(cell, dict) else None
    return cell


def _header(data: bytes, where: str) -> tuple[tuple[int, int], str]:
    """``((width, height), extension)`` from an encoded image's header; ``DataError`` if it is not one."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size, (img.format or "png").lower().replace("jpeg", "jpg")
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{where}: cannot decode the image ({' '.join(str(exc).split()) or type(exc).__name__})") \
            from None


def _preset(source: HFSource, task: str) -> Preset | None:
    name = source.preset or (source.dataset if source.dataset in PRESETS else None)
    if name is None:
        return None
    if name not in PRESETS:
        raise ConfigError(f"dataset {source.dataset}: preset {name!r}; valid: {', '.join(PRESETS)}")
    if PRESETS[name].task != task:
        raise ConfigError(f"dataset {source.dataset}: preset {name!r} is a {PRESETS[name].task} dataset, not {task}")
    return PRESETS[name]


def _local_folder(dataset: str) -> Path:
    """The folder of a local dataset (the working directory for a Hub id)."""
    path = Path(dataset).expanduser()
    return path if path.is_dir() else path.parent if path.exists() else Path(".")


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``save_to_disk`` (of a ``Dataset`` or a ``DatasetDict``)."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


@dataclass(frozen=True)
class Split:
    """One split's schema and record batches, however it is stored."""

    column_names: list[str]
    features: Any
    """Its ``datasets.Features`` (``ClassLabel`` names come from here)."""
    num_rows: int
    files: list[str]
    """The files holding it (their sizes and times name its image cache)."""
    batches: Callable[[list[str]], Iterator[Any]]
    """The Arrow record batches of the given columns, in row order."""


def _arrow_batches(dataset, columns: list[str]) -> Iterator[Any]:
    """A ``datasets.Dataset``'s record batches, read from its Arrow files one at a time. Not through its memory map:
    the pages of a mapped file stay in the process's resident set until it is unmapped, so one pass over the table
    would hold all of it (every image's bytes) resident."""
    import pyarrow as pa

    files = [f["filename"] for f in dataset.cache_files]
    if not files:  # a table in memory
        yield from dataset.select_columns(columns).with_format("arrow").iter(batch_size=BATCH_ROWS)
    for file in files:
        with pa.OSFile(file) as stream:
            for batch in pa.ipc.open_stream(stream):
                yield batch.select(columns)


def _parquet_batches(files: list[str], columns: list[str]) -> Iterator[Any]:
    import pyarrow.parquet as pq

    for file in files:  # without pre-buffering, which reads whole row groups ahead (1.7 GB for 20,000 images)
        parquet = pq.ParquetFile(file, pre_buffer=False, buffer_size=1 << 20)
        yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns)


def _arrow_split(dataset) -> Split:
    return Split(dataset.column_names, dataset.features, len(dataset),
                 [f["filename"] for f in dataset.cache_files], partial(_arrow_batches, dataset))


def _parquet_split(files: list[Path], name: str) -> Split:
    """Parquet files read in place, ``BATCH_ROWS`` rows of the needed columns at a time (``datasets``' conversion
    into its Arrow cache peaked at 2.1 GB on a 1.5 GB file of images)."""
    import datasets
    import pyarrow.parquet as pq

    try:
        metas = [pq.ParquetFile(f).metadata for f in files]
        schema = pq.read_schema(files[0])
    except (OSError, ValueError) as exc:
        raise DataError(f"{name}: cannot read: {' '.join(str(exc).split())[:300]}") from None
    return Split(schema.names, datasets.Features.from_arrow_schema(schema), sum(m.num_rows for m in metas),
                 [str(f) for f in files], partial(_parquet_batches, [str(f) for f in files]))


def open_dataset(source: HFSource) -> Split:
    """The split ``source`` names; ``DataError`` naming the dataset and split."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"dataset {source.dataset}: Hugging Face datasets sources need the datasets package: "
                          "pip install 'mmrl[hf]'") from None

    path = Path(source.dataset).expanduser()
    name = f"dataset {source.dataset}, split {source.split}"
    if path.is_dir() and is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if source.split not in loaded:
                raise DataError(f"{name}: no such split; splits: {', '.join(loaded)}")
            loaded = loaded[source.split]
        return _arrow_split(loaded)
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in FILE_BUILDERS)
        builders = {FILE_BUILDERS.get(p.suffix) for p in files}
        if not files or None in builders or len(builders) > 1:
            raise DataError(f"{name}: expected a save_to_disk folder, or .parquet, .arrow or .jsonl/.json files "
                            f"of one kind, found {', '.join(p.name for p in files) or 'none'}")
        builder = builders.pop()
        if builder == "parquet":
            return _parquet_split(files, name)
        try:
            return _arrow_split(datasets.load_dataset(builder, data_files={source.split: [str(p) for p in files]},
                                                      split=source.split))
        except (OSError, ValueError, TypeError) as exc:
            raise DataError(f"{name}: cannot read: {' '.join(str(exc).split())[:300]}") from None
    try:
        return _arrow_split(datasets.load_dataset(source.dataset, split=source.split, revision=source.revision))
    except (OSError, ValueError, FileNotFoundError) as exc:  # ConnectionError, DatasetNotFoundError, bad split
        raise DataError(f"Hugging Face dataset {source.dataset!r} (split {source.split}): cannot load it from the "
                        f"Hub ({' '.join(str(exc).split())[:200]}); where the Hub is reachable, save it with "
                        "save_to_disk and give that folder as 'dataset'") from None


# -- rows -> the tasks' records ---------------------------------------------------------------------------------------
def grounding_records(table: Table) -> list[GroundingRecord]:
    """ScreenSpot-style rows: one click target (``bbox``) for ``instruction`` on ``image``."""
    records = []
    for row, cells in table.rows():
        image, size = table.image(row, cells)
        ui_type = table.text(row, cells, "ui_type", "text")
        if ui_type not in UI_TYPES:
            raise table.bad(row, "ui_type", " or ".join(repr(t) for t in UI_TYPES), ui_type)
        records.append(GroundingRecord(
            id=str(cells.get("id", row)), image=image, instruction=table.text(row, cells, "instruction"),
            gt_box=table.box(row, "bbox", cells["bbox"]), ui_type=ui_type,
            split=table.text(row, cells, "split", table.source.split),
            group=table.text(row, cells, "group", ""), application=table.text(row, cells, "application", ""),
            platform=table.text(row, cells, "platform", ""), img_size=size, source_file=table.label))
    return records


def rec_records(table: Table) -> list[RecRecord]:
    """Referring expressions: the ``bbox`` that ``expression`` names (a list of expressions: its first)."""
    records = []
    for row, cells in table.rows():
        expression = cells["expression"]
        if isinstance(expression, list) and expression and isinstance(expression[0], str):
            expression = expression[0]
        if not isinstance(expression, str):
            raise table.bad(row, "expression", "a string or a non-empty list of strings", expression)
        image, _ = table.image(row, cells)
        records.append(RecRecord(row, image, expression, table.box(row, "bbox", cells["bbox"]), table.label, row))
    return records


def detection_records(table: Table) -> tuple[list[DetectionRecord], list[str]]:
    """Images with their boxes and labels; categories in ``ClassLabel`` order, else sorted by name."""
    names = _class_names(table)
    records = []
    for row, cells in table.rows():
        boxes, labels, crowd = cells["bboxes"], cells["labels"], cells.get("crowd") or []
        if not isinstance(boxes, list):
            raise table.bad(row, "bboxes", "a list of boxes", boxes)
        if not (isinstance(labels, list) and len(labels) == len(boxes)):
            raise table.bad(row, "labels", f"a list of {len(boxes)} labels (one per box)", labels)
        labels = [_label(table, row, names, v) for v in labels]
        image, (width, height) = table.image(row, cells)
        kept: dict[bool, tuple[list, list]] = {False: ([], []), True: ([], [])}
        for i, (box, label) in enumerate(zip(boxes, labels)):
            group = kept[bool(crowd[i]) if i < len(crowd) else False]
            group[0].append(table.box(row, "bboxes", box))
            group[1].append(label)
        image_id = cells.get("id", row)
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise table.bad(row, "id", "an integer", image_id)
        records.append(DetectionRecord(image_id, image, width, height, *kept[False], table.label, *kept[True]))
    categories = names or sorted({label for r in records for label in [*r.labels, *r.crowd_labels]})
    return records, categories


def _class_names(table: Table) -> list[str]:
    """The ``ClassLabel`` names of the ``labels`` column (``[]`` when it holds strings)."""
    feature = table.dataset.features
    for key in table.columns["labels"].split("."):
        feature = getattr(feature, "feature", feature)
        feature = feature.get(key) if isinstance(feature, dict) else None
    feature = getattr(feature, "feature", feature)
    return list(getattr(feature, "names", None) or [])


def _label(table: Table, row: int, names: list[str], value: Any) -> str:
    if isinstance(value, str):
        return value
    if names and isinstance(value, int) and 0 <= value < len(names):
        return names[value]
    raise table.bad(row, "labels", "category names (or ClassLabel indices)", value)


def charades_records(table: Table) -> list[CharadesRecord]:
    """Moments: ``sentence`` happens in ``[start, end]`` seconds of the video named by ``video`` (its file stem is
    the video id looked up in the video folder)."""
    if "interval" not in table.columns and not {"start", "end"} <= set(table.columns):
        raise DataError(f"{table.name}: no column for the moment: map 'interval' ([start, end]) or 'start' and "
                        f"'end'; columns: {', '.join(table.dataset.column_names)}")
    records = []
    for row, cells in table.rows():
        if "interval" in cells:
            start, end = table.numbers(row, cells, "interval", 2)
        else:
            start, end = table.number(row, cells, "start"), table.number(row, cells, "end")
        if not 0 <= start <= end:
            raise table.bad(row, "interval" if "interval" in cells else "end", "0 <= start <= end seconds",
                            [start, end])
        video = Path(table.text(row, cells, "video")).stem
        records.append(CharadesRecord(row, video, start, end, table.text(row, cells, "sentence"), table.label, row))
    return records


def caption_records(table: Table) -> list[CaptionRecord]:
    """Images with multiple-choice questions (``qa``: a list of ``{question, choices, answer}``)."""
    records = []
    for row, cells in table.rows():
        qa = cells["qa"]
        if not isinstance(qa, list):
            raise table.bad(row, "qa", "a list of questions", qa)
        mcqs = [mcq_from_dict(q, f"{table.where(row, 'qa')}[{i}]") for i, q in enumerate(qa)]
        caption = cells.get("caption")
        if caption is not None and not isinstance(caption, str):
            raise table.bad(row, "caption", "a string", caption)
        image, _ = table.image(row, cells)
        records.append(CaptionRecord(str(cells.get("id", row)), image, mcqs, caption))
    return records


def cad_records(table: Table) -> list[CadRecord]:
    """Parts: the ``code`` that builds what ``description`` (and the optional list of views ``images``) shows."""
    records = []
    for row, cells in table.rows():
        images = cells.get("images") or []
        if not isinstance(images, list):
            raise table.bad(row, "images", "a list of images", images)
        paths = [table.image(row, cells, "images", k)[0] for k in range(len(images))]
        records.append(CadRecord(str(cells.get("id", row)), table.text(row, cells, "description"),
                                 table.text(row, cells, "code"), paths))
    return records


READERS: dict[str, Callable[[Table], Any]] = {
    "gui_grounding": grounding_records, "rec": rec_records, "detection": detection_records,
    "temporal_grounding": charades_records, "caption_qa": caption_records, "cad_code": cad_records,
}
"""The record reader of each task with ``datasets`` sources."""


def read_records(task: str, source: HFSource, cache_dir: str) -> Any:
    """The task's records of ``source`` (what its file loader returns); ``DataError`` when there are none."""
    table = Table(source, task, cache_dir)
    records = READERS[task](table)
    if not (records[0] if task == "detection" else records):
        raise DataError(f"{table.name}: no rows")
    return records


# -- mmrl eval --data ------------------------------------------------------------------------------------------------
HUB_PREFIX = "hf:"


def cli_source(data: str, args, always: bool = False) -> HFSource | None:
    """The ``HFSource`` named by ``--data`` (``hf:ID_OR_PATH``, a ``.parquet``/``.arrow`` file or a
    ``save_to_disk`` folder; with ``always``, any value) with ``--split``, ``--preset``, ``--column`` and
    ``--box-format``; ``None`` for the benchmark's own file format."""
    path = Path(data).expanduser()
    if not (always or data.startswith(HUB_PREFIX) or path.suffix in (".parquet", ".arrow")
            or (path.is_dir() and is_saved_dataset(path))):
        return None
    columns = {}
    for item in args.column or []:
        name, sep, column = item.partition("=")
        if not sep:
            raise ConfigError(f"--column {item!r}: expected FIELD=COLUMN")
        columns[name] = column
    return HFSource(dataset=data.removeprefix(HUB_PREFIX), split=args.split, preset=args.preset, columns=columns,
                    box_format=args.box_format)


def cli_records(task: str, args, always: bool = False) -> Any:
    """``task``'s records of ``--data`` when it names a ``datasets`` source (``cli_source``), else ``None``;
    embedded images go to the default model cache."""
    source = cli_source(args.data, args, always)
    if source is None:
        return None
    from mmrl.config import ModelConfig

    return read_records(task, source, ModelConfig().cache_dir)


def add_cli_arguments(parser) -> None:
    """``--split``, ``--preset``, ``--column`` and ``--box-format`` for a ``datasets`` ``--data``."""
    group = parser.add_argument_group(
        "Hugging Face datasets (--data hf:HUB_ID_OR_PATH, a .parquet/.arrow file or a save_to_disk folder)")
    group.add_argument("--split", default="test", help="split to read (default test)")
    group.add_argument("--preset", help=f"column mapping preset: {', '.join(PRESETS)} (default: the one named "
                                        "like the dataset)")
    group.add_argument("--column", action="append", metavar="FIELD=COLUMN", help="map a task field to a column")
    group.add_argument("--box-format", choices=BOX_FORMATS, help="box layout in pixels (default: the preset's, "
                                                                 "else xyxy)")
