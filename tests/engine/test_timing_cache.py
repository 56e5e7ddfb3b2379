"""The shared timing cache: every writer's additions survive, readers never see half a file."""

import threading

from sdtrt.engine.tensorrt import timing_cache


def test_concurrent_builds_each_add_their_timings(tmp_path):
    path = tmp_path / "engines" / "tensorrt.timing-cache"

    def add(entry: bytes) -> None:
        timing_cache.update(path, lambda current: (current or b"") + entry)

    threads = [threading.Thread(target=add, args=(bytes([65 + i]) * 1000,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    data = timing_cache.read(path)
    assert data is not None and len(data) == 8000
    assert sorted(set(data)) == list(range(65, 73))
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".lock"]


def test_missing_cache_reads_as_none(tmp_path):
    assert timing_cache.read(tmp_path / "none") is None


class Cache:
    """A timing cache as TensorRT documents ITimingCache: entries stamped with the device and
    release that timed them; `combine` refuses another stamp unless told to ignore it."""

    def __init__(self, stamp: str, entries: set[str]) -> None:
        self.stamp = stamp
        self.entries = entries

    def combine(self, other: "Cache", ignore_mismatch: bool) -> bool:
        if other.stamp != self.stamp and not ignore_mismatch:
            return False
        self.entries |= other.entries
        return True

    def serialize(self) -> bytes:
        return f"{self.stamp}|{','.join(sorted(self.entries))}".encode()


class BuilderConfig:
    """IBuilderConfig's timing-cache half on one device: `set_timing_cache` answers False for
    a cache stamped elsewhere, and `get_timing_cache` is None until one is accepted."""

    def __init__(self, stamp: str, accept_any: bool = True) -> None:
        self.stamp = stamp
        self.accept_any = accept_any
        self.attached: Cache | None = None

    def create_timing_cache(self, serialized_timing_cache: bytes) -> Cache:
        if not serialized_timing_cache:
            return Cache(self.stamp, set())
        stamp, _, body = bytes(serialized_timing_cache).decode().partition("|")
        return Cache(stamp, set(filter(None, body.split(","))))

    def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> bool:
        if not self.accept_any or (cache.stamp != self.stamp and not ignore_mismatch):
            return False
        self.attached = cache
        return True

    def get_timing_cache(self) -> Cache | None:
        return self.attached

    def build(self, *timed: str) -> None:
        if self.attached is not None:
            self.attached.entries.update(timed)


def _build(path, config: BuilderConfig, *timed: str) -> bool:
    """What a TensorRT build does with the cache file (see engine/trt_build.py)."""
    cached = timing_cache.attach(config, timing_cache.read(path), path)
    config.build(*timed)
    if cached:
        timing_cache.update(path, lambda current: timing_cache.merged(config, current))
    return cached


def test_cache_file_is_per_gpu_model_sm_and_release(tmp_path):
    h100 = timing_cache.cache_path(tmp_path, "NVIDIA H100 80GB HBM3", "9.0", "10.13.0.35")
    h200 = timing_cache.cache_path(tmp_path, "NVIDIA H200", "9.0", "10.13.0.35")
    assert h100.name == "tensorrt-10.13.0.35-NVIDIA-H100-80GB-HBM3-sm9.0.timing-cache"
    assert h200 != h100 and h200.parent == tmp_path
    odd = timing_cache.cache_path(tmp_path, "  A/B\\C*?  ", "8.9", "11.0.0")
    assert odd.name == "tensorrt-11.0.0-A-B-C-sm8.9.timing-cache"


def test_builds_add_to_the_saved_timings(tmp_path):
    path = tmp_path / "t.timing-cache"
    assert _build(path, BuilderConfig("h200"), "conv1")
    assert _build(path, BuilderConfig("h200"), "gemm2")
    assert timing_cache.read(path) == b"h200|conv1,gemm2"


def test_a_cache_tensorrt_refuses_is_replaced_not_a_crash(tmp_path, caplog):
    path = tmp_path / "t.timing-cache"
    path.write_bytes(b"other-release|old")
    config = BuilderConfig("h200")
    assert _build(path, config, "conv1")
    assert config.attached is not None and config.attached.entries == {"conv1"}
    assert "cannot use the timing cache" in caplog.text
    assert timing_cache.read(path) == b"h200|conv1"


def test_no_cache_at_all_builds_without_and_leaves_the_file(tmp_path, caplog):
    path = tmp_path / "t.timing-cache"
    path.write_bytes(b"h200|conv1")
    config = BuilderConfig("h200", accept_any=False)
    assert not _build(path, config, "gemm2")
    assert config.get_timing_cache() is None  # what combine(None) used to be handed
    assert timing_cache.merged(config, b"h200|conv1") is None
    assert timing_cache.read(path) == b"h200|conv1"
    assert "building without one" in caplog.text
