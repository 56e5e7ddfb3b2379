"""Scratch and slot pools of the TensorRT backend, run with host memory in place of the GPU's."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sdtrt.engine.tensorrt.memory import ScratchPool, SlotPool

# What TensorRT reports as device_memory_size_v2 is engine-specific; these are sizes of the
# order the tiny model's networks need.
TEXT, UNET, VAE = 3 << 10, 40 << 10, 96 << 10


class HostBlock:
    """Real (host) memory with an address, counting what is still allocated."""

    live: set[int] = set()

    def __init__(self, nbytes: int) -> None:
        self.array = np.empty(max(nbytes, 1), np.uint8)
        self.nbytes = nbytes
        self.ptr = int(self.array.ctypes.data)
        HostBlock.live.add(id(self))

    def close(self) -> None:
        HostBlock.live.discard(id(self))


@pytest.fixture(autouse=True)
def _no_leaks_between_tests():
    HostBlock.live.clear()
    yield


def test_engines_called_in_turn_share_one_block_sized_to_the_largest():
    pool = ScratchPool(HostBlock)
    for size in (TEXT, UNET, VAE):
        pool.register(size)
    seen = set()
    for _ in range(3):  # text encoder, UNet steps, VAE: one after another
        block = pool.acquire()
        assert block.nbytes >= VAE
        seen.add(block.ptr)
        pool.release(block)
    assert len(seen) == 1 and len(HostBlock.live) == 1


def test_calls_at_once_get_blocks_of_their_own():
    pool = ScratchPool(HostBlock)
    pool.register(UNET)
    held = [pool.acquire() for _ in range(3)]
    assert len({b.ptr for b in held}) == 3
    assert pool.counts() == (3, 0)
    for block in held:
        pool.release(block)
    assert pool.counts() == (0, 3)


def test_a_call_gets_back_the_block_it_had():
    # A recorded CUDA graph holds its scratch address: the same block keeps it valid.
    pool = ScratchPool(HostBlock)
    pool.register(UNET)
    first, second = pool.acquire(), pool.acquire()
    pool.release(first)
    pool.release(second)
    assert pool.acquire(preferred=first.ptr) is first
    assert pool.acquire(preferred=12345) is second


def test_blocks_grow_when_a_larger_engine_arrives():
    pool = ScratchPool(HostBlock)
    pool.register(TEXT)
    small = pool.acquire()
    pool.release(small)
    pool.register(VAE)
    grown = pool.acquire(preferred=small.ptr)
    assert grown.nbytes >= VAE and id(small) not in HostBlock.live
    pool.release(grown)


def test_the_last_engine_to_close_frees_every_block():
    pool = ScratchPool(HostBlock)
    pool.register(UNET)
    pool.register(VAE)
    pool.release(pool.acquire())
    pool.unregister(VAE)
    assert len(HostBlock.live) == 1  # the UNet still uses it
    pool.unregister(UNET)
    assert not HostBlock.live and pool.counts() == (0, 0)


def test_a_block_in_use_when_all_engines_close_is_freed_on_release():
    pool = ScratchPool(HostBlock)
    pool.register(UNET)
    block = pool.acquire()
    pool.unregister(UNET)
    assert HostBlock.live
    pool.release(block)
    assert not HostBlock.live


def test_slots_are_reused_and_as_many_as_calls_at_once():
    made, closed = [], []

    def make() -> int:
        made.append(len(made))
        return made[-1]

    slots: SlotPool[int] = SlotPool(make, closed.append)
    one = slots.acquire()
    slots.release(one)
    assert slots.acquire() == one and len(slots) == 1
    barrier = threading.Barrier(4)
    got: list[int] = []

    def call() -> None:
        slot = slots.acquire()
        got.append(slot)
        barrier.wait()  # all four hold a slot at the same moment
        slots.release(slot)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    barrier.wait()
    for thread in threads:
        thread.join()
    assert len(set(got)) == 3 and one not in got and len(slots) == 4
    slots.release(one)
    slots.close()
    assert sorted(closed) == [0, 1, 2, 3]
    slots.close()  # again: nothing left to free
    assert sorted(closed) == [0, 1, 2, 3]


def test_a_slot_in_use_at_close_is_freed_when_given_back():
    closed: list[str] = []
    slots: SlotPool[str] = SlotPool(lambda: "context", closed.append)
    busy = slots.acquire()
    slots.close()
    assert closed == []
    slots.release(busy)
    assert closed == ["context"] and len(slots) == 0
    with pytest.raises(RuntimeError, match="closed"):
        slots.acquire()
