"""Which channels of a dependency group are exactly dead, and why the others stay.

The graph couples every layer that shares a channel: the conv that writes it, its BatchNorm,
residual adds (every branch writing the channel), concatenations, flatten → linear, and the
layers that read it. A channel of such a group goes only when removing it cannot change the
output:

- every *writer* of the channel produces exactly zero there — a conv or linear with a zero
  filter and zero bias, or a BatchNorm whose γ and β are zero (its output is then zero
  whatever its input), or a BatchNorm after a zero filter whose constant β − γμ/σ is zero —
  so every tensor of the group is zero in that channel; or
- every *reader* (a conv or linear taking the channel as input) has zero weights for it, so
  its value does not matter.

A zero filter followed by a BatchNorm with a non-zero constant (or a zero filter with a bias)
outputs that constant, not zero. Where every reader is a linear layer or an unpadded conv, the
constant folds exactly into the readers' biases and the channel goes; otherwise (a padded 3x3
conv sees zeros at the borders, not the constant) the channel is kept. Groups nobody reads (the logits) are never touched.

Every channel that looks dead at some layer (a zero filter, a killed BatchNorm, an input
nobody reads) and is not removable gets a reason, for the export report.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp

_WEIGHTED = (nn.Conv2d, nn.Linear)

# Operations between layers that map zero to zero, so a channel that is zero where it is
# written stays zero downstream. Anything else (sigmoid, `x + 1`, clamp to a positive
# minimum) could turn it into a non-zero constant: its group keeps every channel.
_ZERO_PRESERVING_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Identity,
                            nn.Dropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                            nn.Flatten)
_STRUCTURAL_OPS = (tp.ops._ConcatOp, tp.ops._SplitOp, tp.ops._ReshapeOp, tp.ops._SliceOp, tp.ops._UnbindOp,
                   tp.ops._ExpandOp)
_ZERO_PRESERVING_GRAD_FNS = {
    "Relu", "Threshold", "Hardtanh", "LeakyRelu", "Silu", "Gelu", "Hardswish", "Add", "Sub", "Mul", "Mean", "Sum",
    "AvgPool2D", "MaxPool2DWithIndices", "AdaptiveAvgPool2D", "AdaptiveMaxPool2D", "View", "Reshape", "UnsafeView",
    "T", "Transpose", "Permute", "Clone", "Cat", "Squeeze", "Unsqueeze", "Expand", "Slice", "Select", "Split",
    "SplitWithSizes", "Unbind",
}


def _preserves_zero(m: nn.Module) -> bool:
    if isinstance(m, _ZERO_PRESERVING_MODULES + _STRUCTURAL_OPS):
        return True
    if isinstance(m, tp.ops._ElementWiseOp):
        name = str(m._grad_fn)  # the autograd node's name, e.g. "ReluBackward0"
        return name.rstrip("0123456789").removesuffix("Backward") in _ZERO_PRESERVING_GRAD_FNS
    return False


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


def _rows_zero(m: nn.Module, idxs: list[int]) -> torch.Tensor:
    """Per output index: the filter and its bias are all zero."""
    dead = zero_filters(m)[torch.as_tensor(idxs, dtype=torch.long)]
    if m.bias is not None:
        dead &= m.bias.detach()[idxs] == 0
    return dead


def _columns_zero(m: nn.Module, idxs: list[int]) -> torch.Tensor:
    """Per input index: no weight of the layer reads it."""
    return unread_inputs(m)[torch.as_tensor(idxs, dtype=torch.long)]


# Which filters of a layer are all zero, and which of its inputs no weight reads: the pass asks
# this of a layer once per group that touches it, each time a pass over the layer's weight
# (regnet_y_128gf, 0.6 G parameters, spent 13 of its 37 export seconds here). Inside
# `cached_zero_masks` each weight tensor is read once. An entry is keyed by the tensor itself
# and its version counter: pruners and folds put new tensors in place, an in-place write bumps
# the version, so a stale entry is never used; outside the context nothing is kept.
_MASKS: dict | None = None


@contextmanager
def cached_zero_masks():
    global _MASKS
    outer = _MASKS
    _MASKS = {} if outer is None else outer
    try:
        yield
    finally:
        _MASKS = outer


def _zero_masks(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    w = m.weight
    groups = m.groups if isinstance(m, nn.Conv2d) else 1
    key, version = (id(w), groups), _version(w)
    if _MASKS is not None and version is not None:
        hit = _MASKS.get(key)
        if hit is not None and hit[0]() is w and hit[1] == version:
            return hit[2], hit[3]
    filters, unread = _compute_zero_masks(w.detach(), groups)
    if _MASKS is not None and version is not None:
        _MASKS[key] = (weakref.ref(w), version, filters, unread)
    return filters, unread


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # an inference-mode tensor has no version counter: never cached
        return None


# Rows compared with zero at a time: a boolean copy of a whole weight (hundreds of MB on the
# largest networks) costs more in fresh memory than the comparison itself.
_CHUNK = 1 << 20


def _compute_zero_masks(w: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(filter all zero, per output channel; input channel read by no weight, per input channel).
    Input channel i of a grouped conv is column i mod (in/groups) of its own group's filters."""
    flat = w.reshape(w.shape[0], w.shape[1], -1)  # (out, inputs per group, kernel taps)
    out, width, taps = flat.shape
    per_group = out // groups
    filters = torch.empty(out, dtype=torch.uint8, device=w.device)
    unread = torch.ones(groups, width, dtype=torch.uint8, device=w.device)
    rows = max(1, _CHUNK // max(1, width * taps))
    # Reductions run on the comparison viewed as bytes: `amin` there is many times faster than
    # `all` on booleans, on the same values.
    if groups == 1:
        for i in range(0, out, rows):
            zero = (flat[i:i + rows] == 0).view(torch.uint8)
            filters[i:i + rows] = zero.flatten(1).amin(dim=1)
            unread[0] &= zero.amin(dim=2).amin(dim=0)
    else:  # whole groups at a time
        step = max(1, rows // per_group)
        for g in range(0, groups, step):
            zero = (flat[g * per_group:(g + step) * per_group] == 0).view(torch.uint8)
            filters[g * per_group:(g + step) * per_group] = zero.flatten(1).amin(dim=1)
            unread[g:g + step] = zero.reshape(-1, per_group, width, taps).amin(dim=3).amin(dim=1)
    return filters.bool(), unread.flatten().bool()


def zero_filters(m: nn.Module) -> torch.Tensor:
    """Per output channel of a conv or linear layer: its filter is all zero (bias aside). A copy."""
    return _zero_masks(m)[0].clone()


def unread_inputs(m: nn.Module) -> torch.Tensor:
    """Per input channel of a conv or linear layer: no weight reads it. A copy."""
    return _zero_masks(m)[1].clone()


def _bn_dead(bn: nn.BatchNorm2d, idxs: list[int], input_zero: torch.Tensor | None) -> torch.Tensor:
    if not bn.affine or not _act_keeps_zero(bn):
        return torch.zeros(len(idxs), dtype=torch.bool)
    gamma, beta = bn.weight.detach()[idxs], bn.bias.detach()[idxs]
    dead = (gamma == 0) & (beta == 0)
    if input_zero is not None and bn.running_mean is not None:
        mean, var = bn.running_mean[idxs], bn.running_var[idxs]
        constant = beta - gamma * mean / torch.sqrt(var + bn.eps)
        dead |= input_zero & (constant == 0)
    return dead


# A BatchNorm that applies its own activation (timm's BatchNormAct2d) calls the batch-norm
# kernel itself: the graph then holds that kernel as an op between the conv and the module.
_NORM_KERNELS = {"NativeLayerNorm", "NativeGroupNorm"}
_BN_KERNELS = {"NativeBatchNorm", "CudnnBatchNorm", "MiopenBatchNorm"}


def _is_bn_kernel(m: nn.Module) -> bool:
    return isinstance(m, tp.ops._ElementWiseOp) and _grad_name(m) in _BN_KERNELS


def _is_kernel(DG: tp.DependencyGraph, m: nn.Module) -> bool:
    """An op that is the inside of the layer after it: a BatchNorm's kernel (above), or the
    matrix product of a linear layer applied to an (N, H, W, C) tensor (ConvNeXt's MLP)."""
    if _is_bn_kernel(m):
        return True
    if not isinstance(m, tp.ops._ElementWiseOp) or _grad_name(m) not in ("Addmm", "Mm"):
        return False
    node = DG.module2node.get(m)
    return node is not None and len(node.outputs) == 1 and isinstance(node.outputs[0].module, nn.Linear)


def _grad_name(m: nn.Module) -> str:
    return str(m._grad_fn).split(" ")[0].removeprefix("<").rstrip("0123456789").removesuffix("Backward")


def _act_keeps_zero(bn: nn.Module) -> bool:
    """A BatchNorm with a fused activation (and drop) is zero-preserving only if those are."""
    return all(getattr(bn, a, None) is None or isinstance(getattr(bn, a), _ZERO_PRESERVING_MODULES)
               for a in ("act", "drop"))


def _producer_conv(DG: tp.DependencyGraph, bn: nn.Module) -> nn.Module | None:
    node = DG.module2node.get(bn)
    if node is None or len(node.inputs) != 1:
        return None
    prev = node.inputs[0]
    if _is_bn_kernel(prev.module) and len(prev.inputs) == 1 and len(prev.outputs) == 1:
        prev = prev.inputs[0]
    return prev.module if isinstance(prev.module, _WEIGHTED) and len(prev.outputs) == 1 else None


def _feeds_batchnorm(DG: tp.DependencyGraph, m: nn.Module) -> bool:
    node = DG.module2node.get(m)
    if node is None or len(node.outputs) != 1:
        return False
    nxt = node.outputs[0]
    if _is_bn_kernel(nxt.module) and len(nxt.outputs) == 1:
        nxt = nxt.outputs[0]
    return isinstance(nxt.module, nn.BatchNorm2d)


def _zero_bias(m: nn.Module) -> bool:
    return m.bias is None or bool((m.bias == 0).all())


def _bn_constant(bn: nn.BatchNorm2d, idxs: list[int], input_zero: torch.Tensor | None) -> torch.Tensor:
    """Per channel: the BatchNorm's output does not depend on its input (γ = 0, or input zero)."""
    constant = bn.weight.detach()[idxs] == 0
    return constant | input_zero if input_zero is not None else constant


def _foldable_reader(m: nn.Module) -> bool:
    """A reader into whose bias a constant input channel folds exactly: every output reads the
    channel only inside the input (linear; conv without padding, of any kernel size — with
    padding, border outputs would read zeros instead of the constant)."""
    if isinstance(m, nn.Linear):
        return True
    return isinstance(m, nn.Conv2d) and m.groups == 1 and not isinstance(m.padding, str) and m.padding == (0, 0)


@dataclass
class GroupAnalysis:
    """Per root channel of a group (arrays over the root's output channels)."""
    removable: torch.Tensor
    foldable: torch.Tensor
    writer_dead: dict[nn.Module, torch.Tensor] = field(default_factory=dict)  # each weighted writer's own zeros
    reader_zero: dict[nn.Module, torch.Tensor] = field(default_factory=dict)  # each weighted reader's unread inputs
    why: str | None = None  # why looking-dead channels that are not removable stay
    is_output: bool = False


def analyse(DG: tp.DependencyGraph, group, n: int) -> GroupAnalysis:
    """Root channels (of `n`) of `group` whose removal leaves the network's function unchanged
    (`removable`), and those constant wherever they are read whose readers can absorb the
    constant into their bias (`foldable`, to be confirmed on data by `fold_constants`)."""
    writers_dead = torch.ones(n, dtype=torch.bool)
    writers_constant = torch.ones(n, dtype=torch.bool)
    readers_zero = torch.ones(n, dtype=torch.bool)
    readers_foldable, has_reader = True, False
    after_depthwise = []
    result = GroupAnalysis(torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool))
    blockers: list[str] = []
    for item in group.items:
        dep, m, idxs = item.dep, item.dep.target.module, list(item.idxs)
        roots = torch.as_tensor(item.root_idxs, dtype=torch.long)
        if isinstance(m, tp.ops._OutputOp):
            result.is_output = True
            result.why = "part of the model's output"
            return result
        if DG.is_out_channel_pruning_fn(dep.handler):
            if _preserves_zero(m) or _is_kernel(DG, m):
                continue  # (a constant stays a constant too: checked on data before folding)
            if isinstance(m, nn.BatchNorm2d):
                conv = _producer_conv(DG, m)
                if conv is not None and _is_depthwise(conv) and _zero_bias(conv):
                    # A depthwise conv outputs zero where its input is zero: whether that is so
                    # is known only once every other writer is seen.
                    after_depthwise.append((m, idxs, roots))
                    continue
                input_zero = _rows_zero(conv, idxs) if conv is not None and conv.weight.shape[0] == m.num_features \
                    else None
                dead, constant = _bn_dead(m, idxs, input_zero), _bn_constant(m, idxs, input_zero)
                if conv is not None:
                    result.writer_dead[conv] = _scatter_any(dead, roots, n)
            elif isinstance(m, _WEIGHTED):
                if _feeds_batchnorm(DG, m):
                    continue  # its BatchNorm is the writer that decides
                dead = _rows_zero(m, idxs)
                constant = zero_filters(m)[torch.as_tensor(idxs, dtype=torch.long)]  # only the bias is left
                result.writer_dead[m] = _scatter_any(dead, roots, n)
            else:
                dead = constant = torch.zeros(len(idxs), dtype=torch.bool)  # an op that may not keep zeros
                blockers.append(f"a {_op_name(m)} normalises over them (it mixes every channel)"
                                if isinstance(m, (nn.LayerNorm, nn.GroupNorm)) or _op_name(m) in _NORM_KERNELS else
                                f"{_op_name(m)} writes them and may not keep zeros")
            # Several indices may map to one root (flatten); the root is dead only if all are.
            writers_dead &= _scatter_all(dead, roots, n)
            writers_constant &= _scatter_all(constant, roots, n)
        elif isinstance(m, _WEIGHTED) and not _is_depthwise(m):
            has_reader = True
            cols = _scatter_all(_columns_zero(m, idxs), roots, n)
            result.reader_zero[m] = cols
            readers_zero &= cols
            readers_foldable &= _foldable_reader(m)
        else:
            has_reader = True
            readers_zero[:] = False  # a reader we cannot inspect needs every channel
            readers_foldable = False
            if not isinstance(m, (nn.BatchNorm2d, nn.Conv2d)):
                blockers.append(f"{_op_name(m)} reads them")
    upstream = writers_dead.clone()
    for bn, idxs, roots in after_depthwise:
        input_zero = upstream[roots]
        writers_dead &= _scatter_all(_bn_dead(bn, idxs, input_zero), roots, n)
        writers_constant &= _scatter_all(_bn_constant(bn, idxs, input_zero), roots, n)
    if not has_reader:
        result.why = "nothing reads them"
        return result
    result.removable = writers_dead | readers_zero
    result.foldable = writers_constant & ~result.removable if readers_foldable else torch.zeros(n, dtype=torch.bool)
    if blockers:
        result.why = sorted(set(blockers))[0]
    elif (writers_constant & ~result.removable & ~result.foldable).any():
        result.why = "a BatchNorm or bias leaves a non-zero constant there, read by a padded conv"
    else:
        result.why = "another layer writing the same channels (a residual add or concat) is not dead there"
    return result


def removable_channels(DG: tp.DependencyGraph, group) -> tuple[list[int], list[int]]:
    """Root indices of `group` (built over all of its root's channels) whose removal leaves the
    network's function unchanged, and the foldable ones (see `analyse`)."""
    n = max(group[0].root_idxs) + 1 if group[0].root_idxs else 0
    a = analyse(DG, group, n)
    present = torch.zeros(n, dtype=torch.bool)
    present[torch.as_tensor(group[0].root_idxs, dtype=torch.long)] = True
    return (torch.nonzero(a.removable & present).flatten().tolist(),
            torch.nonzero(a.foldable & present).flatten().tolist())


def _op_name(m: nn.Module) -> str:
    if isinstance(m, tp.ops._ElementWiseOp):
        return _grad_name(m)
    return type(m).__name__.strip("_")


def indices_in_range(DG: tp.DependencyGraph, group) -> bool:
    """Every index of every item lies inside its layer (Torch-Pruning's mappings through some
    splits and slices do not)."""
    for item in group.items:
        m = item.dep.target.module
        if not isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm)):
            continue
        pruner = DG.get_pruner_of_module(m)
        out = DG.is_out_channel_pruning_fn(item.dep.handler)
        size = pruner.get_out_channels(m) if out else pruner.get_in_channels(m)
        if size is not None and item.idxs and not (0 <= min(item.idxs) and max(item.idxs) < size):
            return False
    return True


