"""Remove channels that are exactly dead, through Torch-Pruning's dependency graph.

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
"""
from __future__ import annotations

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
    w = m.weight.detach()[idxs].flatten(1)
    dead = (w == 0).all(dim=1)
    if m.bias is not None:
        dead &= m.bias.detach()[idxs] == 0
    return dead


def _columns_zero(m: nn.Module, idxs: list[int]) -> torch.Tensor:
    """Per input index: no weight of the layer reads it."""
    w = m.weight.detach()
    if isinstance(m, nn.Conv2d) and m.groups > 1:
        # Input channel i of a grouped conv is column i mod (in/groups) of its group's filters.
        per_group = m.in_channels // m.groups
        out_per_group = m.out_channels // m.groups
        idx = torch.as_tensor(idxs)
        g, col = idx // per_group, idx % per_group
        w = w.reshape(m.groups, out_per_group, per_group, -1)
        return (w[g, :, col] == 0).flatten(1).all(dim=1)
    return (w.transpose(0, 1)[idxs].flatten(1) == 0).all(dim=1)


def _bn_dead(bn: nn.BatchNorm2d, idxs: list[int], input_zero: torch.Tensor | None) -> torch.Tensor:
    gamma, beta = bn.weight.detach()[idxs], bn.bias.detach()[idxs]
    dead = (gamma == 0) & (beta == 0)
    if input_zero is not None:
        mean, var = bn.running_mean[idxs], bn.running_var[idxs]
        constant = beta - gamma * mean / torch.sqrt(var + bn.eps)
        dead |= input_zero & (constant == 0)
    return dead


def _producer_conv(DG: tp.DependencyGraph, bn: nn.Module) -> nn.Module | None:
    node = DG.module2node.get(bn)
    if node is None or len(node.inputs) != 1:
        return None
    prev = node.inputs[0].module
    return prev if isinstance(prev, _WEIGHTED) and len(node.inputs[0].outputs) == 1 else None


def _feeds_batchnorm(DG: tp.DependencyGraph, m: nn.Module) -> bool:
    node = DG.module2node.get(m)
    return node is not None and len(node.outputs) == 1 and isinstance(node.outputs[0].module, nn.BatchNorm2d)


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


def removable_channels(DG: tp.DependencyGraph, group) -> tuple[list[int], list[int]]:
    """Root indices of `group` whose removal leaves the network's function unchanged, and root
    indices that are constant wherever they are read and whose readers can absorb that
    constant into their bias (to be confirmed on data by `_fold_constants`)."""
    n = len(group[0].idxs)
    writers_dead = torch.ones(n, dtype=torch.bool)
    writers_constant = torch.ones(n, dtype=torch.bool)
    readers_zero = torch.ones(n, dtype=torch.bool)
    readers_foldable = True
    has_reader = False
    for item in group.items:
        dep, m, idxs = item.dep, item.dep.target.module, list(item.idxs)
        roots = torch.as_tensor(item.root_idxs, dtype=torch.long)
        if isinstance(m, tp.ops._OutputOp):
            return [], []  # the channel is part of the model's output
        if DG.is_out_channel_pruning_fn(dep.handler):
            if _preserves_zero(m):
                continue  # (a constant stays a constant too: checked on data before folding)
            if isinstance(m, nn.BatchNorm2d):
                conv = _producer_conv(DG, m)
                input_zero = _rows_zero(conv, idxs) if conv is not None and conv.weight.shape[0] == m.num_features \
                    else None
                dead, constant = _bn_dead(m, idxs, input_zero), _bn_constant(m, idxs, input_zero)
            elif isinstance(m, _WEIGHTED):
                if _feeds_batchnorm(DG, m):
                    continue  # its BatchNorm is the writer that decides
                dead = _rows_zero(m, idxs)
                constant = (m.weight.detach()[idxs].flatten(1) == 0).all(dim=1)  # only the bias is left
            else:
                dead = constant = torch.zeros(len(idxs), dtype=torch.bool)  # an op that may not keep zeros
            # Several indices may map to one root (flatten); the root is dead only if all are.
            writers_dead &= _scatter_all(dead, roots, n)
            writers_constant &= _scatter_all(constant, roots, n)
        elif isinstance(m, _WEIGHTED) and not _is_depthwise(m):
            has_reader = True
            readers_zero &= _scatter_all(_columns_zero(m, idxs), roots, n)
            readers_foldable &= _foldable_reader(m)
        else:
            has_reader = True
            readers_zero[:] = False  # a reader we cannot inspect needs every channel
            readers_foldable = False
    if not has_reader:
        return [], []
    removable = writers_dead | readers_zero
    foldable = writers_constant & ~removable if readers_foldable else torch.zeros(n, dtype=torch.bool)
    return torch.nonzero(removable).flatten().tolist(), torch.nonzero(foldable).flatten().tolist()


@torch.no_grad()
def _fold_constants(model: nn.Module, group, candidates: list[int], example_inputs: torch.Tensor) -> list[int]:
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
        if m.bias is None:
            m.bias = nn.Parameter(torch.zeros(m.weight.shape[0], dtype=m.weight.dtype, device=m.weight.device))
        m.bias.add_(w @ kappa[use])
    return cand[ok].tolist()


def _scatter_all(values: torch.Tensor, roots: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.ones(n, dtype=torch.bool)
    out.scatter_reduce_(0, roots, values, reduce="amin")
    return out


def remove_dead_channels(model: nn.Module, example_inputs: torch.Tensor) -> tuple[list, list, list]:
    """Prune, in place, every removable channel of `model`. Returns (layer name, layer, output
    channels before, after) for each layer whose output channels changed, the pruning history
    that replays it, and the layers that got a bias to absorb folded constants. A layer always keeps one channel so that its shape stays valid;
    wholly dead residual branches are removed before this pass."""
    with torch.enable_grad():
        DG = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
    names = {m: n for n, m in model.named_modules()}
    before = {m: m.weight.shape[0] for m in model.modules() if isinstance(m, _WEIGHTED)}
    bias_added = []
    for group in list(DG.get_all_groups(root_module_types=[nn.Conv2d, nn.Linear])):
        remove, foldable = removable_channels(DG, group)
        if foldable:
            had_bias = {m for m in model.modules() if isinstance(m, _WEIGHTED) and m.bias is not None}
            remove = sorted(remove + _fold_constants(model, group, foldable, example_inputs))
            bias_added += [names[m] for m in model.modules() if isinstance(m, _WEIGHTED) and m.bias is not None
                           and m not in had_bias]
        n = len(group[0].idxs)
        if len(remove) == n:
            remove = remove[1:]
        if remove:
            # Group.prune(idxs=…) would also record the full group in the history; this records
            # exactly what was removed, so the history replays on a fresh model.
            root = group[0].dep
            DG.get_pruning_group(root.target.module, root.handler, remove).prune()
    changed = [(names[m], m, b, m.weight.shape[0]) for m, b in before.items() if m.weight.shape[0] != b]
    return changed, [list(h) for h in DG.pruning_history()], bias_added
