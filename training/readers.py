"""Streaming readers for MyAnimeList ratings and anime metadata dumps.

Ratings files hold 57M-109M rows, so the normal path is pyarrow's CSV parser with explicit integer
types, one block of whole lines at a time, handing each block's numpy arrays to a ``RatingSink``
(``read_ratings`` keeps compact arrays; the ingest packs them into sort keys). A big local file is
cut at line breaks into one byte range per CPU, parsed by as many threads, and the parts are joined
in file order (each range is parsed serially). Exact error locations are
only needed when something is wrong, so they come from separate slow passes: a ``csv``-module
diagnostic that raises at the first bad line (strict mode), or a vectorised line-by-line pass that
skips and reports bad rows (lenient mode). Both apply the rules in ``fuserank.schemas.ingest``.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from fuserank import storage
from fuserank.errors import InputError
from fuserank.schemas import ingest as S

log = logging.getLogger("fuserank.ingest")

BLOCK_BYTES = 4 << 20
PARALLEL_MIN_BYTES = 64 << 20   # local files at least this big are parsed by several streams
MAX_STREAMS = 4
HEADER_LIMIT = 1 << 16
MAX_EXAMPLES = 10
MAX_LINE_BYTES = 1 << 20
INT32_MAX = np.iinfo(np.int32).max
_INT_RE = re.compile(S.INT_PATTERN)
_RATING_EXPECTED = f"an integer rating from {S.RATING_MIN} to {S.RATING_MAX}"
_ID_EXPECTED = "a non-negative integer id"


@dataclass
class SkipReport:
    """Rows dropped in lenient mode: the exact count plus the first few, for the manifest."""

    rows: int = 0
    examples: list = field(default_factory=list)

    def add(self, path, line, field_name, reason):
        self.rows += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"file": str(path), "line": int(line), "field": field_name, "reason": reason})

    def as_dict(self) -> dict:
        return {"rows": self.rows, "first_lines": [e["line"] for e in self.examples], "examples": self.examples}


@dataclass
class Ratings:
    """Raw rating rows in file order; ids are int32 when they fit, else int64."""

    user: np.ndarray
    anime: np.ndarray
    rating: np.ndarray
    layout: str
    seconds: float


@dataclass
class Metadata:
    """Anime metadata normalised to one row per anime id, sorted by id."""

    anime_id: np.ndarray
    name: list
    genres: list
    type: list
    layout: str


class _FastPathFailed(Exception):
    """The typed reader met something it cannot represent; a slow pass must say where."""


# ---------------------------------------------------------------- opening and headers

def open_input(path):
    """open_binary with missing or unreadable inputs reported as InputError."""
    try:
        return storage.open_binary(path)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise InputError(path, f"cannot open: {exc.strerror or exc}") from None


def read_header(stream, path) -> list[str]:
    """Consume and parse line 1, leaving the stream at the first data row."""
    raw = stream.readline(HEADER_LIMIT)
    if not raw.strip():
        raise InputError(path, "empty file: no header", line=1, expected="a CSV header line")
    if not raw.endswith(b"\n") and len(raw) >= HEADER_LIMIT:
        raise InputError(path, "no line break within the first 64 KiB", line=1, expected="a CSV header line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"header is not valid UTF-8 ({exc.reason} at byte {exc.start})", line=1) from None
    text = text.rstrip("\r\n")
    if "\r" in text:
        raise InputError(path, "bare carriage return in the header line", line=1, expected="\\n or \\r\\n line endings")
    header = S.normalise_header(next(csv.reader([text])))
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise InputError(path, "duplicate column in header", line=1, field=duplicates[0])
    return header


def require_columns(path, header, required, expected):
    for name in required:
        if name not in header:
            raise InputError(path, f"missing required column {name!r}", line=1, field=name, expected=expected)


# ---------------------------------------------------------------- ratings

class RatingSink:
    """Where ``scan_ratings`` delivers rows, block by block and in file order.

    ``add`` gets int64 (or int32) user and anime ids and int8 ratings of one block (read-only arrays
    the sink must copy what it keeps from); ``reset`` forgets everything, for the lenient re-read
    after the fast path met a malformed row.
    """

    def add(self, user: np.ndarray, anime: np.ndarray, rating: np.ndarray) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def parts(self, n: int) -> list["RatingSink"]:
        """``n`` empty sinks of the same kind, one per byte range read in parallel."""
        raise NotImplementedError

    def join(self, parts: list["RatingSink"]) -> None:
        """Take over what ``parts`` collected, in order (= file order)."""
        raise NotImplementedError


@dataclass
class Scan:
    layout: str
    rows: int
    seconds: float


class _Progress:
    """Counts rows and logs "N rows read (rate)" every ``every`` rows."""

    def __init__(self, path, every):
        self.path, self.every = path, max(1, int(every))
        self.rows, self.next_log, self.min_rating = 0, self.every, S.RATING_MAX + 1
        self.started = time.perf_counter()
        self.lock = threading.Lock()

    def add(self, rating):
        low = int(rating.min()) if len(rating) else self.min_rating
        with self.lock:
            self.rows += len(rating)
            self.min_rating = min(self.min_rating, low)
            if self.rows >= self.next_log:
                self.log()
                self.next_log = (self.rows // self.every + 1) * self.every

    def log(self):
        elapsed = time.perf_counter() - self.started
        log.info("%s: %d rows read (%.1fM rows/s)", self.path, self.rows, self.rows / max(elapsed, 1e-9) / 1e6)


def scan_ratings(path, sink: RatingSink, lenient=False, block_bytes=BLOCK_BYTES, skipped: SkipReport | None = None,
                 progress_rows=2_000_000, streams: int | None = None) -> Scan:
    """Stream a ratings file of any known layout into ``sink`` (file order kept); logs progress.

    A big local file is cut at line breaks into ``streams`` byte ranges (default: one per CPU, at
    most MAX_STREAMS) parsed by as many threads (each range's blocks are parsed serially);
    each range fills its own part of the sink and the parts are joined in file order.
    """
    started = time.perf_counter()
    skipped = skipped if skipped is not None else SkipReport()
    progress = _Progress(path, progress_rows)
    with open_input(path) as stream:
        header = read_header(stream, path)
        require_columns(path, header, S.RATING_COLUMNS, "header with columns " + ", ".join(S.RATING_COLUMNS))
        ranges = _byte_ranges(path, stream, streams)
        try:
            if len(ranges) > 1:
                _read_typed_ranges(path, header, ranges, block_bytes, sink, progress)
            elif storage.is_gcs(path):
                _read_typed(stream, path, header, block_bytes, sink, progress)
            else:
                _read_typed(_native_range(path, *ranges[0]), path, header, block_bytes, sink, progress)
        except _FastPathFailed as exc:
            failure = str(exc)
        else:
            failure = None
    if failure is not None:
        if not lenient:
            diagnose_ratings(path, header)
            raise InputError(path, f"could not read the file: {failure}")
        log.warning("%s: malformed rows (%s); re-reading line by line to skip them", path, failure)
        sink.reset()
        progress = _Progress(path, progress_rows)
        _read_lenient(path, header, block_bytes, skipped, sink, progress)
    if progress.rows % progress.every:
        progress.log()
    if progress.rows == 0:
        raise InputError(path, "no rating rows after the header", line=2, expected="at least one rating row")
    saw_minus_one = progress.min_rating == -1
    return Scan(S.rating_layout_name(header, saw_minus_one), progress.rows, time.perf_counter() - started)


def read_ratings(path, lenient=False, chunk_rows=2_000_000, block_bytes=BLOCK_BYTES,
                 skipped: SkipReport | None = None) -> Ratings:
    """Read a ratings file of any known layout into numpy arrays (file order kept)."""
    sink = _ArraySink(chunk_rows)
    scan = scan_ratings(path, sink, lenient=lenient, block_bytes=block_bytes, skipped=skipped,
                        progress_rows=chunk_rows)
    user, anime, rating = sink.finish()
    return Ratings(user, anime, rating, scan.layout, scan.seconds)


class _ArraySink(RatingSink):
    """Compact per-block arrays, consolidated every ``chunk_rows`` rows; one array per column at the end."""

    def __init__(self, chunk_rows):
        self.chunk_rows = max(1, int(chunk_rows))
        self.reset()

    def reset(self):
        self.columns, self.pending, self.pending_rows = ([], [], []), [], 0

    def add(self, user, anime, rating):
        self.pending.append((_compact_ids(user), _compact_ids(anime), rating.astype(np.int8)))
        self.pending_rows += len(rating)
        if self.pending_rows >= self.chunk_rows:
            self._flush()

    def _flush(self):
        if self.pending:
            for column, parts in zip(self.columns, zip(*self.pending)):
                column.append(np.concatenate(parts))
        self.pending, self.pending_rows = [], 0

    def parts(self, n):
        return [_ArraySink(self.chunk_rows) for _ in range(n)]

    def join(self, parts):
        self._flush()
        for part in parts:
            part._flush()
            for column, more in zip(self.columns, part.columns):
                column.extend(more)

    def finish(self):
        """Concatenate column by column, dropping each column's chunks as it goes (peak: data + one column)."""
        self._flush()
        out = []
        for column, empty in zip(self.columns, (np.int32, np.int32, np.int8)):
            out.append(np.concatenate(column) if column else np.empty(0, empty))
            column.clear()
        return tuple(out)


def _compact_ids(ids: np.ndarray) -> np.ndarray:
    """int32 halves memory on 100M-row files; larger ids stay int64 (concatenate promotes)."""
    if len(ids) and ids.max() > INT32_MAX:
        return ids.astype(np.int64, copy=False)
    return ids.astype(np.int32)


def _read_typed(stream, path, header, block_bytes, sink: RatingSink, progress: _Progress, part_of_file=False):
    failure = _stream_batches(stream, header, block_bytes, sink, progress)
    if failure is not None:
        empty = failure.startswith("Empty CSV file")
        if not (empty and (part_of_file or _is_empty_body(failure, progress))):
            raise _FastPathFailed(failure)


def _stream_batches(stream, header, block_bytes, sink: RatingSink, progress: _Progress) -> str | None:
    """Parse ``stream`` into ``sink`` a block of whole lines at a time; the parse error's text, or None.

    Each block is read here and parsed by a serial ``read_csv`` that is done with it when it returns. Arrow's
    streaming reader instead reads ahead on its own threads, which outlive a parse error: when the process
    then exits on that error they abort it ("terminate called without an active exception", rc 134).
    """
    read_options = pacsv.ReadOptions(column_names=header, block_size=2 * block_bytes + 1024, use_threads=False)
    convert_options = pacsv.ConvertOptions(
        column_types={S.USER_COL: pa.int64(), S.ANIME_COL: pa.int64(), S.RATING_COL: pa.int8()},
        include_columns=list(S.RATING_COLUMNS),
    )
    try:
        for block in _line_blocks(stream, block_bytes):
            table = pacsv.read_csv(pa.BufferReader(block), read_options=read_options, convert_options=convert_options)
            for batch in table.to_batches():
                arrays = _checked_batch(batch)
                sink.add(*arrays)
                progress.add(arrays[2])
    except (pa.ArrowInvalid, pa.ArrowTypeError, _FastPathFailed) as exc:
        return str(exc)
    return None


def _line_blocks(stream, block_bytes: int):
    """``stream`` in blocks of about ``block_bytes`` that end at a line break (the last one may not)."""
    rest = b""
    while chunk := stream.read(block_bytes):
        data = rest + bytes(chunk)
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        if cut:
            yield data[:cut]
    if rest:
        yield rest


def _byte_ranges(path, stream, streams) -> list[tuple[int, int]]:
    """[(start, end)] of the data rows; several ranges, each ending at a line break, for big local files."""
    if storage.is_gcs(path):
        return [(0, 0)]
    start = stream.tell()
    size = os.fstat(stream.fileno()).st_size
    streams = min(MAX_STREAMS, usable_cpus()) if streams is None else max(1, int(streams))
    streams = min(streams, max(1, (size - start) // max(PARALLEL_MIN_BYTES // 2, 1)))
    if streams < 2 or size - start < PARALLEL_MIN_BYTES:
        return [(start, size)]
    cuts = [start]
    with open(os.fspath(path), "rb") as probe:
        for i in range(1, streams):
            probe.seek(max(start + (size - start) * i // streams, cuts[-1]))
            probe.readline()
            cuts.append(min(probe.tell(), size))
    cuts.append(size)
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a] or [(start, size)]


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under taskset or a CPU-pinned container)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _native_range(path, start, end) -> pa.NativeFile:
    """Bytes ``start:end`` of a local file, as an Arrow stream over a memory map."""
    mapped = pa.memory_map(os.fspath(path))
    return pa.BufferReader(mapped.read_at(end - start, start))


def _read_typed_ranges(path, header, ranges, block_bytes, sink: RatingSink, progress: _Progress):
    parts = sink.parts(len(ranges))
    failures = [None] * len(ranges)

    def read(i, start, end):
        try:
            _read_typed(_native_range(path, start, end), path, header, block_bytes, parts[i], progress,
                        part_of_file=True)
        except _FastPathFailed as exc:
            failures[i] = exc
        except BaseException as exc:  # re-raised below, in the caller's thread
            failures[i] = exc

    threads = [threading.Thread(target=read, args=(i, a, b), name=f"ratings-range-{i}", daemon=True)
               for i, (a, b) in enumerate(ranges)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failure = next((f for f in failures if f is not None), None)
    if failure is not None:
        raise failure
    sink.join(parts)


def _is_empty_body(failure: str, progress) -> bool:
    """pyarrow refuses a header-only file; for us that is simply zero rows."""
    return failure.startswith("Empty CSV file") and progress.rows == 0


def _checked_batch(batch):
    """Numpy views of one record batch, or _FastPathFailed if a value breaks the contract."""
    if any(col.null_count for col in batch.columns):
        raise _FastPathFailed("missing value")
    user, anime, rating = (col.to_numpy() for col in batch.columns)
    if len(rating) == 0:
        return user, anime, rating
    if user.min() < 0 or anime.min() < 0:
        raise _FastPathFailed("negative id")
    if rating.min() < S.RATING_MIN or rating.max() > S.RATING_MAX:
        raise _FastPathFailed("rating out of range")
    return user, anime, rating


# ---------------------------------------------------------------- strict diagnostic pass

def diagnose_ratings(path, header):
    """Slow csv-module pass that raises InputError at the first line breaking the contract."""
    positions = [(name, header.index(name)) for name in S.RATING_COLUMNS]
    for line, row in _csv_rows(path):
        problem = _row_problem(row, header, positions)
        if problem:
            field_name, message, expected = problem
            raise InputError(path, message, line=line, field=field_name, expected=expected)


def _csv_rows(path):
    """(line number, fields) for each non-blank data row; undecodable bytes become surrogates."""
    with open_input(path) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
        reader = csv.reader(text, strict=True)
        start = 1
        try:
            next(reader, None)
            while True:
                start = reader.line_num + 1
                row = next(reader, None)
                if row is None:
                    return
                if row:
                    yield start, row
        except csv.Error as exc:
            raise InputError(path, f"malformed CSV ({exc})", line=start,
                             expected="quotes closed on the line they open") from None


def _row_problem(row, header, positions):
    """(field, message, expected) for the first rule a ratings row breaks, else None."""
    if _has_surrogates(row):
        return _non_utf8_field(row, header), "not valid UTF-8", "UTF-8 text"
    if len(row) != len(header):
        field_name = header[len(row)] if len(row) < len(header) else f"<extra field {len(header) + 1}>"
        return field_name, f"found {len(row)} fields", f"{len(header)} fields: {','.join(header)}"
    for name, pos in positions:
        text = row[pos].strip()
        is_rating = name == S.RATING_COL
        expected = _RATING_EXPECTED if is_rating else _ID_EXPECTED
        if not text:
            return name, "missing value", expected
        if not _INT_RE.match(text):
            return name, f"not an integer: {text[:40]!r}", expected
        value = int(text)
        if is_rating and not S.RATING_MIN <= value <= S.RATING_MAX:
            return name, f"rating {value} out of range", expected
        if not is_rating and value < 0:
            return name, f"negative id {value}", expected
    return None


def _non_utf8_field(row, header) -> str | None:
    bad = next(i for i, value in enumerate(row) if _has_surrogates([value]))
    return header[bad] if bad < len(header) else None


def _has_surrogates(row) -> bool:
    try:
        "\x1f".join(row).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# ---------------------------------------------------------------- lenient line pass

_REASONS = ("", "wrong number of fields", "not valid UTF-8", "missing value", "not an integer",
            "negative id", "rating out of range")
_WRONG_COUNT, _NOT_UTF8, _MISSING, _NOT_INT, _NEGATIVE, _RANGE = range(1, 7)


def _read_lenient(path, header, block_bytes, skipped: SkipReport, sink: RatingSink, progress: _Progress):
    """Vectorised pass over physical lines that keeps valid rows and reports the others."""
    line = 2
    with open_input(path) as stream:
        read_header(stream, path)
        carry = b""
        while True:
            block = stream.read(block_bytes)
            data = carry + block
            final = not block
            consumed, n_lines, arrays = _parse_lines(path, data, final, line, header, skipped)
            sink.add(*arrays)
            progress.add(arrays[2])
            line += n_lines
            carry = data[consumed:]
            if len(carry) > MAX_LINE_BYTES:
                raise InputError(path, "line longer than 1 MiB", line=line, expected="a short CSV row")
            if final:
                break


def _line_ends(buf: np.ndarray, final: bool) -> np.ndarray:
    """Exclusive end offsets of complete lines; \\n, \\r\\n and a lone \\r all end a line."""
    newline = buf == 10
    cr = buf == 13
    cr[:-1] &= ~newline[1:]
    if not final and len(buf):
        cr[-1] = False
    ends = np.flatnonzero(newline | cr) + 1
    if final and len(buf) and (not len(ends) or ends[-1] != len(buf)):
        ends = np.append(ends, len(buf))
    return ends


def _parse_lines(path, data: bytes, final: bool, first_line: int, header, skipped: SkipReport):
    """Parse the complete lines of ``data``; returns (bytes consumed, lines, (user, anime, rating))."""
    buf = np.frombuffer(data, np.uint8)
    ends = _line_ends(buf, final)
    n = len(ends)
    consumed = int(ends[-1]) if n else 0
    reason = np.zeros(n, np.int8)
    bad_field = np.full(n, -1, np.int8)
    high = np.flatnonzero(buf[:consumed] >= 0x80)
    if len(high):
        buf = _mark_non_utf8(data, buf, high, ends, reason)
    offsets = np.concatenate(([0], ends)).astype(np.int32)
    lines = pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(buf[:consumed].tobytes())])
    arrays = _parse_fields(lines, header, reason, bad_field)
    _report(path, first_line, reason, bad_field, skipped)
    return consumed, n, arrays


def _mark_non_utf8(data, buf, high, ends, reason):
    """Flag lines with invalid UTF-8; mask non-ASCII bytes so the rest parses as ASCII text."""
    for idx in np.unique(np.searchsorted(ends, high, side="right")):
        start = int(ends[idx - 1]) if idx else 0
        try:
            data[start:int(ends[idx])].decode("utf-8")
        except UnicodeDecodeError:
            reason[idx] = _NOT_UTF8
    buf = buf.copy()
    buf[buf >= 0x80] = ord("?")
    return buf


def _parse_fields(lines, header, reason, bad_field):
    """Validate and convert the rating columns of each line; fills reason/bad_field for bad lines."""
    text = pc.utf8_rtrim(lines, characters="\r\n")
    blank = np.asarray(pc.equal(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False))
    parts = pc.split_pattern(text, pattern=",")
    counts = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
    reason[(reason == 0) & ~blank & (counts != len(header))] = _WRONG_COUNT
    rows = np.flatnonzero((reason == 0) & ~blank)
    fields = parts.take(pa.array(rows))
    values = []
    for pos_in_contract, name in enumerate(S.RATING_COLUMNS):
        raw = pc.utf8_trim_whitespace(pc.list_element(fields, header.index(name)))
        value_text = pc.utf8_trim_whitespace(pc.replace_substring_regex(raw, r'^"(.*)"$', r"\1"))
        is_int = pc.match_substring_regex(value_text, S.INT_PATTERN).to_numpy(zero_copy_only=False)
        value = pc.cast(pc.if_else(is_int, value_text, "0"), pa.int64()).to_numpy()
        code = np.zeros(len(rows), np.int8)
        if name == S.RATING_COL:
            code[(value < S.RATING_MIN) | (value > S.RATING_MAX)] = _RANGE
        else:
            code[value < 0] = _NEGATIVE
        code[~is_int] = _NOT_INT
        code[pc.utf8_length(value_text).to_numpy(zero_copy_only=False) == 0] = _MISSING
        fresh = (reason[rows] == 0) & (code != 0)
        reason[rows[fresh]] = code[fresh]
        bad_field[rows[fresh]] = pos_in_contract
        values.append(value)
    keep = reason[rows] == 0
    user, anime, rating = (v[keep] for v in values)
    return user, anime, rating


def _report(path, first_line, reason, bad_field, skipped: SkipReport):
    bad = np.flatnonzero(reason)
    room = max(0, MAX_EXAMPLES - len(skipped.examples))
    for idx in bad[:room]:
        field_name = S.RATING_COLUMNS[bad_field[idx]] if bad_field[idx] >= 0 else None
        skipped.add(path, first_line + int(idx), field_name, _REASONS[reason[idx]])
    skipped.rows += max(0, len(bad) - room)


# ---------------------------------------------------------------- anime metadata

def read_metadata(path, lenient=False, skipped: SkipReport | None = None) -> Metadata:
    """Read any known anime.csv layout into one row per anime id: name, genres "A, B", type."""
    skipped = skipped if skipped is not None else SkipReport()
    with open_input(path) as stream:
        header = read_header(stream, path)
    layout = _metadata_layout(path, header)
    id_pos, name_pos, genres_pos, type_pos = (header.index(c) for c in layout.required)
    first_line: dict[int, int] = {}
    names, genres, types = [], [], []
    for line, row in _csv_rows(path):
        problem = _metadata_problem(row, header, id_pos, first_line)
        if problem:
            field_name, message, expected = problem
            if not lenient:
                raise InputError(path, message, line=line, field=field_name, expected=expected)
            skipped.add(path, line, field_name, message)
            continue
        first_line[int(row[id_pos])] = line
        names.append(row[name_pos].strip() or None)
        genres.append(_genres(row[genres_pos]))
        types.append(_anime_type(row[type_pos]))
    if not first_line:
        raise InputError(path, "no anime rows after the header", line=2, expected="at least one anime row")
    ids = np.fromiter(first_line, np.int64, len(first_line))
    order = np.argsort(ids, kind="stable")
    pick = order.tolist()
    return Metadata(ids[order], [names[i] for i in pick], [genres[i] for i in pick], [types[i] for i in pick],
                    layout.name)


def _metadata_layout(path, header) -> S.MetadataLayout:
    for layout in S.METADATA_LAYOUTS:
        if all(c in header for c in layout.required):
            return layout
    closest = min(S.METADATA_LAYOUTS, key=lambda lay: sum(c not in header for c in lay.required))
    missing = next(c for c in closest.required if c not in header)
    expected = " | ".join(f"{lay.name}: {','.join(lay.required)}" for lay in S.METADATA_LAYOUTS)
    raise InputError(path, f"missing required column {missing!r} (closest layout: {closest.name})",
                     line=1, field=missing, expected=f"one of {expected}")


def _metadata_problem(row, header, id_pos, first_line):
    """(field, message, expected) for the first rule a metadata row breaks, else None."""
    if _has_surrogates(row):
        return _non_utf8_field(row, header), "not valid UTF-8", "UTF-8 text"
    if len(row) != len(header):
        return None, f"found {len(row)} fields", f"{len(header)} fields as in the header"
    name = header[id_pos]
    text = row[id_pos].strip()
    if not text:
        return name, "missing value", _ID_EXPECTED
    if not _INT_RE.match(text) or int(text) < 0:
        return name, f"not a valid id: {text[:40]!r}", _ID_EXPECTED
    if int(text) in first_line:
        return name, f"duplicate anime id {int(text)} (first on line {first_line[int(text)]})", "unique anime ids"
    return None


def _genres(text: str) -> str:
    parts = (g.strip() for g in text.split(","))
    return ", ".join(g for g in parts if g and g.lower() not in S.MISSING_VALUES)


def _anime_type(text: str) -> str:
    kind = text.strip()
    return S.UNKNOWN_TYPE if kind.lower() in S.MISSING_VALUES else kind
