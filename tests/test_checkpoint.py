import pytest
import torch

from contract.files import atomic_write
from trainer import checkpoint
from trainer.errors import UserError
from trainer.run_dir import RunDir


def test_save_load_and_keep_newest(tmp_path):
    for epoch in (1, 2, 3):
        RunDir(tmp_path).save_checkpoint(epoch, {"epoch": epoch, "w": torch.full((2,), float(epoch))}, keep=2)
    assert [p.name for p in RunDir(tmp_path).list_checkpoints()] == ["epoch_0002.pt", "epoch_0003.pt"]
    state = checkpoint.load(RunDir(tmp_path).latest_checkpoint())
    assert state["epoch"] == 3 and torch.equal(state["w"], torch.full((2,), 3.0))
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_failed_write_leaves_old_file(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")

    def broken(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_truncated_corrupt_and_foreign_files_are_refused(tmp_path):
    path = RunDir(tmp_path).save_checkpoint(1, {"w": torch.zeros(1000)}, keep=1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or truncated"):
        checkpoint.load(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match=str(path)):
        checkpoint.load(path)
    torch.save({"model": {}}, path)
    with pytest.raises(UserError, match="not a checkpoint of this trainer"):
        checkpoint.load(path)


def test_pickled_objects_are_not_loaded(tmp_path):
    path = tmp_path / "checkpoints" / "epoch_0001.pt"
    path.parent.mkdir()
    torch.save({"format": checkpoint.FORMAT, "payload": object()}, path)  # needs unpickling of a class
    with pytest.raises(UserError):
        checkpoint.load(path)


def test_missing_run_and_empty_run(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        RunDir(tmp_path / "nope").latest_checkpoint()
    with pytest.raises(UserError, match="has no checkpoint"):
        RunDir(tmp_path).latest_checkpoint()
