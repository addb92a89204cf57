"""The torchrun context shared by training and batch generation, and the choice of device.

    ctx = Distributed.start(device)       # one process, or a rank of a torchrun job
    ctx.on_main(fn)                       # run fn on rank 0, every rank gets its result or its error
    ctx.agree(error)                      # every rank raises if any rank failed
    ctx.close()
    lost_peer(error)                      # did a collective fail because another rank is gone?

Under ``torchrun`` (WORLD_SIZE > 1) the process group is gloo on the CPU and NCCL when training on
CUDA (``tensors=True``); generation only sends small control messages, so it always uses gloo.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Callable

import torch
import torch.distributed as dist

from .io import InputError

TIMEOUT = datetime.timedelta(hours=6)

# What gloo and NCCL say when the other end of a collective is gone (killed, its node down, the
# connection cut): the transports' own error texts, as torch raises them (a plain RuntimeError from
# gloo's tcp pair, DistBackendError from NCCL).
_PEER_GONE = ("connection reset by peer", "connection closed by peer", "broken pipe", "connection refused",
              "nccl communicator was aborted", "ncclremoteerror", "remote process exited")


class PeerLost(RuntimeError):
    """A collective failed because another rank of the job is gone: the run stops here, and the same
    command on every node resumes it from the last complete checkpoint."""


def lost_peer(error: BaseException) -> bool:
    """Whether ``error`` is a collective failing because another rank is gone (or unreachable)."""
    if isinstance(error, PeerLost):
        return True
    text = str(error).lower()
    if not isinstance(error, RuntimeError) or text.startswith("rank "):  # another rank's own error, relayed
        return False
    if dist.is_available() and isinstance(error, (dist.DistNetworkError, dist.DistBackendError)):
        return True
    return any(m in text for m in _PEER_GONE)


def pick_device(device: str | None, local_rank: int | None = None) -> torch.device:
    """The torch device for a run: ``device`` (cpu, cuda, cuda:1 ...) or CUDA when available; under
    torchrun a bare "cuda" means this process's LOCAL_RANK GPU. Selects the CUDA device it returns."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device '{device}' (try cpu, cuda, cuda:1)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device '{device}' asked for, but CUDA is not available here")
        if dev.index is None:
            dev = torch.device("cuda", local_rank if local_rank is not None else torch.cuda.current_device())
        if dev.index >= torch.cuda.device_count():
            raise InputError(f"device '{dev}' asked for, but there are {torch.cuda.device_count()} CUDA devices")
        torch.cuda.set_device(dev)
    return dev


class Distributed:
    """One process, or one rank of a torchrun job (the process group is joined once, here)."""

    def __init__(self, world: int = 1, rank: int = 0, local_rank: int | None = None, owned: bool = False):
        self.world, self.rank, self.local_rank, self.owned = world, rank, local_rank, owned

    @classmethod
    def start(cls, backend: str = "gloo") -> "Distributed":
        """Join torchrun's process group when WORLD_SIZE > 1 (reusing one the caller made)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if dist.is_available() and dist.is_initialized():
            if dist.get_world_size() == 1:
                return cls()
            return cls(dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")))
        if world <= 1:
            return cls()
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available")
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
        return cls(dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), owned=True)

    @staticmethod
    def requested_world() -> int:
        return int(os.environ.get("WORLD_SIZE", "1"))

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only; every rank returns its result (picklable) or raises its error
        (an InputError stays an InputError)."""
        if not self.active:
            return fn()
        box: list = [None, None]
        if self.rank == 0:
            try:
                box = [None, fn()]
            except InputError as e:
                box = [("input", str(e)), None]
            except Exception as e:  # noqa: BLE001 - reported to every rank
                box = [("other", f"{type(e).__name__}: {e}"), None]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None:
            kind, text = box[0]
            raise InputError(text) if kind == "input" else RuntimeError(f"rank 0 failed: {text}")
        return box[1]

    def agree(self, error: BaseException | None) -> None:
        """Every rank reports success or its error; if any rank failed, every rank raises."""
        if not self.active:
            if error is not None:
                raise error
            return
        msgs: list = [None] * self.world
        own = None if error is None else (type(error).__name__, str(error), isinstance(error, InputError))
        dist.all_gather_object(msgs, own)
        if error is not None:
            raise error
        for r, m in enumerate(msgs):
            if m is not None:
                name, text, is_input = m
                if is_input:
                    raise InputError(text)
                raise RuntimeError(f"rank {r} failed: {name}: {text}")

    def broadcast(self, obj: Any) -> Any:
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list:
        if not self.active:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_reduce_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of ``x`` over the ranks (in place)."""
        if self.active:
            dist.all_reduce(x)
            x /= self.world
        return x

    def all_reduce_max(self, x: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(x, op=dist.ReduceOp.MAX)
        return x

    def close(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()
            self.owned = False

