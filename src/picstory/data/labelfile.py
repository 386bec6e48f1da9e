"""Label files as their authors' tools wrote them: .csv / .tsv / .txt, any common delimiter, with or without header.

The reader sniffs the delimiter (comma, tab, semicolon, or runs of spaces), strips a BOM, honours quoted fields and
decides whether the first row is a header by its shape: a row with a cell that names an existing file or an image
file name is data. Columns are chosen by name or 0-based index; a header-less file's columns are named "0", "1", …
Each row then becomes a Record through :func:`row_label`; a multi-label cell (``dog|outdoor``, ``dog;outdoor``) is
split by :func:`split_labels`, one-hot 0/1 columns (``--label-cols``) are read by :func:`one_hot_labels`, and a JSON
file ``{"path": [labels]}`` by :func:`read_json_labels`.
"""

from __future__ import annotations

import csv
import difflib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import DataError
from .records import IMAGE_EXTS, as_number, class_sort_key  # noqa: F401  (re-exported)

LABEL_FILE_EXTS = (".csv", ".tsv", ".txt", ".json")
LABEL_SEPARATORS = ("|", ";")  # between the labels of one multi-label cell
PATH_COLS = ("path", "filepath", "file_path", "image_path", "file", "filename", "image", "img", "image_id", "id")
LABEL_COLS = ("label", "class", "category", "target", "class_name", "y", "labels")
# tried in this order; a tie on how well a delimiter explains the file goes to the earlier one
DELIMITERS = {",": "comma", "\t": "tab", ";": "semicolon", " ": "spaces"}
SNIFF_LINES = 200


@dataclass
class Table:
    """A label file read into cells: column names, data rows (with their 1-based line numbers), notes."""

    path: Path
    columns: list[str]
    rows: list[tuple[int, list[str]]]
    header: bool
    delimiter: str


def read_table(path: Path) -> Table:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the label file ({e})") from None
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1)]
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    if not lines:
        raise DataError(f"{path}: the label file is empty; give one row per image: path and label")
    delimiter = sniff_delimiter(path, lines)
    rows = [(n, _split(line, delimiter)) for n, line in lines]
    header = not _is_data_row(path, rows[0][1])
    width = max(len(cells) for _, cells in rows)
    if header:
        columns = [c.strip() for c in rows[0][1]]
        rows = rows[1:]
    else:
        columns = [str(i) for i in range(width)]
    return Table(path, columns, rows, header, delimiter)


def _split(line: str, delimiter: str) -> list[str]:
    if delimiter == " ":  # runs of spaces and tabs are one separator; quotes still protect a path with spaces
        line = line.replace("\t", " ")
        return [c.strip() for c in next(csv.reader([line], delimiter=" ", skipinitialspace=True)) if c.strip()]
    return [c.strip() for c in next(csv.reader([line], delimiter=delimiter))]


def sniff_delimiter(path: Path, lines: list[tuple[int, str]]) -> str:
    """The delimiter that splits (nearly) every line into the same number of cells, preferring one whose cells
    include image paths; lines that only another delimiter splits mean the file mixes delimiters (an error)."""
    sample = lines[:SNIFF_LINES]
    scored = []
    for rank, d in enumerate(DELIMITERS):
        widths = [len(_split(line, d)) for _, line in sample]
        mode, hits = Counter(widths).most_common(1)[0]
        if mode < 2:
            continue
        with_path = sum(any(_looks_like_image(c) for c in _split(line, d)) for _, line in sample)
        scored.append((with_path, hits, -rank, d, widths, mode))
    if not scored:
        raise DataError(f"{path}: every line is a single column; a label file needs a path and a label per line, "
                        "separated by commas, tabs, semicolons or spaces")
    *_, d, widths, mode = max(scored)
    odd = [(n, line) for (n, line), w in zip(sample, widths) if w != mode]
    for n, line in odd:
        # spaces count as a rival only against tabs: a comma file's odd row may hold a name with a space
        for other in DELIMITERS:
            if other != d and (other != " " or d == "\t") and len(_split(line, other)) == mode:
                raise DataError(f"{path}: mixed delimiters: most lines are split by {DELIMITERS[d]}, but line {n} "
                                f"by {DELIMITERS[other]} ({line[:60]!r}); use one delimiter throughout")
    return d


def _looks_like_image(cell: str) -> bool:
    return Path(cell.strip()).suffix.lower() in IMAGE_EXTS


def _is_data_row(path: Path, cells: list[str]) -> bool:
    """A first row is data when one of its cells is an image file name or an existing file; a header names
    columns. A header-less file whose first image is missing is still data: its path cell has an image suffix."""
    for cell in cells:
        if _looks_like_image(cell):
            return True
        if cell and (path.parent / cell).is_file():
            return True
    return False


def pick_column(table: Table, chosen: str, candidates: tuple, what: str, flag: str, avoid: tuple = ()) -> int:
    """The index of a column given by name or 0-based index; auto-detected from names (or contents) when empty."""
    cols = table.columns
    if chosen:
        if chosen in cols:
            return cols.index(chosen)
        if chosen.isdigit() and int(chosen) < len(cols):
            return int(chosen)
        return column_error(table, chosen, flag)
    lower = {c.strip().lower(): i for i, c in enumerate(cols)}
    for name in candidates:
        if name in lower and lower[name] not in avoid:
            return lower[name]
    if what == "path":  # by contents: the column whose cells are image file names
        hits = [sum(_looks_like_image(cells[i]) for _, cells in table.rows if i < len(cells)) for i in range(len(cols))]
        if hits and max(hits) > 0:
            return hits.index(max(hits))
    else:
        rest = [i for i in range(len(cols)) if i not in avoid]
        if rest and (not table.header or len(cols) == 2):
            after = [i for i in rest if i > avoid[0]] if avoid else rest
            return (after or rest)[0]  # header-less: the label is the column after the path
    raise DataError(f"{table.path}: cannot find the {what} column among {', '.join(cols) or 'no columns'}; "
                    f"name it with {flag} (a column name or a 0-based index)")


