"""pipelines.training.loop with a model that is not a recommender: any Task plugs in. Real DeepSpeed (gloo, CPU).

The task's valid metric follows a script, so early stopping, the best epoch and resume have exact answers.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.config import DistributedConfig, TrainConfig
from pipelines.training.loop import StepLoss, Task, fit


class Scripted(Task):
    """A small classifier on fixed random data; ``validate`` returns the next value of ``script``."""

    def __init__(self, script: list[float], done: int = 0) -> None:
        g = np.random.default_rng(0)
        self.x = torch.from_numpy(g.normal(size=(64, 4)).astype(np.float32))
        self.y = torch.from_numpy(g.integers(0, 3, 64))
        self.script, self.calls, self.snapshots = script, done, {}

    def batches(self, seed: int) -> list[np.ndarray]:
        order = np.random.default_rng(seed).permutation(64)
        return [order[i:i + 16] for i in range(0, 64, 16)]

    def loss(self, engine, rows, step):
        mine = rows[step.rank::step.world]
        loss = F.cross_entropy(engine(self.x[mine]), self.y[mine], reduction="sum") / len(rows)
        return StepLoss(loss, len(rows) / step.world, len(mine))

    def validate(self, module, device):
        self.calls += 1
        self.snapshots[self.calls] = {k: v.detach().clone() for k, v in module.state_dict().items()}
        value = self.script[self.calls - 1]
        return {"NDCG@10": value, "HR@10": 2 * value}


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


SCRIPT = [0.1, 0.3, 0.2, 0.25, 0.9, 0.9]
TRAIN = TrainConfig(batch_size=16, lr=0.05, epochs=10, patience=2)
CPU = DistributedConfig()


def _equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    m, task, lines = model(), Scripted(SCRIPT), []
    res = fit(m, task, TRAIN, CPU, seed=1, ckpt=tmp_path / "ck", name="toy", log=lines.append)
    assert (res.epochs_run, res.best_epoch, res.best_valid_ndcg10) == (4, 2, 0.3)   # 0.2, 0.25: two bad epochs
    assert [h["valid_NDCG@10"] for h in res.history] == [0.1, 0.3, 0.2, 0.25]
    assert [h["valid_HR@10"] for h in res.history] == [0.2, 0.6, 0.4, 0.5]
    assert all(np.isfinite(h["loss"]) for h in res.history) and res.history[-1]["loss"] < res.history[0]["loss"]
    assert _equal(m.state_dict(), task.snapshots[2]) and not _equal(m.state_dict(), task.snapshots[4])
    assert sum("(best)" in line for line in lines) == 2 and len(lines) == 4
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["best.pt", "epoch4", "latest"]


def test_min_epochs_carries_training_through_a_dip_after_a_head_start(tmp_path):
    # a head start (0.3 at epoch 2), a dip longer than the patience, then the real gain at epoch 5
    m, task = model(), Scripted([0.1, 0.3, 0.2, 0.25, 0.9, 0.8, 0.7])
    cfg = TrainConfig(batch_size=16, lr=0.05, epochs=10, patience=2, min_epochs=5)
    res = fit(m, task, cfg, CPU, seed=1, ckpt=tmp_path / "ck")
    assert (res.epochs_run, res.best_epoch, res.best_valid_ndcg10) == (7, 5, 0.9)   # without min_epochs: (4, 2)
    assert _equal(m.state_dict(), task.snapshots[5])
    short = fit(model(), Scripted(SCRIPT), TrainConfig(batch_size=16, lr=0.05, epochs=3, patience=1, min_epochs=50),
                CPU, seed=1, ckpt=tmp_path / "short")
    assert short.epochs_run == 3                                                      # capped at epochs


def test_a_resumed_run_repeats_the_uninterrupted_one(tmp_path):
    straight = model()
    fit(straight, Scripted(SCRIPT), TRAIN, CPU, seed=1, ckpt=tmp_path / "a")
    first, lines = model(), []
    fit(first, Scripted(SCRIPT), TrainConfig(batch_size=16, lr=0.05, epochs=3, patience=2), CPU, seed=1,
        ckpt=tmp_path / "b")
    resumed = model()
    res = fit(resumed, Scripted(SCRIPT, done=3), TRAIN, CPU, seed=1, ckpt=tmp_path / "b", log=lines.append)
    assert lines[0].startswith("  model: resuming after epoch 3 from") and res.resumed_from_epoch == 3
    assert (res.epochs_run, res.best_epoch) == (4, 2)
    assert _equal(resumed.state_dict(), straight.state_dict())


def test_only_parameters_that_require_grad_are_trained(tmp_path):
    m = model()
    m[0].requires_grad_(False)                                   # a frozen part (a backbone, say)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    fit(m, Scripted([0.1, 0.2]), TrainConfig(batch_size=16, lr=0.05, epochs=2, patience=2), CPU, seed=1,
        ckpt=tmp_path / "c")
    after = m.state_dict()
    assert torch.equal(after["0.weight"], before["0.weight"]) and torch.equal(after["0.bias"], before["0.bias"])
    assert not torch.equal(after["2.weight"], before["2.weight"])
    # checkpoints keep the trained weights only: best.pt and the DeepSpeed epoch checkpoint
    assert sorted(torch.load(tmp_path / "c" / "best.pt")) == ["2.bias", "2.weight"]
    saved = torch.load(next((tmp_path / "c" / "epoch2").glob("*model_states.pt")), weights_only=False)["module"]
    assert sorted(saved) == ["2.bias", "2.weight"]


def test_errors_name_the_keys_of_the_section_being_trained(tmp_path):
    with pytest.raises(ValueError, match=r"train_llmrec\.distributed\.deepspeed_config: .* is not valid JSON"):
        bad = tmp_path / "ds.json"
        bad.write_text("{")
        fit(model(), Scripted(SCRIPT), TRAIN, DistributedConfig(deepspeed_config=str(bad)), seed=1,
            ckpt=tmp_path / "d", section="train_llmrec")


def test_with_validate_at_start_training_can_only_improve_on_the_untrained_model(tmp_path):
    m, lines = model(), []
    start = {k: v.clone() for k, v in m.state_dict().items()}
    task = Scripted([0.5, 0.3, 0.2, 0.9])                                       # epoch 0 (untrained) is the best
    train = TrainConfig(batch_size=16, lr=0.05, epochs=10, patience=2, validate_at_start=True)
    res = fit(m, task, train, CPU, seed=1, ckpt=tmp_path / "s", name="toy", log=lines.append)
    assert (res.best_epoch, res.epochs_run, res.best_valid_ndcg10) == (0, 2, 0.5)
    assert [h["epoch"] for h in res.history] == [0, 1, 2] and res.history[0]["loss"] is None
    assert lines[0] == "  toy before training: valid NDCG@10 0.5000"
    assert _equal(m.state_dict(), start)                                        # the untrained weights are kept


class InModuleDtype(Scripted):
    """Scripted, its inputs cast to the module's dtype (bf16 under DeepSpeed's bf16) and its loss in fp32."""

    def loss(self, engine, rows, step):
        mine = rows[step.rank::step.world]
        x = self.x[mine].to(next(engine.module.parameters()).dtype)
        loss = F.cross_entropy(engine(x).float(), self.y[mine], reduction="sum") / len(rows)
        return StepLoss(loss, len(rows) / step.world, len(mine))


def test_a_zero2_engine_leaves_no_gradient_hooks_for_the_next_stage(tmp_path):
    """Two-stage training (the LLM recommender) wraps one module in two engines. The first one's ZeRO-2 gradient
    hooks, left on the parameters, fired in the second and failed it on a GPU ('list index out of range')."""
    m = model()
    m[0].requires_grad_(False)
    dist = DistributedConfig(deepspeed_config="infra/deepspeed/zero2_gpu.json")         # ZeRO-2, bf16
    two = TrainConfig(batch_size=16, lr=0.05, epochs=2, patience=2)
    fit(m, InModuleDtype([0.1, 0.2]), two, dist, seed=1, ckpt=tmp_path / "s1")
    assert not any(getattr(p, "_post_accumulate_grad_hooks", None) for p in m.parameters())
    m[0].requires_grad_(True)                                                   # stage 2 trains more
    res = fit(m, InModuleDtype([0.1, 0.2]), two, dist, seed=1, ckpt=tmp_path / "s2")
    assert res.epochs_run == 2 and all(np.isfinite(h["loss"]) for h in res.history)


def test_a_stale_build_lock_is_named_instead_of_hanging(tmp_path):
    """A kill during DeepSpeed's first just-in-time compile left torch's build lock, and every later run hung on
    it silently (reliability issue, part two, 5). Now the run stops at once, naming the lock and the fix."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    lock = tmp_path / "ext" / "deepspeed_shm_comm" / "lock"                      # TORCH_EXTENSIONS_DIR/<name>/lock
    lock.parent.mkdir(parents=True)
    lock.touch()
    old = time.time() - 3600
    os.utime(lock, (old, old))
    code = "from pipelines.training.distributed import init_distributed; init_distributed('gloo')"
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    try:
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                           cwd=Path(__file__).resolve().parents[3])
    except subprocess.TimeoutExpired:
        pytest.fail("the run hung on the stale lock")
    assert r.returncode != 0 and f"{lock} is a stale build lock" in r.stderr and f"rm {lock}" in r.stderr


