"""keep_freed_memory: glibc's malloc takes the settings (the eval/train speed-up depends on it)."""

import platform

import pytest

from splitserve.memory import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_accepts_the_settings():
    assert keep_freed_memory() is True
