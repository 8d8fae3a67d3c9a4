"""Result records: provenance of the machine and code, and append-only JSON lines.

Every record is one JSON object on one line of `<logdir>/results.jsonl`. A line is written with a
single `write` on a file opened for appending, under an exclusive `flock`, then fsynced, so a crash
(or a killed cell) never corrupts earlier lines, and several processes (one per GPU) can append to
one file. A file that ends in a torn line (a writer killed mid-line, a full disk) gets the next
record on a fresh line; readers skip torn lines and say how many they skipped. A write that fails
or comes up short raises RecordWriteError naming the file: never a silent success.
A human-readable line goes to `<logdir>/logging.log` next to it. The fields of each record kind:
DESIGN section 12.

A record's cell is named by `cell_id`: a hash of what was asked for (model, inner net, dtypes, mode,
batch, lengths, compile, CUDA graph), the same whether the cell ran alone or in a sweep, so re-runs of
one cell can be told apart from different cells.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os

from ttt_decode.errors import RecordWriteError, UserError
from ttt_decode.provenance import now

RESULTS = "results.jsonl"
LOG = "logging.log"


def cell_key(c: dict) -> tuple:
    """What identifies a cell: the fields a sweep varies, as requested (None inner net = the model's default)."""
    return (c["model"], c.get("inner_net") or "", c["dtype"], c.get("state_dtype") or "", c["mode"], int(c["batch"]),
            int(c["promptlen"]), int(c["genlen"]), bool(c["compile"]), bool(c["cuda_graph"]))


def cell_id(c: dict) -> str:
    return hashlib.sha1(repr(cell_key(c)).encode()).hexdigest()[:12]


def record_cell(r: dict) -> str:
    """The cell a record belongs to: its cell_id, or (records older than cell_id) its fields."""
    if r.get("cell_id"):
        return r["cell_id"]
    fields = ("model", "inner_net", "dtype", "state_dtype", "mode", "batch", "promptlen", "genlen", "compile",
              "cuda_graph")
    return repr(tuple(str(r.get(f)) for f in fields))


def _write_error(path: str, what: str) -> RecordWriteError:
    return RecordWriteError(f"cannot write {path}: {what}; free disk space or fix the permissions (or choose "
                            "another --logdir), then rerun")


def append_jsonl(path: str, record: dict) -> None:
    """Append one record as one line, atomically with respect to other appenders.

    The lock makes "does the file end with a newline?" and the write one step for every appender."""
    line = (json.dumps(record, default=str) + "\n").encode()
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # O_RDWR: the last byte is read back (pread) to see whether the file ends in a torn line.
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise _write_error(path, e.strerror or str(e)) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        written = os.write(fd, line)
        if written != len(line):
            # A disk that filled up mid-line: the torn tail is skipped by readers, the next record starts afresh.
            raise _write_error(path, f"short write, {written} of {len(line)} bytes (disk full?)")
        os.fsync(fd)
    except OSError as e:
        if isinstance(e, RecordWriteError):
            raise
        raise _write_error(path, e.strerror or str(e)) from e
    finally:
        os.close(fd)


def read_records(path: str) -> tuple[list[dict], list[int]]:
    """(well-formed records, numbers of the unreadable lines) of a JSON-lines file.

    An unreadable line is a torn one (a writer killed mid-write, a full disk) or anything else that is
    not one JSON object; it is skipped, never taken for a record, and callers report how many there were."""
    if not os.path.exists(path):
        return [], []
    with open(path, "rb") as fh:
        return parse_records(fh)


def parse_records(lines) -> tuple[list[dict], list[int]]:
    """read_records on JSON lines already read (an iterable of bytes lines, e.g. a file a Ray task sent back)."""
    records, bad = [], []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            rec = None
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad.append(number)
    return records, bad


def read_jsonl(path: str) -> list[dict]:
    """All well-formed records of a file; torn lines (see read_records) are skipped."""
    return read_records(path)[0]


def unreadable_note(path: str, bad: list[int]) -> str:
    """One line for the user about the unreadable lines of a results file ('' if none)."""
    if not bad:
        return ""
    shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
    return f"{path}: skipped {len(bad)} unreadable line(s) (torn writes; line {shown})"


def prepare_logdir(logdir: str, flag: str = "--logdir", files: tuple[str, ...] = (RESULTS, LOG)) -> str:
    """Create logdir if needed and check, before any work, that files can be written in it.

    One UserError naming the problem and the fix: an empty name, a path that is a file, a directory that
    cannot be created or written (the check creates and removes a probe file; as root, permission bits
    alone would say yes), a results/log file that is not a regular file or cannot be appended to."""
    if not logdir or not str(logdir).strip():
        raise UserError(f"{flag} is empty; give a directory for the results (created if missing), e.g. {flag} exp/run1")
    if os.path.exists(logdir) and not os.path.isdir(logdir):
        raise UserError(f"{flag} {logdir} is a file, not a directory; give a directory (created if missing)")
    try:
        os.makedirs(logdir, exist_ok=True)
        probe = os.path.join(logdir, f".write-test-{os.getpid()}")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{flag} {logdir} is not writable ({e.strerror or e}); fix its permissions or give "
                        f"another {flag}") from None
    for name in files:
        path = os.path.join(logdir, name)
        if not os.path.lexists(path):
            continue
        if not os.path.isfile(path):
            raise UserError(f"{path} is not a regular file; remove it or give another {flag}")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        except OSError as e:
            raise UserError(f"{path} cannot be appended to ({e.strerror or e}); fix its permissions or give "
                            f"another {flag}") from None
    return logdir


def log_line(logdir: str, text: str) -> None:
    path = os.path.join(logdir, LOG)
    try:
        os.makedirs(logdir, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(f"{now()} {text}\n")
    except OSError as e:
        raise _write_error(path, e.strerror or str(e)) from e
