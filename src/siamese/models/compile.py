"""model.compile: the encoder network compiled with ``torch.compile`` for training. Compiled in
place (``nn.Module.compile``), so its parameters and state-dict keys stay those of the plain
network: checkpoints, the exported weights and serving are unchanged. On the CPU, torch's
inductor backend builds C++ kernels and needs a C++ compiler."""

from __future__ import annotations

import shutil

from torch import nn

from siamese.errors import ParamsError

CPU_COMPILERS = ("g++", "c++", "clang++")


def check_compiler(accelerator: str) -> None:
    """A ParamsError naming model.compile when training on ``accelerator`` (trainer.accelerator)
    cannot compile: on the CPU, no C++ compiler."""
    if accelerator not in ("cuda", "gpu") and not any(shutil.which(c) for c in CPU_COMPILERS):
        raise ParamsError(
            "model.compile: true on the CPU needs a C++ compiler (torch.compile's inductor "
            f"backend builds C++ kernels; none of {', '.join(CPU_COMPILERS)} is on PATH): "
            "install one (e.g. apt-get install g++) or set model.compile: false"
        )


def compile_network(net: nn.Module, accelerator: str) -> nn.Module:
    """Compile ``net`` in place for training on ``accelerator`` (trainer.accelerator)."""
    check_compiler(accelerator)
    net.compile()
    return net
