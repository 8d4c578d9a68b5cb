"""Streaming integration: combine shards as they arrive, write the output atomically.

Rules
-----
* Every accepted member output is written straight to that member's memory-mapped ``.npy``
  store (``keep_member_outputs_dir`` or a temp dir next to the output); in memory there is at
  most one shard's worth of member outputs at a time, so memory does not grow with data x members.
* A shard is combined as soon as every live member delivered it; its rows go to a preallocated
  memory-mapped ``.npy`` temp file in the output's directory.
* Duplicate deliveries of a (member, shard) (task retries) are ignored: the first one wins.
  Deliveries from a member already declared failed are ignored.
* Degraded answers, exact rule: a failed member is excluded from *all* shards. Shards already
  combined with it are recombined from the stored outputs of the remaining members, so every
  shard of the result is combined from the same member set. A live member that has not delivered
  every shard by :meth:`StreamingIntegrator.finish` counts as failed.
* :meth:`StreamingIntegrator.finish` commits the ``.npy`` into place, or (``.csv`` output) writes
  the CSV in chunks to a temp file and commits that (:mod:`framework.atomic`: fsync, rename, the
  mode of a new file). On failure nothing is left at the output path and an existing file there
  is untouched.
* The integrator knows nothing of the evaluation: :meth:`StreamingIntegrator.kept_outputs` hands
  what it kept to :func:`framework.ensemble.evaluation.evaluate_integration`.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from framework import atomic
from framework.ensemble.combiners import Combiner, field_names
from framework.ensemble.outputs import member_column
from framework.ensemble.specs import FEATURES_KEY, IntegrationError, MemberSpec, label_array

CSV_CHUNK_ROWS = 65536


@dataclass(frozen=True)
class IntegrationResult:
    """What :meth:`StreamingIntegrator.finish` produced.

    Attributes
    ----------
    members_missing : mapping
        Failed/excluded member -> reason.
    member_outputs : mapping
        Member -> its kept outputs ``.npy`` (only with ``keep_member_outputs_dir``).
    """

    output_path: Path
    rows: int
    members_used: tuple[str, ...]
    members_missing: Mapping[str, str]
    output_columns: tuple[str, ...] = ()
    member_outputs: Mapping[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class KeptOutputs:
    """What a finished integration kept: the input of its evaluation.

    Attributes
    ----------
    members : tuple of MemberSpec
        The members used, in spec order.
    member_outputs : mapping
        Member -> its raw output on all rows (memory-mapped).
    ensemble_output : ndarray
        The structured result on all rows (memory-mapped).
    extra_inputs : mapping
        Further combiner inputs kept (``FEATURES_KEY`` for stacking with passthrough).
    members_missing : mapping
        Failed/excluded member -> reason.
    """

    members: tuple[MemberSpec, ...]
    member_outputs: Mapping[str, np.ndarray]
    ensemble_output: np.ndarray
    extra_inputs: Mapping[str, np.ndarray]
    members_missing: Mapping[str, str]


def write_csv_atomically(records: np.ndarray, path: Path, chunk_rows: int = CSV_CHUNK_ROWS) -> None:
    """Write structured ``records`` as CSV (header = field names), replacing ``path`` atomically."""
    with atomic.atomic_open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(field_names(records.dtype))
        for start in range(0, len(records), chunk_rows):
            writer.writerows(np.asarray(records[start:start + chunk_rows]).tolist())


class StreamingIntegrator:
    """Integrates member outputs shard by shard (see the module docstring for the rules).

    Parameters
    ----------
    combiner : Combiner
    members : sequence of MemberSpec
        Must be the combiner's members.
    shard_rows : sequence of int
        Rows of each shard, in row order.
    output_path : Path
        ``.npy`` or ``.csv``.
    min_members : int, optional
        Fewest members that must succeed (default: all). Stacking needs all.
    keep_member_outputs_dir : Path, optional
        Keep the members' outputs there after finish (needed by :meth:`evaluate`).
    explain : bool
        Add a column ``member_<name>`` per member used: what it said for the row (its label when
        the ensemble predicts labels, else the value it contributed).
    """

    def __init__(self, combiner: Combiner, members: Sequence[MemberSpec], shard_rows: Sequence[int],
                 output_path: Path, min_members: int | None = None,
                 keep_member_outputs_dir: Path | None = None, explain: bool = False) -> None:
        self.combiner = combiner
        self.explain = explain
        self.members = tuple(members)
        names = [m.name for m in self.members]
        expected = [n for n in combiner.inputs if n != FEATURES_KEY]
        if sorted(names) != sorted(expected):
            raise ValueError(f"members {names} differ from the combiner's {expected}")
        self.inputs = tuple(combiner.inputs)
        self.min_members = len(names) if min_members is None else int(min_members)
        if not 1 <= self.min_members <= len(names):
            raise ValueError(f"min_members must be between 1 and {len(names)}, got {min_members}")
        if self.min_members < len(names) and not combiner.supports_subsets:
            raise ValueError(f"{combiner.method} needs every member; min_members must be {len(names)}")
        self.shard_rows = [int(r) for r in shard_rows]
        if any(r < 0 for r in self.shard_rows):
            raise ValueError("shard_rows must be non-negative")
        self.offsets = np.concatenate([[0], np.cumsum(self.shard_rows, dtype=np.int64)])
        self.rows = int(self.offsets[-1])
        self.output_path = Path(output_path)
        self.format = self.output_path.suffix.lower().lstrip(".")
        if self.format not in ("npy", "csv"):
            raise ValueError(f"output {self.output_path}: only .npy and .csv are supported")
        self.keep_dir = Path(keep_member_outputs_dir) if keep_member_outputs_dir is not None else None
        directory = self.output_path.parent
        if self.keep_dir is not None:
            self.keep_dir.mkdir(parents=True, exist_ok=True)
            self.store_dir = self.keep_dir
        else:
            self.store_dir = Path(tempfile.mkdtemp(dir=directory, prefix=f".{self.output_path.name}.members-"))
        # The records are built in a .npy that becomes the output (same directory: a rename), or,
        # for a CSV output, the kept copy of the result (built where it is kept).
        self.scratch = (self.keep_dir / "ensemble-output.npy" if self.format == "csv" and self.keep_dir is not None
                        else self.output_path)
        self.tmp_output = atomic.create_sibling(self.scratch, ".partial.npy")
        self.output = np.lib.format.open_memmap(self.tmp_output, mode="w+", dtype=combiner.output_dtype,
                                                shape=(self.rows,))
        self.specs = {m.name: m for m in self.members}
        self.stores: dict[str, np.memmap] = {}
        self.store_paths: dict[str, Path] = {}
        self.delivered: dict[str, set[int]] = {n: set() for n in self.inputs}
        self.failed: dict[str, str] = {}
        self.combined_with: dict[int, frozenset[str]] = {}
        self.result: IntegrationResult | None = None
        self.closed = False

    # Arrivals -------------------------------------------------------------------------------
    def add(self, member: str, shard: int, output: np.ndarray) -> None:
        """Accept one member's output on one shard (idempotent; any order)."""
        self._check_open()
        if member not in self.delivered:
            raise ValueError(f"unknown member {member!r}")
        if not 0 <= shard < len(self.shard_rows):
            raise ValueError(f"member {member}: shard {shard} out of range 0..{len(self.shard_rows) - 1}")
        if member in self.failed or shard in self.delivered[member]:
            return
        arr = np.asarray(output)
        if arr.ndim == 0 or arr.shape[0] != self.shard_rows[shard]:
            raise ValueError(f"member {member}: shard {shard} has {self.shard_rows[shard]} rows, "
                             f"output has shape {arr.shape}")
        store = self._store(member, arr)
        if arr.shape[1:] != store.shape[1:]:
            raise ValueError(f"member {member}: shard {shard} output shape {arr.shape[1:]} differs from "
                             f"earlier shards' {store.shape[1:]}")
        if not np.can_cast(arr.dtype, store.dtype, casting="same_kind") or (
                arr.dtype.kind == "U" and arr.dtype.itemsize > store.dtype.itemsize):
            raise ValueError(f"member {member}: shard {shard} output dtype {arr.dtype} does not fit {store.dtype}")
        store[self.offsets[shard]:self.offsets[shard + 1]] = arr
        self.delivered[member].add(shard)
        self._combine_if_ready(shard)

    def member_failed(self, member: str, reason: str) -> None:
        """Exclude ``member`` from every shard; recombine shards already combined with it."""
        self._check_open()
        if member not in self.specs:
            raise ValueError(f"unknown member {member!r}")
        if member in self.failed:
            return
        self.failed[member] = reason
        if len(self.live()) >= self.min_members:
            for shard in range(len(self.shard_rows)):
                self._combine_if_ready(shard)

    def live(self) -> list[str]:
        """Members not failed, in spec order."""
        return [m.name for m in self.members if m.name not in self.failed]

    # Finish ---------------------------------------------------------------------------------
    def finish(self) -> IntegrationResult:
        """Write the output atomically and report which members were used / missing.

        Raises
        ------
        IntegrationError
            Fewer than ``min_members`` succeeded (naming the missing ones), or features missing.
        """
        self._check_open()
        try:
            for name in self.live():
                undelivered = sorted(set(range(len(self.shard_rows))) - self.delivered[name])
                if undelivered:
                    self.member_failed(name, f"did not deliver shard(s) {_short(undelivered)}")
            if FEATURES_KEY in self.inputs and len(self.delivered[FEATURES_KEY]) < len(self.shard_rows):
                raise IntegrationError("the shards' features (needed by stacking passthrough) were not all given")
            live = self.live()
            if len(live) < self.min_members:
                missing = "; ".join(f"{n}: {r}" for n, r in self.failed.items())
                raise IntegrationError(f"only {len(live)} of {len(self.members)} members succeeded "
                                       f"(min_members={self.min_members}); missing: {missing}")
            for shard in range(len(self.shard_rows)):
                self._combine_if_ready(shard)
                if self.combined_with.get(shard) != frozenset(live):
                    raise IntegrationError(f"shard {shard} could not be combined")
            self.output.flush()
            output = self.output
            del self.output
            if self.explain:
                output = self._with_member_columns(output, live)
            if self.format == "npy":
                del output
                atomic.commit(self.tmp_output, self.output_path)
            else:
                write_csv_atomically(output, self.output_path)
                del output
                if self.keep_dir is not None:
                    atomic.commit(self.tmp_output, self.scratch)
                else:
                    self.tmp_output.unlink(missing_ok=True)
        except BaseException:
            self.abort()
            raise
        self.stores.clear()
        if self.keep_dir is None:
            shutil.rmtree(self.store_dir, ignore_errors=True)
        self.closed = True
        self.result = IntegrationResult(
            output_path=self.output_path, rows=self.rows, members_used=tuple(live),
            members_missing=dict(self.failed), output_columns=tuple(self.combiner.output_columns),
            member_outputs={n: p for n, p in self.store_paths.items() if n in live} if self.keep_dir else {},
        )
        return self.result

    def abort(self) -> None:
        """Drop every temp file (the kept member outputs stay); the output path is never touched."""
        self.closed = True
        self.__dict__.pop("output", None)
        self.stores.clear()
        self.tmp_output.unlink(missing_ok=True)
        if self.keep_dir is None:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def ensemble_output(self) -> np.ndarray:
        """The finished result as a structured array (memory-mapped)."""
        if self.result is None:
            raise IntegrationError("not finished")
        if self.format == "npy":
            return np.load(self.output_path, mmap_mode="r")
        if self.keep_dir is None:
            raise IntegrationError("a CSV result is only kept as .npy with keep_member_outputs_dir")
        return np.load(self.scratch, mmap_mode="r")

    def kept_outputs(self) -> KeptOutputs:
        """The used members' outputs and the result, memory-mapped (needs ``keep_member_outputs_dir``)."""
        if self.result is None or self.keep_dir is None:
            raise IntegrationError("evaluate needs a finished integration with keep_member_outputs_dir")
        used = tuple(self.specs[n] for n in self.result.members_used)
        outputs = {m.name: np.load(self.store_paths[m.name], mmap_mode="r") for m in used}
        extra = {}
        if FEATURES_KEY in self.store_paths:
            extra[FEATURES_KEY] = np.load(self.store_paths[FEATURES_KEY], mmap_mode="r")
        return KeptOutputs(members=used, member_outputs=outputs, ensemble_output=self.ensemble_output(),
                           extra_inputs=extra, members_missing=dict(self.result.members_missing))

    # Internals ------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise IntegrationError("this integration is already finished or aborted")

    def _store(self, member: str, first: np.ndarray) -> np.memmap:
        store = self.stores.get(member)
        if store is not None:
            return store
        dtype = first.dtype
        spec = self.specs.get(member)
        if spec is not None and spec.kind == "classifier" and spec.output == "predict" and spec.classes:
            dtype = np.promote_types(label_array(spec.classes).dtype, dtype)
        if dtype.kind == "O":
            raise ValueError(f"member {member}: object-dtype outputs cannot be stored; got {first[:3]!r}")
        index = self.inputs.index(member)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in member)
        path = self.store_dir / f"member-{index:03d}-{safe}.npy"
        store = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(self.rows,) + first.shape[1:])
        self.stores[member], self.store_paths[member] = store, path
        return store

    def _with_member_columns(self, output: np.memmap, live: Sequence[str]) -> np.memmap:
        """A copy of ``output`` with a ``member_<name>`` column per live member (a new temp file)."""
        labels = self.combiner.predicts_labels
        probe = {n: member_column(self.specs[n], np.asarray(self.stores[n][:1]), labels) for n in live}
        dtype = np.dtype(output.dtype.descr + [(f"member_{n}", probe[n].dtype) for n in live])
        path = atomic.create_sibling(self.scratch, ".explained.npy")
        explained = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(self.rows,))
        for lo in range(0, self.rows, CSV_CHUNK_ROWS):
            hi = min(lo + CSV_CHUNK_ROWS, self.rows)
            for name in field_names(output.dtype):
                explained[name][lo:hi] = output[name][lo:hi]
            for n in live:
                said = member_column(self.specs[n], np.asarray(self.stores[n][lo:hi]), labels)
                explained[f"member_{n}"][lo:hi] = said
        explained.flush()
        del output
        self.tmp_output.unlink(missing_ok=True)
        self.tmp_output = path
        return explained

    def _combine_if_ready(self, shard: int) -> None:
        live = self.live()
        needed = live + [FEATURES_KEY] if FEATURES_KEY in self.inputs else live
        if not live or len(live) < self.min_members or self.combined_with.get(shard) == frozenset(live):
            return
        if any(shard not in self.delivered[n] for n in needed):
            return
        lo, hi = self.offsets[shard], self.offsets[shard + 1]
        outputs = {n: np.asarray(self.stores[n][lo:hi]) for n in needed}
        self.output[lo:hi] = self.combiner.combine(outputs)
        self.combined_with[shard] = frozenset(live)

    def __enter__(self) -> "StreamingIntegrator":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None and not self.closed:
            self.abort()


def _short(items: Sequence[int], limit: int = 10) -> str:
    text = ", ".join(str(i) for i in items[:limit])
    return text + (f", ... ({len(items)} in all)" if len(items) > limit else "")
