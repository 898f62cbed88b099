"""Model surgery during training: the one place where the trained network changes.

Swaps (a learned layer becomes its deployed form, kept trainable), shrinks (dead channels and
branches leave the network) and any edit of the user's all go through `replace_modules`, which
does every step such a change needs, in this order:

1. puts each new module where the old one was (the root module stays the same object, so
   whoever holds the model still holds the trained one);
2. leaves the model in the mode it found: each module's train/eval flag, each parameter's
   `requires_grad`, and the trainer's memory format. Library code the change calls may switch
   modes behind its back — Torch-Pruning's `DependencyGraph` calls `model.eval()` while it
   traces, and a shrink that kept that mode trained on with frozen BatchNorm statistics until
   the losses went to NaN;
3. checks that the function is unchanged: eval outputs within `rtol` of their scale and
   training-mode losses equal, on a probe batch, on copies (running statistics untouched);
   otherwise the old modules go back and `SurgeryMismatchError` says by how much;
4. carries each surviving parameter's optimizer state (momentum, Adam's moments and step),
   sliced exactly as its weights were: `redo`, the same change, runs on a copy of the old
   model whose weights are the state tensors (sliced_state.py);
5. replaces the parameters in the optimizer, in the model's order, each in its old group;
6. declares the edit on the model's architecture record (so resume, `init_from` and export
   rebuild the changed model before its weights load);
7. rewraps DDP around the changed module;
8. fires `on_model_changed(mapping)` on every hook (`Trainer.notify_model_changed`), so every
   hook that holds modules or parameters rebinds.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from learnsparse.core.record import declare_edit

from .sliced_state import holding, sliced_optimizer_state


class SurgeryMismatchError(RuntimeError):
    """The changed model does not compute what the old one did."""


@dataclass
class Surgery:
    """What a change did: the modules it put in, and `carry`, which slices any per-parameter
    tensors (by old parameter name) as the weights were sliced (e.g. a hook's masks)."""
    mapping: dict[str, nn.Module]
    carry: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def changed_modules(old: nn.Module, new: nn.Module) -> dict[str, nn.Module]:
    """The smallest {name: module of `new`} that, put into `old`, makes it `new`'s structure: a
    module goes in whole where its type, its children's names, or its own parameters' or
    buffers' names or shapes differ (a pruned conv, a branch replaced by its shortcut)."""
    old_modules = dict(old.named_modules())
    mapping: dict[str, nn.Module] = {}
    for name, m in new.named_modules():
        if any(name.startswith(f"{done}.") for done in mapping if done):
            continue
        before = old_modules.get(name)
        if before is None or type(before) is not type(m) or _own_shapes(before) != _own_shapes(m) \
                or set(dict(before.named_children())) != set(dict(m.named_children())):
            mapping[name] = m
    return mapping


def _own_shapes(m: nn.Module) -> dict[str, tuple]:
    own = {**dict(m.named_parameters(recurse=False)), **dict(m.named_buffers(recurse=False))}
    return {k: tuple(v.shape) if v is not None else None for k, v in own.items()}


def probe_input(trainer, batch: int = 4) -> torch.Tensor:
    """A fixed random batch of the training input's shape (its own generator: the training's
    random stream is not consumed)."""
    gen = torch.Generator(device=trainer.device).manual_seed(0)
    x = torch.randn(batch, *trainer.input_shape, device=trainer.device, generator=gen)
    return x.to(memory_format=trainer.memory_format) if x.dim() == 4 else x


def _probe(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, train: bool, seed: int) -> torch.Tensor:
    probe = copy.deepcopy(model).train(train)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)  # the same dropout masks in both models
        with torch.no_grad():
            out = probe(x)
    return F.cross_entropy(out, targets) if train else out


def check_same_function(before: nn.Module, after: nn.Module, x: torch.Tensor, rtol: float = 1e-5) -> None:
    """Eval outputs within rtol of their scale, and training-mode losses equal (on copies)."""
    targets = torch.arange(x.shape[0], device=x.device) % 2
    y0, y1 = _probe(before, x, targets, False, 0), _probe(after, x, targets, False, 0)
    scale = float(y0.abs().max())
    diff = float((y0 - y1).abs().max())
    if not diff <= rtol * max(scale, 1e-12):
        raise SurgeryMismatchError(f"model surgery: eval outputs differ by {diff:.3g} (scale {scale:.3g})")
    l0, l1 = _probe(before, x, targets, True, 1), _probe(after, x, targets, True, 1)
    if not abs(float(l0) - float(l1)) <= rtol * max(abs(float(l0)), 1e-12):
        raise SurgeryMismatchError(f"model surgery: training losses differ ({float(l0):.6g} vs {float(l1):.6g})")


def _owner(name: str, mapping: dict[str, nn.Module]) -> str | None:
    """The mapped module a (module or parameter) name lies in, if any."""
    for key in mapping:
        if key == "" or name == key or name.startswith(f"{key}."):
            return key
    return None


def _restore_modes(model: nn.Module, mapping: dict[str, nn.Module], training: dict[str, bool],
                   requires_grad: dict[str, bool], memory_format: torch.memory_format) -> None:
    """Each module and parameter as it was; new ones as the module they replace was."""
    for name, m in model.named_modules():
        owner = _owner(name, mapping)
        m.training = training.get(name, training.get(owner, True)) if owner is not None else training[name]
    for name, p in model.named_parameters():
        owner = _owner(name, mapping)
        if name in requires_grad:
            p.requires_grad_(requires_grad[name])
        elif owner is not None and not any(requires_grad.get(n, True) for n in requires_grad
                                           if _owner(n, {owner: None}) == owner):
            p.requires_grad_(False)  # the whole module was frozen: its replacement is too
    if memory_format is torch.channels_last:
        for key in mapping:
            model.get_submodule(key).to(memory_format=torch.channels_last)


