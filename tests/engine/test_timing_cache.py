"""The shared timing cache: every writer's additions survive, readers never see half a file."""

import threading

from sdtrt.engine import timing_cache


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
