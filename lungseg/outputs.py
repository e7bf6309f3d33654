"""The output folder of ``predict_scans`` (``scripts/predict.sh``): nothing a user had is replaced or lost.

- A file lungseg did not write is never replaced; "written by lungseg" is decided by lungseg's own
  mark in ``measurements.json`` (``produced_by``), never by a file name.
- Two inputs with the same name (two patients' ``chest.nii.gz``) get two names (chest, chest-2).
- Each scan's files and row are recorded as soon as they are written, so an interrupted run keeps
  the scans it finished; one run at a time writes into a folder (a lock).
- The folder is checked before anything is segmented: a file, not writable, damaged records.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from lungseg.errors import LungsegError
from lungseg.report import write_json

PRODUCED_BY = "lungseg_utils.predict_scans"  # the mark of lungseg's own measurements.json
RECORDS = ("measurements.json", "measurements.csv")


class OutputFolder:
    def __init__(self, folder):
        self.folder = Path(folder).expanduser()
        if self.folder.exists() and not self.folder.is_dir():
            raise LungsegError(f"OUTPUT_DIR {self.folder} is an existing file, not a folder. Give a folder (a new "
                               "one is created).")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise LungsegError(f"OUTPUT_DIR {self.folder} cannot be created ({error.strerror}). Give a folder you "
                               "can write to.") from None
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise LungsegError(f"OUTPUT_DIR {self.folder} is not writable. Give a folder you can write to.")
        self._lock = None
        self.record = self.folder / "measurements.json"
        try:
            previous = json.loads(self.record.read_text()) if self.record.is_file() else {}
        except (ValueError, UnicodeDecodeError):
            previous = {}
        if not isinstance(previous, dict) or previous.get("produced_by") != PRODUCED_BY:
            previous = {}  # a file of that name that lungseg did not write: never ours to replace
        self.ours = set(previous.get("outputs", [])) | (set(RECORDS) if previous else set())
        self.inputs = dict(previous.get("inputs", {}))  # each output name -> the input it was made from
        self.written = []
        for name in RECORDS:
            if (self.folder / name).exists() and name not in self.ours:
                raise LungsegError(f"{self.folder / name} exists and lungseg did not write it: refusing to overwrite "
                                   "it. Choose another OUTPUT_DIR, or move the file away.")
        self._lock = self._take_lock()
        self.earlier = pd.DataFrame()
        if (self.folder / "measurements.csv").is_file():
            try:
                self.earlier = pd.read_csv(self.folder / "measurements.csv")
            except pd.errors.EmptyDataError:  # an earlier run that segmented nothing
                pass
            except (ValueError, UnicodeDecodeError):
                self.close()
                raise LungsegError(f"{self.folder / 'measurements.csv'} is damaged and cannot be read: move it away "
                                   "(its rows are also in measurements.json), or choose another OUTPUT_DIR.") from None

    def _take_lock(self):
        """One run at a time into a folder: a second one is refused at once, naming the folder."""
        handle = open(self.folder / ".lungseg.lock", "a")
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no fcntl (Windows): no lock
            pass
        except OSError:
            handle.close()
            raise LungsegError(f"another lungseg run is writing into {self.folder}: wait until it ends, or choose "
                               "another OUTPUT_DIR.") from None
        return handle

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing releases the lock
            self._lock = None

    def own_files(self) -> set:
        """The files earlier runs wrote here: never inputs, even when OUTPUT_DIR lies inside INPUT."""
        return {self.folder / name for name in self.ours}

    def name_for(self, name: str, source) -> str:
        """``name``, or name-2, name-3, ... when another input already has it: never another scan's results."""
        source = str(Path(source).resolve())
        unique, number = name, 1
        while self.inputs.get(unique, source) != source:
            number += 1
            unique = f"{name}-{number}"
        self.inputs[unique] = source
        return unique

    def path(self, name: str) -> Path:
        target = self.folder / name
        if target.exists() and name not in self.ours and name not in self.written:
            raise LungsegError(f"{target} exists and lungseg did not write it: refusing to overwrite it. Choose "
                               "another OUTPUT_DIR, or move the file away.")
        if name not in self.written:
            self.written.append(name)
        return target

    def save(self, rows: list, record: dict) -> pd.DataFrame:
        """measurements.csv and measurements.json with this run's rows and the earlier runs' other rows
        (a scan segmented again replaces its own row); written whole, never half a file."""
        table = pd.DataFrame(rows)
        if len(self.earlier):
            table = pd.concat([self.earlier[~self.earlier.name.isin(table.get("name", []))], table], ignore_index=True)
        csv = self.path("measurements.csv")
        temporary = csv.with_name(csv.name + ".partial")
        table.to_csv(temporary, index=False)
        temporary.replace(csv)
        self.path("measurements.json")
        write_json(self.record, {"produced_by": PRODUCED_BY, **record, "measurements": table.to_dict(orient="records"),
                                 "outputs": sorted(self.ours | set(self.written)), "inputs": self.inputs})
        return table