def _optimizer_update(optimizer: torch.optim.Optimizer, model: nn.Module, old: dict[str, nn.Parameter],
                      mapping: dict[str, nn.Module], sliced: dict[str, dict], fresh: set[str]) -> None:
    """The old parameters out of the optimizer, the new ones in, each in its old group (a new
    name: the group of the module it replaced), in the model's order. A new parameter carries
    the sliced state when what it came from had state (its old self, or the module it replaced),
    plus that module's per-parameter scalars (Adam's step)."""
    group_of_old = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
    under = {key: [p for n, p in old.items() if _owner(n, {key: None}) == key] for key in mapping}
    scalars = {key: {k: v for p in ps for k, v in optimizer.state.get(p, {}).items()
                     if not (torch.is_tensor(v) and v.dim() > 0)} for key, ps in under.items()}
    new = dict(model.named_parameters())
    live = {id(p) for p in new.values()}
    added: dict[nn.Parameter, tuple[int, dict]] = {}
    for name, p in new.items():
        if name in old and old[name] is p:
            continue  # untouched: keeps its place and its state
        owner = _owner(name, mapping)
        if name in old:
            group, had_state = group_of_old.get(id(old[name])), bool(optimizer.state.get(old[name]))
        else:
            groups = [group_of_old[id(q)] for q in under.get(owner, []) if id(q) in group_of_old]
            # A module none of whose parameters were optimized stays so; a brand-new one joins group 0.
            group = groups[0] if groups else (None if under.get(owner) else 0)
            had_state = any(optimizer.state.get(q) for q in under.get(owner, []))
        if group is None or not p.requires_grad:
            continue
        state = {}
        if had_state and name not in fresh and sliced.get(name):
            state = {k: v.to(device=p.device) for k, v in sliced[name].items()}
            state.update(copy.deepcopy(scalars.get(owner, {})))
        added[p] = (group, state)
    for p in old.values():
        if id(p) not in live:
            optimizer.state.pop(p, None)
    members = [{id(p) for p in g["params"] if id(p) in live} for g in optimizer.param_groups]
    for p, (g, _) in added.items():
        members[g].add(id(p))
    for g, ids in zip(optimizer.param_groups, members):
        g["params"] = [p for p in model.parameters() if id(p) in ids]
    for p, (_, state) in added.items():
        if state:
            optimizer.state[p] = state


def replace_modules(trainer, mapping: dict[str, nn.Module], *, verify: bool = True, edit: dict | None = None,
                    redo: Callable[[nn.Module], nn.Module | None] | None = None, fresh: Iterable[str] = (),
                    rtol: float = 1e-5) -> Surgery:
    """Put the modules of `mapping` ({qualified name: new module}; `""`: a whole new model,
    whose differences from the current one go in) into the trainer's model, as the module
    docstring lists. `redo(model)` applies the same change to a copy of the old model (in
    place, or returning the changed model): it slices the optimizer state. Without it, state
    follows the parameters whose names and shapes stay, and the others start without state.
    `fresh`: names of new parameters that start without state (a bias a pass added). `edit`:
    {"op": …, "redone_by": the function `rebuild` redoes it with, facts…} for the architecture record."""
    if edit is not None and ("op" not in edit or "redone_by" not in edit):
        raise ValueError("replace_modules: edit= needs 'op' (its name) and 'redone_by' (the module-level "
                         "function rebuild redoes it with, fn(model, edit))")
    model = trainer.unwrapped_model
    if "" in mapping:
        mapping = changed_modules(model, mapping[""])
        if "" in mapping:
            raise ValueError("model surgery can replace submodules, not the root module's own parameters")
    if not mapping:
        return Surgery({}, lambda values: dict(values))
    for name in mapping:
        model.get_submodule(name)  # a clear error for a name the model does not have
    training = {n: m.training for n, m in model.named_modules()}
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    old = dict(model.named_parameters())
    before = copy.deepcopy(model)
    replaced = {name: model.get_submodule(name) for name in mapping}
    for name, new in mapping.items():
        model.set_submodule(name, new.to(device=trainer.device))
    _restore_modes(model, mapping, training, requires_grad, getattr(trainer, "memory_format", None))
    if verify:
        try:
            check_same_function(before, model, probe_input(trainer), rtol)
        except SurgeryMismatchError:
            for name, m in replaced.items():
                model.set_submodule(name, m)
            raise

    def carry(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if redo is None:
            new = dict(model.named_parameters())
            return {n: v for n, v in values.items() if n in new and new[n].shape == v.shape}
        shadow = holding(before, values)
        with torch.no_grad():
            shadow = redo(shadow) or shadow
        return {n: p.detach() for n, p in shadow.named_parameters()}

    optimizer = trainer.optimizer
    sliced, _ = sliced_optimizer_state(optimizer, old, carry)
    _optimizer_update(optimizer, model, old, mapping, sliced, set(fresh))
    if edit is not None:
        facts = dict(edit)
        declare_edit(model, facts.pop("op"), facts.pop("redone_by"), **facts)
    rewrap(trainer)
    notify = getattr(trainer, "notify_model_changed", None)
    if notify is not None:
        notify(mapping)
    return Surgery(mapping, carry)


def rewrap(trainer) -> None:
    """A DDP wrapper holds the old parameters' buckets: wrap the changed module anew."""
    if isinstance(trainer.model, nn.parallel.DistributedDataParallel):
        trainer.model = nn.parallel.DistributedDataParallel(trainer.unwrapped_model,
                                                            device_ids=trainer.model.device_ids)
