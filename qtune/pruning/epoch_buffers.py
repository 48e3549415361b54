"""The epoch's per-sample statistics in dense buffers indexed by sample id, until the epoch ends.

A list of per-step rows grows with every step (160-185 bytes a sample at 1e7 samples, seconds to
join); these buffers are allocated once, about 38 bytes a sample, on the device the steps run
on, and written in place with ``index_put_``: the writes are queued on the steps' stream, so
there is no host sync. (Host buffers would need each step's values on the host before writing
them, which is a sync.) Steps are staged, up to ``stage_samples`` ids (a few hundred steps),
and written together: one write is ~30 tiny kernels whatever its size.

The result must be exactly what merging the concatenated rows into the store gives
(:meth:`StatisticsStore.merge_updates`; a sample trained twice in an epoch, a pad repeat, is the
case that differs). Per id that is:

* the fields, ``num_tokens`` and whether the sample had signal: its **last** write, in step order
  and, across ranks, rank order (the rows' gather order). Within one step a repeated id keeps its
  last position (found by a stable sort: ``index_put_`` with repeated indices is undefined);
* ``aum``: the margin of its last write **with signal and a finite margin** (``_track`` adds the
  last such one);
* ``unlearned`` (some write had signal and accuracy < 0.5: it was forgotten if it was learned)
  and ``bad`` (some write had signal and a non-finite loss: ``check_finite`` names it): **any**.

Several ranks: each id takes the buffers of the highest rank that wrote it (a max-reduction of
rank stamps, then a sum of each rank's winning entries as integers, so every bit survives).
"""

from __future__ import annotations

import numpy as np
import torch

from qtune.pruning.statistics_store import FIELDS

VERSION = 1


def last_occurrence(keys: torch.Tensor) -> torch.Tensor:
    """True at the last position of each distinct value of ``keys`` (no host sync)."""
    if keys.numel() <= 1:
        return torch.ones_like(keys, dtype=torch.bool)
    ordered, perm = keys.sort(stable=True)
    last = torch.ones_like(ordered, dtype=torch.bool)
    last[:-1] = ordered[1:] != ordered[:-1]
    return torch.empty_like(last).index_put_((perm,), last)


def _join(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p if p.dim() == 1 else p.reshape(-1) for p in parts])


def _pack(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.cpu().numpy()))


def _unpack(packed: torch.Tensor, count: int) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(packed.numpy(), count=count).astype(bool))


