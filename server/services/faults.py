"""Active faults, deployment-wide (``/_voice/faults``; what a fault is: core/faults.py).

The list lives in the store (``_voice/faults``, expiring with its last fault); a ``_voice/faults``
relay notice makes every node reread it, so every node applies the same faults. Each node keeps
the list in memory, and the paths that can fail (the token store under mint and consume, the
mint and consume decisions, ``/client`` registrations, WhatsApp Graph calls) ask
:meth:`FaultBoard.check` only while that list is not empty: with no fault, one truthiness test.

Every application is journaled (``fault.applied``). Counts and ``applied`` are kept by the node
that applies the fault and written back to the store; two nodes applying one counted fault at the
same instant may together go past its count by one each (faults are for tests, not for billing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from server.core.faults import Fault, parse_fault
from server.errors import FaultNotFound, InjectedFault, StoreUnavailable, VoiceError
from server.services.journal import Journal
from server.store.base import Store

log = logging.getLogger("voice.faults")
KEY = "_voice/faults"
NOTICE = "_voice/faults"
Notify = Callable[[str, str], Awaitable[None]]


class FaultBoard:
    def __init__(
        self,
        store: Store,
        journal: Journal | None,
        clock: Callable[[], float],
        notify: Notify,
        chance: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self._journal = journal
        self._clock = clock
        self._notify = notify
        self._chance = chance
        self.active: list[Fault] = []  # empty: no path pays more than a truthiness test
        self.on_change: list[Callable[[list[Fault]], Awaitable[None]]] = []  # client/drop
        self._unsaved: Counter[str] = Counter()  # applications here not yet in the store
        self._saving: asyncio.Task[None] | None = None

    # -- the list --------------------------------------------------------------------------
    async def add(self, body: Mapping[str, Any]) -> Fault:
        fault = parse_fault(body, self._clock(), lambda: "flt_" + secrets.token_hex(6))
        faults = [*(await self._read()), fault]
        await self._write(faults)
        return fault

    async def items(self) -> list[Fault]:
        self.active = await self._read()
        return list(self.active)

    async def delete(self, fault_id: str | None) -> int:
        faults = await self._read()
        kept = [f for f in faults if fault_id is not None and f.id != fault_id]
        if fault_id is not None and len(kept) == len(faults):
            raise FaultNotFound(f"no active fault {fault_id[:64]!r}")
        await self._write(kept)
        return len(faults) - len(kept)

    async def reload(self) -> None:
        """Reread the list (start-up, and each notice from any node)."""
        try:
            self.active = await self._read()
        except VoiceError as exc:
            log.warning("could not read the active faults: %s", exc.detail)
            return
        for hook in self.on_change:
            await hook(self.active)

    async def _read(self) -> list[Fault]:
        raw = await self._store.get_value(KEY)
        now = self._clock()
        faults = [Fault.from_item(item) for item in json.loads(raw)] if raw else []
        return [f for f in faults if f.live(now)]

    async def _write(self, faults: list[Fault]) -> None:
        now = self._clock()
        faults = [f for f in faults if f.live(now)]
        self.active = faults
        raw = json.dumps([f.to_item() for f in faults], separators=(",", ":"))
        # The stored list outlives its faults by a little; their own expiry decides.
        ends = [f.expires_at - now for f in faults if f.expires_at is not None]
        ttl = None if any(f.expires_at is None for f in faults) else max(ends, default=0) + 60
        await self._store.set_value(KEY, raw if faults else None, ttl)
        with contextlib.suppress(VoiceError):
            await self._notify(NOTICE, "")

    # -- applying --------------------------------------------------------------------------
    def check(self, target: str, **context: str | None) -> Fault | None:
        """The fault that applies to this operation now, if any (counted and journaled)."""
        now = self._clock()
        for index, fault in enumerate(self.active):
            if not fault.matches(target, now, context):
                continue
            if fault.probability < 1.0 and self._chance() >= fault.probability:
                continue
            applied = fault.apply()
            self.active[index] = applied
            self._unsaved[fault.id] += 1
            if self._journal is not None:
                note = self._journal.note
                note("fault.applied", fault_id=fault.id, target=target, fault_kind=fault.kind, **context)
            self._save_soon()
            return applied
        return None

    def _save_soon(self) -> None:
        """Write the counts back (not awaited by the failing path); one write at a time."""
        if self._saving is None or self._saving.done():
            self._saving = asyncio.get_running_loop().create_task(self._save(), name="faults-save")

    async def _save(self) -> None:
        while self._unsaved:
            unsaved, self._unsaved = self._unsaved, Counter()
            try:
                faults = []
                for fault in await self._read():
                    n = unsaved.get(fault.id, 0)
                    remaining = None if fault.remaining is None else max(0, fault.remaining - n)
                    faults.append(replace(fault, remaining=remaining, applied=fault.applied + n))
                await self._write(faults)
            except VoiceError as exc:
                log.warning("could not save the faults' counts: %s", exc.detail)
                return

    async def store_fault(self) -> None:
        """Before a token-store operation: ``store/slow`` waits, ``store/unavailable`` raises."""
        fault = self.check("store")
        if fault is None:
            return
        if fault.kind == "slow":
            await asyncio.sleep(int(fault.params["delay_ms"]) / 1000)
            return
        raise StoreUnavailable("the token store is unavailable (fault injected)")

    def refusal(self, target: str, **context: str | None) -> None:
        """``mint/fail`` and ``consume/fail``: raise the refusal the fault names."""
        fault = self.check(target, **context)
        if fault is not None:
            status, code = int(fault.params["status"]), str(fault.params["code"])
            raise InjectedFault(f"{target} refused by fault {fault.id}", status, code)

    async def graph_fault(self) -> int | None:
        """Before a WhatsApp Graph call: ``whatsapp/delay`` waits; ``whatsapp/fail`` gives the status
        the call is to fail with."""
        if not self.active:
            return None
        fault = self.check("whatsapp")
        if fault is None:
            return None
        if fault.kind == "delay":
            await asyncio.sleep(int(fault.params["delay_ms"]) / 1000)
            return None
        return int(fault.params["status"])