def column_error(table: Table, chosen: str, flag: str):
    cols = table.columns
    close = difflib.get_close_matches(chosen, cols, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    kind = "" if table.header else f" (no header: use an index 0–{len(cols) - 1})"
    raise DataError(f"{table.path}: no column '{chosen}' for {flag} (columns: {', '.join(cols)}){kind}{hint}")


# ---- labels ------------------------------------------------------------------------------------------------------

def parse_label_map(spec: str) -> dict[str, str]:
    """``"0=ok,0.333=ok,1=defect"`` or a YAML file of ``value: class`` → {value: class}."""
    spec = (spec or "").strip()
    if not spec:
        return {}
    path = Path(spec).expanduser()
    if "=" not in spec and path.suffix.lower() in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise DataError(f"--label-map: file not found: {spec}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise DataError(f"--label-map {spec}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(loaded, dict) or not loaded:
            raise DataError(f"--label-map {spec}: expected a mapping of label value → class name")
        return {_yaml_key(k): str(v).strip() for k, v in loaded.items()}
    out = {}
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise DataError(f"--label-map: '{item.strip()}' is not VALUE=CLASS (e.g. --label-map \"0=ok,1=defect\")")
        out[key.strip()] = value.strip()
    return out


def _yaml_key(key) -> str:
    return ("%g" % key) if isinstance(key, float) else str(key).strip()


def format_label_map(mapping: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in mapping.items())


def apply_label_map(path: Path, values: list[str], mapping: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """value → class for every label value of the file, and warnings for map entries that match no value.

    A key matches a value as written or by number ("1" matches "1.0"). An unmapped value is an error listing
    every unmapped value, so a map that merges classes cannot silently leave one out."""
    if not mapping:
        return {v: v for v in values}, []
    by_number = {as_number(k): k for k in mapping if as_number(k) is not None}
    out, used, unmapped = {}, set(), []
    for v in values:
        key = v if v in mapping else by_number.get(as_number(v)) if as_number(v) is not None else None
        if key is None:
            unmapped.append(v)
        else:
            out[v] = mapping[key]
            used.add(key)
    if unmapped:
        unmapped.sort(key=class_sort_key)
        raise DataError(f"{path}: --label-map leaves label value(s) {', '.join(unmapped[:20])} unmapped; "
                        "map every value (e.g. add " + ",".join(f"{v}=NAME" for v in unmapped[:2]) + ")")
    warnings = [f"--label-map entry '{k}={mapping[k]}' matches no label in {path.name}" for k in mapping
                if k not in used]
    return out, warnings


def row_label(cells: list[str], label_index: int) -> str:
    """The label of one row (multi-label cells will be parsed here)."""
    return cells[label_index].strip() if label_index < len(cells) else ""


def split_labels(cell: str, delimiter: str, where: str) -> tuple[str, ...]:
    """The labels of one cell: ``dog|outdoor`` or ``dog;outdoor`` → (dog, outdoor); a file whose delimiter is ';'
    only splits on '|'. An empty label between separators (``dog|``, ``dog||cat``) is an error naming the row."""
    seps = [s for s in LABEL_SEPARATORS if s != delimiter]
    parts = [cell]
    for sep in seps:
        parts = [p for part in parts for p in part.split(sep)]
    parts = [p.strip() for p in parts]
    if len(parts) > 1 and not all(parts):
        raise DataError(f"{where}: empty label in the multi-label cell '{cell}'; separate labels by "
                        f"{' or '.join(repr(s) for s in seps)} with a label on each side")
    return tuple(dict.fromkeys(parts))  # a label repeated in one cell counts once


def one_hot_labels(cells: list[str], columns: list[tuple[int, str]], where: str) -> tuple[str, ...]:
    """--label-cols: the names of the 0/1 columns that hold 1 in this row; any other value is an error."""
    tags = []
    for i, name in columns:
        value = cells[i].strip() if i < len(cells) else ""
        x = as_number(value)
        if x not in (0.0, 1.0):
            raise DataError(f"{where}: column '{name}' holds {value!r}; --label-cols columns take 0 or 1 only")
        if x == 1.0:
            tags.append(name)
    return tuple(tags)


def read_json_labels(path: Path) -> list[tuple[str, list[str] | str]]:
    """``{"path": [labels], …}`` (or ``"path": "label"``) → (path, labels) in file order."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the label file ({e})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); expected "
                        '{"image.jpg": ["label", …], …}') from None
    if not isinstance(data, dict) or not data:
        raise DataError(f'{path}: expected a JSON object of image path → labels, e.g. {{"a.jpg": ["dog", "outdoor"]}}')
    out = []
    for key, value in data.items():
        if isinstance(value, str):
            out.append((key, value))
        elif isinstance(value, list) and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            out.append((key, [str(v).strip() for v in value]))
        else:
            raise DataError(f"{path}: the labels of {key!r} are {json.dumps(value)[:60]}; give a list of label "
                            "names (or one name)")
    return out
