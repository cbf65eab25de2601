"""Distributed set-up for the training loop: torch.distributed through DeepSpeed, and the DeepSpeed config.

* **One process on CPU** (the default): DeepSpeed with the gloo backend, set up in-process by the env-var recipe
  (``RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR MASTER_PORT`` before ``deepspeed.init_distributed``).
* **Several processes** (CPU or GPUs): run the same entry point under ``torchrun`` or the ``deepspeed`` launcher,
  which set ``RANK``/``WORLD_SIZE``.
* **ZeRO / bf16 / GPU**: ``<section>.distributed.deepspeed_config`` names a DeepSpeed JSON (``infra/deepspeed/``);
  its batch keys are overridden from ``<section>.train.batch_size`` and the world size.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(backend: str = "gloo") -> tuple[int, int]:
    """Initialise torch.distributed through DeepSpeed once per process; returns (rank, world_size).

    Without a launcher this is the single-process recipe (gloo on CPU needs no MPI); under ``torchrun`` or the
    ``deepspeed`` launcher the variables they set win.
    """
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        check_extension_locks()
        skip_inference_all_reduce_op()
        for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(k, v)
        invented = "MASTER_PORT" not in os.environ
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        deepspeed.init_distributed(dist_backend=backend)
        if invented:  # this process holds that port now: a child process (a task, a `make run`) must pick its own
            del os.environ["MASTER_PORT"]
    return dist.get_rank(), dist.get_world_size()


def skip_inference_all_reduce_op() -> None:
    """On CPU, DeepSpeed's process-group setup compiles its shared-memory all-reduce op (``deepspeed_shm_comm``) just
    in time: a C++ build of about 40 s on 2 cores, repeated for every new venv, and a compiler every user must have.
    That op serves ``inference_all_reduce`` only (tensor-parallel inference), which recpipe never calls; training's
    all-reduces go through the torch process group either way. Marking it not compatible is DeepSpeed's own way to
    skip it (its setup then leaves ``shm_comm_op`` None, as on a platform without the op)."""
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


STALE_LOCK_S = 600  # a JIT build of DeepSpeed's ops takes about a minute on 2 cores


def extensions_root() -> Path:
    """Where torch builds C++ extensions just in time (DeepSpeed's ops): ``TORCH_EXTENSIONS_DIR`` or torch's default
    cache folder."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    from torch.utils.cpp_extension import get_default_build_root

    return Path(get_default_build_root())


def check_extension_locks(max_age_s: float = STALE_LOCK_S) -> None:
    """Refuse to start when a just-in-time build left its lock behind. torch's build lock is a bare file that a
    killed build (say, a first run stopped during DeepSpeed's compile) never removes, and every later build of that
    extension waits on it forever, silently. A lock older than any build takes is named, with the fix."""
    import time

    root = extensions_root()
    if not root.is_dir():
        return
    now = time.time()
    for lock in list(root.glob("*/lock")) + list(root.glob("*/*/lock")):
        age = now - lock.stat().st_mtime
        if age > max_age_s:
            raise RuntimeError(f"{lock} is a stale build lock ({age / 60:.0f} minutes old): a just-in-time build of "
                               f"the '{lock.parent.name}' extension was killed and left it, and every later build "
                               f"would wait on it forever. Delete it (rm {lock}) and run again; the extension is "
                               "rebuilt once.")


def deepspeed_config(path: str, batch_size: int, world: int, section: str = "train_sequential") -> dict:
    """The DeepSpeed config: the JSON at ``path`` (or ZeRO stage 0) with the batch keys set for this world size.

    ``section``: the config section being trained, so errors name the key to change.
    """
    key = f"{section}.distributed.deepspeed_config"
    conf = {"zero_optimization": {"stage": 0}}
    if path:
        try:
            conf = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{key}: {path} does not exist; use one of infra/deepspeed/*.json "
                                    "or leave it empty for ZeRO stage 0") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{key}: {path} is not valid JSON ({e})") from None
    if batch_size % world:
        raise ValueError(f"{section}.train.batch_size={batch_size} is not divisible by the world size {world}; "
                         "pick a multiple")
    conf.update({"train_batch_size": batch_size, "train_micro_batch_size_per_gpu": batch_size // world,
                 "gradient_accumulation_steps": 1})
    conf.setdefault("steps_per_print", 10 ** 9)
    conf.setdefault("wall_clock_breakdown", False)
    if int(conf.get("zero_optimization", {}).get("stage", 0)) >= 3:
        raise ValueError(f"{key}: {path} asks for ZeRO stage 3, which partitions the item table the loop scores with "
                         "outside the engine; use stage 0-2 (infra/deepspeed/)")
    conf.pop("optimizer", None)  # we pass a torch optimizer: a named one would JIT-compile cpu_adam
    return conf


def tune_allocator() -> bool:
    """Keep glibc from returning every large block to the OS: the (targets, N) logits are allocated and freed each
    step, and the page faults of fresh mmaps cost a third of a CPU epoch. Linux/glibc only; a no-op elsewhere."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False
