"""A chaos run's history: one JSON object per line, in the order things were seen.

Every record has ``type`` and ``time`` (unix seconds, the recorder's clock; an ``event`` carries
the hypervisor's own time of the event, on the same machine or the same kernel's clock):

    start    seed, deployment (local or compose), targets, schedule, fencing
    vm       id, name, definition (as the hypervisor stored it), image (base64, only when the
             workload cannot be rebuilt to the same bytes)
    fault    action (kill, pause, restart, partition), target, kind (cpu, hypervisor, guest, redis),
             pid or container, pcpu (a cpu target's pCPU id), seconds (pause, partition)
    recover  target, action: the end of a pause (SIGCONT, unpause) or a partition (reconnected), or
             a killed guest relaunched
    service  name, pid, restarts: the local supervisor restarted a service (services.json changed)
    event    cursor, kind, vm, pcpu, detail: the hypervisor's event stream (StreamEvents)
    commit   vm, token, current (the grant current then), status, pcpu, boot, base, generation,
             retired, end, outcome (applied, refused), why, fenced: the store's commit log
    result   vm, name, status, doc (WaitVm's result_json), credit, cpu_seconds
    note     text: what the runner wants the reader to know (a missed window, a retry)
    end      ended (every VM ended), seconds

``ringlab chaos check HISTORY`` reads it back (``load``).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import IO, Any

__all__ = ["History", "load"]


class History:
    """Appends records to a JSON-lines file, one write per record, from any thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self.records: list[dict[str, Any]] = []

    def add(self, type: str, **fields: Any) -> dict[str, Any]:
        record = {"type": type, "time": fields.pop("time", None) or time.time(), **fields}
        line = json.dumps(record, sort_keys=False)
        with self._lock:
            self.records.append(record)
            self._file.write(line + "\n")
            self._file.flush()
        return record

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(path: Path | str) -> list[dict[str, Any]]:
    """The records of a history file; a torn last line (the recorder was killed) is left out.
    Raises ValueError naming the line for any other line that is not a JSON object."""
    records = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a JSON object: {line[:60]!r}") from None
        if not isinstance(record, dict) or "type" not in record:
            raise ValueError(f"{path}:{number}: not a history record (no 'type'): {line[:60]!r}")
        records.append(record)
    return records
