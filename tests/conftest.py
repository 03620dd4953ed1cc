from pathlib import Path

import numpy as np
import pytest

SHARED_GSC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsc-dev"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test writes its caches (and signing keys) under a temporary folder, never the user's ~/.cache or
    ~/.config."""
    monkeypatch.setenv("EDGEKWS_CACHE", str(tmp_path_factory.getbasetemp() / "edgekws-cache"))
    monkeypatch.setenv("EDGEKWS_HOME", str(tmp_path_factory.getbasetemp() / "edgekws-home"))
    monkeypatch.setenv("EDGEKWS_OFFLINE", "1")  # a real dataset without --data-dir must never be downloaded here


@pytest.fixture
def gsc_dev() -> Path:
    if not SHARED_GSC.is_dir():
        pytest.skip("shared Speech Commands subset not present")
    return SHARED_GSC


def tone(freq: float, seconds: float = 1.0, sr: int = 16000, amp: float = 0.3, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def write_wav(path: Path, y: np.ndarray, sr: int = 16000) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), y, sr, subtype="PCM_16")
    return path


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests run under pytest-xdist workers side by side: one intra-op thread each avoids oversubscription."""
    try:
        import torch
    except ImportError:  # device-side environments have no torch
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
