"""torchrun launches for tests on a free port, so parallel or leftover runs never collide on one
fixed --master_port (torchrun's default is 29500)."""
from __future__ import annotations

import socket
import sys


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it; we close it again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int) -> list[str]:
    """The command prefix `python -m torch.distributed.run` for `nproc` local processes on a free port."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            "--master_addr=127.0.0.1", f"--master_port={free_port()}"]
