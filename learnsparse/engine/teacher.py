"""The `distill` group: its hook, with the teacher `distill.teacher` names.

- `self`: the model as `trainer.init_from` left it, taken before any plugin changes it. A
  resumed run builds it again from the init_from file (the teacher is never in a checkpoint),
  so it is the same teacher, bit for bit.
- a path: a learnsparse checkpoint (its record rebuilds the network it trained), or a state
  dict for this run's model config.
- a `_target_` node: any model Hydra can build, with the weights its builder gives it.
"""
from __future__ import annotations

import copy

import torch.nn as nn
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from learnsparse.core.errors import UserError, find_cause, first_line
from learnsparse.core.provenance import has_new_head
from learnsparse.core.record import rebuild

from .init_weights import init_weights, load_init


def build_distill(cfg: DictConfig, model: nn.Module, start) -> list:
    """[the distillation hook] or []; call it after init_from loaded and before plugins."""
    node = cfg.get("distill")
    if not node:
        return []
    spec = OmegaConf.to_container(node, resolve=True)
    teacher = build_teacher(spec.pop("teacher", "self"), cfg, model, start)
    try:
        hook = instantiate(spec)(model=model, teacher=teacher)
    except Exception as e:  # a bad temperature or alpha, or a _target_ that is not there
        raise UserError(f"distill: {first_line(find_cause(e), limit=None)}") from e
    hook.name = "distill"
    return [hook]


def build_teacher(spec, cfg: DictConfig, model: nn.Module, start) -> nn.Module:
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    if spec == "self":
        teacher = _self_teacher(cfg, model, start, model_cfg)
    elif isinstance(spec, str):
        teacher = _teacher_from_file(spec, model_cfg)
    elif isinstance(spec, dict) and "_target_" in spec:
        try:
            teacher = instantiate(spec, _convert_="all")
        except Exception as e:
            raise UserError(f"distill.teacher: cannot build {spec['_target_']} "
                            f"({first_line(find_cause(e), limit=None)})") from e
        if not isinstance(teacher, nn.Module):
            raise UserError(f"distill.teacher: {spec['_target_']} returned a {type(teacher).__name__}, not a model")
    else:
        raise UserError(f"distill.teacher must be self, a checkpoint path or a _target_ model (got {spec!r})")
    return teacher.eval().requires_grad_(False)


def _self_teacher(cfg: DictConfig, model: nn.Module, start, model_cfg: dict) -> nn.Module:
    init_from = cfg.trainer.get("init_from")
    if not init_from:
        raise UserError("distill.teacher=self distils from the weights trainer.init_from loads, and it is not set: "
                        "set trainer.init_from, or name a teacher (distill.teacher=<checkpoint>)")
    what = f"distill.teacher=self (trainer.init_from={init_from})"
    if start.resume is None:
        teacher = copy.deepcopy(model)  # as init_from left it: no plugin has touched it yet
    else:
        init = load_init(init_from)
        teacher = _rebuilt(model_cfg, init.get("record"), what)
        init_weights(teacher, init, init_from, what)
    if has_new_head(teacher):
        raise UserError(f"{what}: the file's classifier is for another number of classes, so the model it "
                        f"leaves has an untrained head and nothing to teach; name a teacher trained on these classes")
    return teacher


def _teacher_from_file(path: str, model_cfg: dict) -> nn.Module:
    what = f"distill.teacher={path}"
    init = load_init(path, what)
    record = init.get("record")
    # A learnsparse checkpoint says what network it is; a bare state dict is for this run's model.
    teacher = _rebuilt(record["model"] if record else model_cfg, record, what)
    init_weights(teacher, init, path, what)
    if has_new_head(teacher):
        raise UserError(f"{what}: its classifier is for another number of classes than this run's data")
    return teacher


def _rebuilt(model_cfg: dict, record: dict | None, what: str) -> nn.Module:
    record = record or {}
    try:
        return rebuild({"model": model_cfg, "edits": record.get("edits", []), "structure": record.get("structure", {})})
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{what}: cannot build its model ({first_line(find_cause(e), limit=None)})") from e
