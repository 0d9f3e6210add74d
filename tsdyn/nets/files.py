"""Teacher files: what ``python -m tsdyn.pretrain_teacher`` writes and ``teacher=pretrained`` loads."""
from __future__ import annotations

from pathlib import Path

import torch

from tsdyn.nets.networks import EnsembleNet, NETS

TEACHER_FILE_FORMAT = "tsdyn.teacher/1"


def save_teacher(net: EnsembleNet, path: str | Path, **meta) -> None:
    """A teacher file: the family and architecture (so that loading cannot silently build another
    net), the weights and BN state of member 0, and ``meta`` (plain values: data set, accuracy ...)."""
    torch.save({"format": TEACHER_FILE_FORMAT, "kind": net.KIND, "arch": net.arch(), "meta": meta,
                "state_dict": {k: v[:1].detach().cpu().clone() for k, v in net.state_dict().items()}}, path)


def read_teacher_file(path: str | Path) -> dict:
    """The content of a file written by :func:`save_teacher` (``kind``, ``arch``, ``meta``,
    ``state_dict``); ``ValueError`` for any other file."""
    content = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(content, dict) or content.get("format") != TEACHER_FILE_FORMAT:
        raise ValueError(f"{path} is not a tsdyn teacher file ({TEACHER_FILE_FORMAT})")
    return content


def load_teacher(checkpoint: str | Path) -> EnsembleNet:
    """The frozen teacher (one member, eval mode) of a :func:`save_teacher` file, built from the
    architecture the file records."""
    content = read_teacher_file(checkpoint)
    teacher = NETS[content["kind"]](**content["arch"], num_members=1)
    teacher.load_state_dict(content["state_dict"])
    teacher.requires_grad_(False)
    return teacher.eval()
