"""Reading bulk files: JSONL lines and CSV rows into line objects, with per-line errors.

Only syntax is judged here (JSON, UTF-8, CSV shape, CSV cell types); the schema rules are
applied by :func:`falq.producers.bulk.enqueue.load_file`. Line numbers are 1-based physical lines.

Example::

    entries, rejects = parse_jsonl(b'{"input": {"prompt": "a fox"}}\\nnot json\\n')
    rejects[0].messages()   # ['line 2: is not valid JSON (Expecting value at column 1)']
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from falq.producers.client import JobRequest
from falq.shared.errors import FieldError, InvalidInput

CSV_COLUMNS = ("prompt", "id", "negative_prompt", "seed", "image_size", "num_images", "output_format")
_CSV_INTS = ("seed", "num_images")
_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


@dataclass(frozen=True)
class BulkLine:
    """One valid line: where it came from and the request to enqueue (key included)."""

    line: int
    id: str | None
    request: JobRequest


@dataclass(frozen=True)
class Reject:
    """One invalid line: its number, every error, and the original text."""

    line: int
    errors: list[FieldError]
    raw: str

    def messages(self) -> list[str]:
        """``line N: field: message`` per error."""
        return [f"line {self.line}: {e}" for e in self.errors]

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "errors": [{"field": e.field, "message": e.message} for e in self.errors],
                "raw": self.raw}


#: (line number, parsed line object, raw text)
Entry = tuple[int, dict[str, Any], str]


def format_of(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt.lower() not in ("jsonl", "ndjson", "csv"):
            raise InvalidInput([FieldError("format", f"must be jsonl or csv, not {fmt!r}")])
        return "csv" if fmt.lower() == "csv" else "jsonl"
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise InvalidInput([FieldError("format", f"cannot tell the format of {path.name!r} from its extension; "
                                   "use .jsonl, .ndjson or .csv, or pass --format")])


def parse_jsonl(data: bytes) -> tuple[list[Entry], list[Reject]]:
    entries: list[Entry] = []
    rejects: list[Reject] = []
    for n, raw_bytes in enumerate(data.split(b"\n"), start=1):
        try:
            raw = raw_bytes.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            shown = raw_bytes.decode("utf-8", "replace")
            rejects.append(Reject(n, [FieldError("", f"is not valid UTF-8 (byte {exc.start})")], shown))
            continue
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            rejects.append(Reject(n, [FieldError("", f"is not valid JSON ({exc.msg} at column {exc.colno})")], raw))
            continue
        except RecursionError:
            rejects.append(Reject(n, [FieldError("", "is not valid JSON here (nested too deeply)")], raw[:200]))
            continue
        except ValueError as exc:  # e.g. an integer past Python's 4300-digit limit
            rejects.append(Reject(n, [FieldError("", f"is not valid JSON here ({exc})")], raw[:200]))
            continue
        if not isinstance(obj, dict):
            rejects.append(Reject(n, [FieldError("", f"must be a JSON object, not {json_type(obj)}")], raw))
            continue
        entries.append((n, obj, raw))
    return entries, rejects


def parse_csv(data: bytes) -> tuple[list[Entry], list[Reject]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InvalidInput([FieldError("file", f"line {line} is not valid UTF-8")]) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return [], []
    except csv.Error as exc:
        raise InvalidInput([FieldError("file", f"line 1: malformed CSV header ({exc})")]) from None
    names = [h.strip() for h in header]
    problems = [FieldError("file", f"line 1: column {h!r} is unknown (known: {', '.join(CSV_COLUMNS)})")
                for h in names if h not in CSV_COLUMNS]
    problems += [FieldError("file", f"line 1: column {h!r} appears twice")
                 for i, h in enumerate(names) if h in names[:i]]
    if "prompt" not in names:
        problems.append(FieldError("file", "line 1: a 'prompt' column is required"))
    if problems:
        raise InvalidInput(problems)
    entries: list[Entry] = []
    rejects: list[Reject] = []
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            rejects.append(Reject(reader.line_num, [FieldError("", f"malformed CSV ({exc})")], ""))
            continue
        n = reader.line_num
        raw = _csv_line(cells)
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(names):
            rejects.append(Reject(n, [FieldError("", f"has {len(cells)} cells; the header has {len(names)}")], raw))
            continue
        obj, errors = _csv_row(dict(zip(names, cells, strict=True)))
        if errors:
            rejects.append(Reject(n, errors, raw))
        else:
            entries.append((n, obj, raw))
    return entries, rejects


def _csv_row(row: dict[str, str]) -> tuple[dict[str, Any], list[FieldError]]:
    errors: list[FieldError] = []
    fields: dict[str, Any] = {}
    obj: dict[str, Any] = {}
    for name, cell in row.items():
        if name == "prompt":
            fields["prompt"] = cell
            continue
        value = cell.strip()
        if not value:
            continue  # an empty cell means "not set": the schema default applies
        if name == "id":
            obj["id"] = value
        elif name in _CSV_INTS:
            if re.fullmatch(r"[+-]?\d+", value):
                fields[name] = int(value)
            else:
                errors.append(FieldError(f"input.{name}", f"must be an integer (got {value!r})"))
        elif name == "image_size":
            fields[name] = parse_image_size(value)
        else:
            fields[name] = value
    obj["input"] = fields
    return obj, errors


def parse_image_size(value: str) -> str | dict[str, int]:
    """``"1280x720"`` -> ``{"width": 1280, "height": 720}``; anything else is a preset name."""
    m = _SIZE.match(value)
    if m:
        return {"width": int(m.group(1)), "height": int(m.group(2))}
    return value


def _csv_line(cells: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(cells)
    return buf.getvalue()


def json_type(value: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
            type(None): "null"}.get(type(value), type(value).__name__)
