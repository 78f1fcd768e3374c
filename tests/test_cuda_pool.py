"""The CUDA pool probe: figures that hang together on a GPU, and None (never an error) where there is none."""

from ollama_img.memory import cuda_pool


def test_pool_usage_is_none_or_consistent_and_trim_never_raises():
    usage = cuda_pool.usage()
    released = cuda_pool.trim()
    if usage is None:  # no CUDA driver (CI, macOS): every call answers None
        assert released is None
        cuda_pool.reset_high()  # a no-op, not an error
        return
    assert 0 <= usage.used <= usage.reserved <= usage.reserved_high
    assert usage.used <= usage.used_high
    assert released is not None and released >= 0