def _cut_to_half(path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _whole(path) -> bool:
    """A torch.save file reads back whole: a zip whose every member passes its CRC."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except zipfile.BadZipFile:
        return False


def test_a_damaged_best_and_epoch_checkpoint_are_named_and_training_starts_again(tmp_path):
    """After a finished run, best.pt and the epoch checkpoint cut to half (a full disk, a copy cut short) failed every
    re-run with torch's 'PytorchStreamReader failed reading zip archive', naming neither file (issue 44, 2). Now both
    are named and moved aside, and with no intact epoch left the run trains again from scratch to the same result."""
    straight = model()
    fit(straight, Scripted(SCRIPT), TRAIN, CPU, seed=1, ckpt=tmp_path / "a")
    ck = tmp_path / "b"
    fit(model(), Scripted(SCRIPT), TRAIN, CPU, seed=1, ckpt=ck)
    _cut_to_half(ck / "best.pt")
    _cut_to_half(ck / "epoch4" / "mp_rank_00_model_states.pt")
    again, lines = model(), []
    res = fit(again, Scripted(SCRIPT), TRAIN, CPU, seed=1, ckpt=ck, name="toy", log=lines.append)
    warnings = [line for line in lines if "WARNING" in line]
    assert len(warnings) == 2
    assert f"the toy checkpoint {ck / 'epoch4'} is damaged (mp_rank_00_model_states.pt: BadZipFile" in warnings[0]
    assert f"the toy checkpoint {ck / 'best.pt'} is damaged" in warnings[1]
    assert all("moved aside as" in w and w.endswith("no intact epoch checkpoint left: training from scratch")
               for w in warnings)
    assert (res.resumed_from_epoch, res.epochs_run, res.best_epoch) == (0, 4, 2)
    assert _equal(again.state_dict(), straight.state_dict())
    assert _whole(ck / "best.pt") and len(list(ck.glob("best.pt.corrupt-*"))) == 1
    # the next night resumes from the new checkpoints, with no warning
    lines.clear()
    fit(model(), Scripted(SCRIPT), TRAIN, CPU, seed=1, ckpt=ck, name="toy", log=lines.append)
    assert not [line for line in lines if "WARNING" in line] and "already stopped early" in lines[-1]


def test_a_damaged_newest_epoch_falls_back_to_the_newest_intact_one(tmp_path):
    import shutil

    straight = model()
    fit(straight, Scripted(SCRIPT), TRAIN, CPU, seed=1, ckpt=tmp_path / "a")
    ck = tmp_path / "b"
    fit(model(), Scripted(SCRIPT), TrainConfig(batch_size=16, lr=0.05, epochs=3, patience=2), CPU, seed=1, ckpt=ck)
    shutil.copytree(ck / "epoch3", tmp_path / "epoch3")                       # an earlier epoch still on disk
    fit(model(), Scripted(SCRIPT, done=3), TRAIN, CPU, seed=1, ckpt=ck)        # epoch 4 written, epoch 3 removed
    shutil.copytree(tmp_path / "epoch3", ck / "epoch3")
    _cut_to_half(ck / "epoch4" / "mp_rank_00_model_states.pt")
    (ck / "latest").write_text("epo")                                          # cut short too
    resumed, lines = model(), []
    res = fit(resumed, Scripted(SCRIPT, done=3), TRAIN, CPU, seed=1, ckpt=ck, name="toy", log=lines.append)
    assert lines[0].startswith(f"  WARNING: the toy checkpoint {ck / 'epoch4'} is damaged")
    assert lines[0].endswith("resuming from epoch3, the newest intact epoch checkpoint")
    assert lines[1].startswith("  toy: resuming after epoch 3 from")
    assert (res.resumed_from_epoch, res.epochs_run, res.best_epoch) == (3, 4, 2)
    assert _equal(resumed.state_dict(), straight.state_dict())


def test_best_pt_is_written_atomically_on_the_validate_at_start_path(tmp_path, monkeypatch):
    """The validate-at-start path wrote best.pt in place: a full disk there left half a file, which the next run
    could not load. Now it is written aside and renamed, so an interrupted write leaves no best.pt to trip on."""
    real_save, calls = torch.save, []

    def disk_full(obj, f, *a, **kw):                                          # half the bytes, then ENOSPC
        calls.append(f)
        if len(calls) > 1:
            return real_save(obj, f, *a, **kw)
        import io

        buf = io.BytesIO()
        real_save(obj, buf)
        data = buf.getvalue()[: len(buf.getvalue()) // 2]
        if hasattr(f, "write"):
            f.write(data)
        else:
            with open(f, "wb") as fh:
                fh.write(data)
        raise OSError(28, "No space left on device")

    train = TrainConfig(batch_size=16, lr=0.05, epochs=10, patience=2, validate_at_start=True)
    ck = tmp_path / "s"
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        fit(model(), Scripted([0.5, 0.3, 0.2, 0.9]), train, CPU, seed=1, ckpt=ck, name="toy")
    monkeypatch.setattr(torch, "save", real_save)
    assert not (ck / "best.pt").exists() or _whole(ck / "best.pt")
    m = model()
    res = fit(m, Scripted([0.5, 0.3, 0.2, 0.9]), train, CPU, seed=1, ckpt=ck, name="toy")
    assert (res.best_epoch, res.epochs_run) == (0, 2) and _equal(m.state_dict(), model().state_dict())
