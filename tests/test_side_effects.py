"""imgclf changes no process-wide state a program using it would notice: Pillow's decompression-bomb
guard, the registry's process check on Windows (os.kill there ends the process). The Keras dtype policy
around export is checked in test_export.py (it needs a trained model)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import warnings

import pytest
from PIL import Image

from imgclf import registry
from imgclf.errors import ImageError
from imgclf.preprocessing import PreprocessingSpec, load_image, peek


def test_importing_imgclf_leaves_pillows_guard_on():
    code = ("from PIL import Image; default = Image.MAX_IMAGE_PIXELS; "
            "import imgclf.preprocessing, imgclf.data.scan, imgclf.predict, imgclf.cli; "
            "import warnings; "
            "print(Image.MAX_IMAGE_PIXELS == default and default is not None, "
            "any(f[2] is Image.DecompressionBombWarning for f in warnings.filters))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False"], out


def test_bomb_refused_by_our_limit_and_the_guard_restored(tmp_path):
    Image.new("1", (12000, 12000)).save(tmp_path / "bomb.png")   # 144 Mpx: Pillow itself would only warn
    Image.new("RGB", (10, 10), (200, 10, 10)).save(tmp_path / "ok.png")
    spec = PreprocessingSpec(image_size=(4, 4), channels=3)
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 5_000  # a program's own setting (smaller than our limit)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(ImageError, match="too large to decode safely") as e:
                load_image(tmp_path / "bomb.png", spec)
            assert e.value.path.endswith("bomb.png")
            assert load_image(tmp_path / "ok.png", spec).shape == (4, 4, 3)
            assert peek(tmp_path / "ok.png")[:2] == (10, 10)
        assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
        assert Image.MAX_IMAGE_PIXELS == 5_000
        # decoders in threads (as predict and the pixel cache run them): restored once they are all done
        errors = []

        def work():
            for _ in range(20):
                try:
                    load_image(tmp_path / "ok.png", spec)
                except Exception as exc:  # pragma: no cover - reported below
                    errors.append(exc)
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and Image.MAX_IMAGE_PIXELS == 5_000
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def test_pid_alive_on_posix():
    assert registry.pid_alive(os.getpid())
    assert not registry.pid_alive(None) and not registry.pid_alive("x") and not registry.pid_alive(0)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not registry.pid_alive(p.pid)


def test_pid_alive_never_signals_on_windows(monkeypatch):
    asked = []

    def no_kill(*args):
        raise AssertionError(f"os.kill{args} on Windows would end the process")
    monkeypatch.setattr(os, "kill", no_kill)
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(registry, "_windows_pid_alive", lambda pid: asked.append(pid) or pid == 1234)
    assert registry.pid_alive(1234) and not registry.pid_alive("4321")
    assert asked == [1234, 4321]