class EpochBuffers:
    """``values`` [N+1, C] float32: the record's score keys, then ``_state`` (0 unwritten, 1
    written without signal, 3 with); ``aum`` [N+1] (NaN: none); ``flags`` [N+1, 2] uint8
    (unlearned, bad). Row N takes the writes a step must not make (earlier repeats)."""

    def __init__(self, stage_samples: int = 8192) -> None:
        self.stage_samples = int(stage_samples)  # 0: write every step
        self._staged: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
        self._staged_count = 0
        self.keys: list[str] | None = None
        self.values: torch.Tensor | None = None
        self.aum: torch.Tensor | None = None
        self.flags: torch.Tensor | None = None
        self._fresh = True  # nothing recorded since the last reset: the keys may change

    @property
    def num_samples(self) -> int:
        return 0 if self.values is None else self.values.shape[0] - 1

    @property
    def nbytes(self) -> int:
        held = (self.values, self.aum, self.flags)
        return sum(t.numel() * t.element_size() for t in held if t is not None)

    def reset(self) -> None:
        """A new epoch: nothing written (the allocation is kept)."""
        self._fresh, self._staged, self._staged_count = True, [], 0
        if self.values is not None:
            self.values[:, -1] = 0
            self.aum.fill_(float("nan"))
            self.flags.zero_()

    def _allocate(self, keys: list[str], num_samples: int, device) -> None:
        unknown = set(keys) - set(FIELDS) - {"num_tokens"}
        if unknown:
            raise KeyError(f"unknown score fields {sorted(unknown)}; known: {FIELDS}")
        self.keys = list(keys)
        n = int(num_samples) + 1
        self.values = torch.zeros((n, len(keys) + 1), dtype=torch.float32, device=device)
        self.aum = torch.full((n,), float("nan"), device=device)
        self.flags = torch.zeros((n, 2), dtype=torch.uint8, device=device)

    def written(self) -> torch.Tensor:
        self.flush()
        return self.values[:-1, -1] > 0

    # -- per step ----------------------------------------------------------------------------
    def record(self, sample_ids: torch.Tensor, scores: dict[str, torch.Tensor], num_samples: int) -> None:
        """Book one step's per-sample scores (on the step's device). They are written in batches
        of ``stage_samples``: a write is ~30 tiny kernels (~200 µs of host time on CPU, launch
        bound on GPU), which per step would cost 7x the rest of ``record_batch``."""
        ids = sample_ids.detach()
        if self.values is None or (self._fresh and self.keys != list(scores)):
            self._allocate(list(scores), num_samples, ids.device)
        elif self.keys != list(scores):
            raise ValueError(
                f"a step recorded scores {sorted(scores)} after steps of this epoch recorded {sorted(self.keys)}: "
                "every step must give the same per-sample scores"
            )
        self._fresh = False
        self._staged.append((ids, {k: v.detach() for k, v in scores.items()}))
        self._staged_count += ids.numel()
        if self._staged_count >= self.stage_samples:
            self.flush()

    def flush(self) -> None:
        """Write the staged steps (in step order) into the buffers."""
        if not self._staged:
            return
        staged, self._staged, self._staged_count = self._staged, [], 0
        ids = _join([i for i, _ in staged]).long()
        scores = {k: _join([s[k] for _, s in staged]) for k in self.keys}
        if self.values.device != ids.device:  # restored from a checkpoint on the host
            self.to(ids.device)
        n = self.num_samples
        ntok = scores.get("num_tokens")
        signal = ntok > 0 if ntok is not None else torch.ones_like(ids, dtype=torch.bool)
        cols = [(v.long() if k == "num_tokens" else v).float() for k, v in scores.items()]
        cols.append(signal.float() * 2 + 1)
        rows = torch.where(last_occurrence(ids), ids, n)
        self.values.index_put_((rows,), torch.stack(cols, 1))
        if "margin" in scores:
            m = scores["margin"].float()
            ok = signal & torch.isfinite(m)
            keyed = torch.where(ok, ids, -1)
            self.aum.index_put_((torch.where(ok & last_occurrence(keyed), ids, n),), m)
        flags = []
        for key, test in (("accuracy", lambda v: ~(v.float() >= 0.5)), ("loss", lambda v: ~torch.isfinite(v))):
            flags.append(test(scores[key]) & signal if key in scores else torch.zeros_like(signal))
        src = torch.stack(flags, 1).to(torch.uint8)
        self.flags.scatter_reduce_(0, ids[:, None].expand(-1, 2), src, "amax")

    def to(self, device) -> None:
        self.flush()
        self.values, self.aum, self.flags = (t.to(device) for t in (self.values, self.aum, self.flags))

    def nonfinite_ids(self) -> list[int]:
        """Ids whose loss was non-finite in some step with response tokens."""
        self.flush()
        return [] if self.flags is None else self.flags[:-1, 1].nonzero().flatten().cpu().tolist()

    # -- epoch end ---------------------------------------------------------------------------
    def gather(self, comm) -> None:
        """Every rank ends with the same buffers: per id, those of the highest rank that wrote
        it (the last in the rows' gather order); any rank's flags."""
        if comm.world_size == 1 or self.values is None:
            return
        self.flush()
        rank = comm.rank

        def take_highest(written: torch.Tensor, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            stamp = torch.where(written, rank, -1).to(torch.int32)
            winner = comm.reduce(stamp, "max").to(data.device)
            mine = winner == rank
            mine = mine[:, None] if data.dim() == 2 else mine
            bits = comm.reduce(torch.where(mine, data, 0).view(torch.int32), "sum").to(data.device)
            return winner >= 0, bits.view(torch.float32)

        _, self.values = take_highest(self.values[:, -1] > 0, self.values)
        has_aum, aum = take_highest(torch.isfinite(self.aum), self.aum)
        self.aum = torch.where(has_aum, aum, float("nan"))
        self.flags = comm.reduce(self.flags.to(torch.int32), "max").to(self.flags.device).to(torch.uint8)

    def apply(self, store, epoch: int) -> None:
        """Write the epoch into the store as ``merge_updates`` of its rows would, with dense
        elementwise selects over all ids (no scattered writes; the buffers are not copied on the
        host, and one device-to-host copy each otherwise)."""
        if self.values is None:
            return
        self.flush()
        vals, aum, flags = (t[:-1].cpu() for t in (self.values, self.aum, self.flags))
        written, signal = vals[:, -1] > 0, vals[:, -1] > 2
        scored, silent = written & signal, written & ~signal
        for j, name in enumerate(self.keys):
            if name == "num_tokens":
                torch.where(written, vals[:, j].long(), store.num_tokens, out=store.num_tokens)
            else:
                old = getattr(store, name).masked_fill_(silent, float("nan"))  # no response tokens
                torch.where(scored, vals[:, j], old, out=old)
        store.seen_epoch.masked_fill_(written, int(epoch))
        if "margin" in self.keys:
            ok = torch.isfinite(aum)  # only ever written where the sample was written
            torch.where(ok, store.aum_sum + aum, store.aum_sum, out=store.aum_sum)
            store.aum_count += ok
        if "accuracy" in self.keys:
            was = store.learned.clone()
            store.forgetting += was & flags[:, 0].bool()
            torch.where(scored, vals[:, self.keys.index("accuracy")] >= 0.5, was, out=store.learned)

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict | None:
        """The written entries only, on the host: bit-packed written mask, score columns
        (``num_tokens`` as the narrowest integer that holds it), bit-packed signal and flags, and
        ``aum`` only where it is not the entry's own margin (a repeated id)."""
        if self.values is None:
            return None
        written = self.written()
        ids = written.nonzero().flatten()
        vals = self.values[ids].cpu()
        signal = vals[:, -1] > 2
        cols = {k: vals[:, j].clone() for j, k in enumerate(self.keys)}  # own storages: only these are saved
        if "num_tokens" in cols:
            t = cols["num_tokens"]
            small = t.numel() == 0 or (t.abs().max() < 2**15)
            cols["num_tokens"] = t.to(torch.int16 if small else torch.int32)
        aum = self.aum[ids].cpu()
        derived = self._derived_aum(cols, signal)
        odd = ~((aum == derived) | (aum.isnan() & derived.isnan()))
        return {
            "version": VERSION,
            "num_samples": self.num_samples,
            "keys": list(self.keys),
            "written": _pack(written),
            "columns": cols,
            "signal": _pack(signal),
            "flags": _pack(self.flags[ids].cpu().flatten()),
            "aum_at": odd.nonzero().flatten(),
            "aum": aum[odd],
        }

    @staticmethod
    def _derived_aum(cols: dict, signal: torch.Tensor) -> torch.Tensor:
        if "margin" not in cols:
            return torch.full(signal.shape, float("nan"))
        m = cols["margin"]
        return torch.where(signal & torch.isfinite(m), m, float("nan"))

    def load_state_dict(self, state: dict) -> None:
        if int(state.get("version", 0)) != VERSION:
            raise ValueError(f"mid-epoch statistics of format {state.get('version')!r}; this qtune reads {VERSION}")
        n = int(state["num_samples"])
        self._allocate(state["keys"], n, "cpu")
        ids = _unpack(state["written"], n).nonzero().flatten()
        m = ids.numel()
        signal = _unpack(state["signal"], m)
        cols = {k: v.float() for k, v in state["columns"].items()}
        self.values[ids] = torch.stack([cols[k] for k in self.keys] + [signal.float() * 2 + 1], 1)
        aum = self._derived_aum(cols, signal)
        aum[state["aum_at"]] = state["aum"]
        self.aum[ids] = aum
        self.flags[ids] = _unpack(state["flags"], 2 * m).view(m, 2).to(torch.uint8)
        self._fresh = False

    def load_rows(self, rows: list[dict[str, torch.Tensor]], num_samples: int) -> None:
        """Rows of a mid-epoch checkpoint written before these buffers: replayed as one step
        (the last occurrence in row order wins, as it did when they were merged)."""
        self.values = None
        if rows:
            joined = {k: torch.cat([r[k].reshape(-1).cpu() for r in rows]) for k in rows[0]}
            self.record(joined.pop("sample_ids"), joined, num_samples)
