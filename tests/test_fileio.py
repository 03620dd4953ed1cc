import json
import subprocess
import sys

import numpy as np
import pytest

from edgekws.fileio import atomic_open, atomic_write_bytes, atomic_write_json


def test_error_mid_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "data.bin"
    atomic_write_bytes(target, b"old contents")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write(b"half of the new")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_killed_process_never_leaves_a_torn_file(tmp_path):
    target = tmp_path / "model.json"
    atomic_write_json(target, {"version": 1})
    code = (
        "import os, sys\n"
        "from edgekws.fileio import atomic_open\n"
        "with atomic_open(sys.argv[1], 'w') as fh:\n"
        "    fh.write('{\"version\": 2, \"trunc')\n"
        "    fh.flush()\n"
        "    os._exit(9)\n"  # dies like kill -9: no cleanup, no rename
    )
    assert subprocess.run([sys.executable, "-c", code, str(target)]).returncode == 9
    assert json.loads(target.read_text()) == {"version": 1}


def test_json_handles_numpy(tmp_path):
    p = atomic_write_json(tmp_path / "sub" / "m.json", {"a": np.float32(0.5), "b": np.arange(3), "c": np.int64(4)})
    assert json.loads(p.read_text()) == {"a": 0.5, "b": [0, 1, 2], "c": 4}
    with pytest.raises(ValueError, match="writes only"):
        with atomic_open(tmp_path / "x", "rb"):
            pass


def test_sha256_file_reads_in_blocks_and_fsync_dir_accepts_folders(tmp_path):
    import hashlib

    from edgekws.fileio import fsync_dir, sha256_file

    data = bytes(range(256)) * 5000  # > 1 MiB: more than one block
    p = tmp_path / "blob"
    p.write_bytes(data)
    assert sha256_file(p) == hashlib.sha256(data).hexdigest()
    fsync_dir(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "missing")
