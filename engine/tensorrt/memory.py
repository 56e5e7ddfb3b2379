"""Activation scratch shared by a process's TensorRT engines, and pools of per-call slots.

TensorRT engines built with user-managed memory need a scratch block while they run and not
between runs. One block per call in flight is enough, whichever engine makes the call, so
the pipeline's text encoder, UNet and VAE, called one after another, share one block sized to
the largest, and N threads calling at once use N blocks. A call takes a free block (the one it
had last, when free: a recorded CUDA graph holds its address), grows it when an engine needs
more, and gives it back. Blocks are freed when the last engine using the pool closes.

Both pools take their allocator / factory as arguments, so their bookkeeping is tested on the
CPU with host memory.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Block(Protocol):
    """Memory with an address and a size, freed by close()."""

    ptr: int
    nbytes: int

    def close(self) -> None: ...


class ScratchPool:
    """Scratch blocks for the engines registered with this pool, one per call in flight."""

    def __init__(self, allocate: Callable[[int], Block]) -> None:
        self._allocate = allocate
        self._lock = threading.Lock()
        self._needs: Counter[int] = Counter()  # registered engines' sizes
        self._free: list[Block] = []
        self._busy = 0

    @property
    def size(self) -> int:
        """The size every block is grown to: the largest registered engine's need."""
        return max(self._needs, default=0)

    def register(self, size: int) -> None:
        """An engine that needs `size` bytes of scratch per call starts using the pool."""
        with self._lock:
            self._needs[size] += 1

    def unregister(self, size: int) -> None:
        """An engine stops using the pool; the last one out frees every block."""
        with self._lock:
            self._needs[size] -= 1
            if self._needs[size] <= 0:
                del self._needs[size]
            if not self._needs:
                free, self._free = self._free, []
                for block in free:
                    block.close()

    def acquire(self, preferred: int = 0) -> Block:
        """A block of at least `size` bytes for one call; the block at `preferred` if free."""
        with self._lock:
            block = next((b for b in self._free if b.ptr == preferred), None)
            if block is None and self._free:
                block = max(self._free, key=lambda b: b.nbytes)
            if block is not None:
                self._free.remove(block)
            self._busy += 1
        try:
            if block is not None and block.nbytes < self.size:
                block.close()  # too small since a larger engine registered; its address changes
                block = None
            return block if block is not None else self._allocate(self.size)
        except BaseException:
            with self._lock:
                self._busy -= 1
            raise

    def release(self, block: Block) -> None:
        with self._lock:
            self._busy -= 1
            if self._needs:
                self._free.append(block)
                return
        block.close()  # every engine closed while this call ran

    def counts(self) -> tuple[int, int]:
        """(blocks in use, blocks free): for tests and diagnostics."""
        with self._lock:
            return self._busy, len(self._free)


Slot = TypeVar("Slot")


class SlotPool(Generic[Slot]):
    """Per-call state (an execution context, its stream and buffers) that one call uses at a
    time: an idle slot is reused, a new one made when all are busy, so there are as many slots
    as calls ever ran at once."""

    def __init__(self, make: Callable[[], Slot], close: Callable[[Slot], None]) -> None:
        self._make = make
        self._close = close
        self._lock = threading.Lock()
        self._idle: list[Slot] = []
        self._all: list[Slot] = []
        self._closed = False

    def acquire(self) -> Slot:
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if self._idle:
                return self._idle.pop()
        slot = self._make()
        with self._lock:
            self._all.append(slot)
        return slot

    def release(self, slot: Slot) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(slot)
                return
            self._all = [s for s in self._all if s is not slot]
        self._close(slot)  # the engine closed while this call ran

    def close(self) -> None:
        """Free every idle slot now; a slot still in use is freed when its call gives it back."""
        with self._lock:
            self._closed = True
            busy = [s for s in self._all if not any(s is i for i in self._idle)]
            idle, self._idle, self._all = self._idle, [], busy
        for slot in idle:
            self._close(slot)

    def __len__(self) -> int:
        with self._lock:
            return len(self._all)