@torch.no_grad()
def fold_constants(model: nn.Module, group, candidates: list[int], example_inputs: torch.Tensor) -> list[int]:
    """Fold channels that are constant at every reader into the readers' biases; returns the
    root indices folded. The constant is read off the readers' real inputs and accepted only
    if it is bitwise the same for every image and position (a padded pooling on the way, for
    instance, makes borders differ: such a channel is kept)."""
    readers = [item for item in group.items if isinstance(item.dep.target.module, _WEIGHTED)
               and not group._DG.is_out_channel_pruning_fn(item.dep.handler)]
    seen, handles = {}, []
    for item in readers:
        m = item.dep.target.module
        handles.append(m.register_forward_pre_hook(lambda mod, args, m=m: seen.__setitem__(m, args[0].detach())))
    noise = torch.randn(example_inputs.shape, generator=torch.Generator().manual_seed(1))
    try:
        model(torch.cat([example_inputs, noise]))
    finally:
        for h in handles:
            h.remove()
    cand = torch.as_tensor(candidates)
    ok = torch.ones(len(candidates), dtype=torch.bool)
    plans = []
    for item in readers:
        m, x = item.dep.target.module, seen[item.dep.target.module]
        idxs, roots = torch.as_tensor(list(item.idxs)), torch.as_tensor(item.root_idxs)
        pick = torch.isin(roots, cand)
        cols = idxs[pick]
        values = x[:, cols].transpose(0, 1).flatten(1)  # (columns, every image and position)
        constant = (values == values[:, :1]).all(dim=1)
        where = torch.searchsorted(cand, roots[pick])
        ok &= _scatter_all(constant, where, len(candidates))
        plans.append((m, cols, roots[pick], values[:, 0]))
    for m, cols, roots, kappa in plans:
        use = torch.isin(roots, cand[ok])
        w = m.weight.detach()[:, cols[use]]
        w = w.flatten(2).sum(2) if w.dim() > 2 else w  # every kernel tap reads the same constant
        bias = m.bias.detach() if m.bias is not None else torch.zeros(m.weight.shape[0], dtype=m.weight.dtype,
                                                                       device=m.weight.device)
        # A new parameter, not an in-place add: a group that fails later is undone by
        # restoring attributes (module_state.Snapshot).
        m.bias = nn.Parameter(bias + w @ kappa[use])
    return cand[ok].tolist()


def _scatter_all(values: torch.Tensor, roots: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.ones(n, dtype=torch.bool)
    out.scatter_reduce_(0, roots, values, reduce="amin")
    return out


def _scatter_any(values: torch.Tensor, roots: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros(n, dtype=torch.bool)
    out.scatter_reduce_(0, roots, values, reduce="amax")
    return out
