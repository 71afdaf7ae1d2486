"""The optimiser's parameter groups: ``train.lr_groups`` (a peak lr per group of parameter names) and weight decay.

Names are those of ``nn.ModuleDict({"method": method, "task": task})``, the module both engines train:
``method.<...>`` for the fusion method, ``task.<...>`` for the shared head. A trainable parameter joins the first
group of ``train.lr_groups`` with a pattern (``fnmatch`` glob) that matches its name, else the default group at
``train.lr``. Within every group, matrices decay by the group's weight decay and 1-D parameters (biases, norms) do
not. The schedule (``TorchEngine.schedule``) scales every group's lr by the same warmup/cosine factor, so a group
peaks at its own lr and ends at ``lr_g * min_lr / lr``.

LAVISH's AVE code (GenjiB/LAVISH ``AVE/main_trans.py``) trains its head (``mlp_class``) at ``lr_mlp`` and the rest at
``lr``: ``lr_groups: [{match: "task.*", lr: 4.0e-6}]`` with ``lr: 5.0e-5``.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from torch import nn

from harness.config import TrainConfig


def param_groups(model: nn.Module, train: TrainConfig) -> list[dict]:
    """Torch parameter groups of ``model``'s trainable parameters: the default group first (what ``lr`` logs), then
    ``train.lr_groups`` in order; each split into decayed matrices and undecayed 1-D parameters, empty ones dropped.

    Raises:
        ValueError: a group of ``train.lr_groups`` matches no trainable parameter (the message lists some names).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    members: list[list] = [[] for _ in range(1 + len(train.lr_groups))]
    for name, p in named:
        i = next((i for i, g in enumerate(train.lr_groups, 1) if any(fnmatchcase(name, m) for m in g.patterns())), 0)
        members[i].append(p)
    for i, g in enumerate(train.lr_groups, 1):
        if not members[i]:
            some = ", ".join(n for n, _ in named[:4]) + (", ..." if len(named) > 4 else "")
            raise ValueError(f"train.lr_groups[{i - 1}].match {g.match!r} matches no trainable parameter (or only "
                             f"ones an earlier group took); trainable names look like: {some}")  # fmt: skip
    settings = [(train.lr, train.weight_decay)] + [
        (g.lr, train.weight_decay if g.weight_decay is None else g.weight_decay) for g in train.lr_groups
    ]
    groups = []
    for params, (lr, decay) in zip(members, settings):
        groups.append({"params": [p for p in params if p.ndim >= 2], "lr": lr, "weight_decay": decay})
        groups.append({"params": [p for p in params if p.ndim < 2], "lr": lr, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]
