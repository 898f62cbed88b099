"""Dead-channel removal through the patterns users' CNNs hold: grouped convs, channel
shuffles, splits and slices, partial-channel adds, linear hidden units; and what the pass
leaves as it found it (modes, requires_grad, memory format), or keeps with a reason."""
import copy

import pytest
import torch
import torch.nn as nn

from learnsparse.export import condense_with_details
from learnsparse.export.structure import channel_pruning, channel_rules, dependency_graph
from learnsparse.export.structure.channel_pruning import prune_dead_channels, remove_dead_channels
from learnsparse.export.structure.grouped_conv import GroupedConvPruner
from learnsparse.export.structure.passes import replay


def _bn(c):
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.bias.uniform_(0.1, 0.5)  # non-zero constants: only killed channels are dead
    return bn


def _kill(conv, bn, channels):
    with torch.no_grad():
        conv.weight[channels] = 0
        bn.weight[channels], bn.bias[channels] = 0, 0


def _same(a, b, x):
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.shape == yb.shape
    assert (ya - yb).abs().max() <= 1e-5 * ya.abs().max()


class _Grouped(nn.Module):
    """conv → BN → ReLU → grouped 3×3 conv (4 groups of 4) → BN → pool → linear."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 1, bias=False), _bn(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False), _bn(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.relu(self.bn2(self.conv2(x))).mean((2, 3)))


def test_grouped_conv_loses_the_same_count_from_each_group():
    torch.manual_seed(0)
    m = _Grouped().eval()
    _kill(m.conv1, m.bn1, [0, 1, 2, 4, 5, 8, 9, 13, 14])  # 3, 2, 2, 2 per group of conv2's inputs
    x = torch.randn(2, 3, 8, 8)
    result = condense_with_details(m, x, channels_last=False)
    conv2 = result.model.conv2
    assert conv2.groups == 4 and conv2.in_channels == 8 and conv2.out_channels == 16  # 2 from each group
    kept = {k["layer"]: k for k in result.pass_edits["kept_zeros"]}
    assert kept["conv1"]["channels"] == 1 and "grouped conv (groups=4)" in kept["conv1"]["reason"]
    assert any("zero channels kept" in after for layer, _, after in result.converted if layer == "conv1")
    _same(m, result.model, torch.randn(3, 3, 8, 8))


def test_grouped_conv_pruning_replays_on_a_fresh_model():
    torch.manual_seed(0)
    m = _Grouped().eval()
    _kill(m.conv1, m.bn1, [0, 5, 10, 15, 3, 6])
    x = torch.randn(1, 3, 8, 8)
    pruned = copy.deepcopy(m)
    _, history, _ = remove_dead_channels(pruned, x)
    fresh = _Grouped().eval()
    replay(fresh, {"pruning_history": history}, x)
    fresh.load_state_dict(pruned.state_dict())
    assert fresh.conv2.in_channels == pruned.conv2.in_channels == 12
    _same(m, fresh, torch.randn(2, 3, 8, 8))


def test_a_whole_dead_conv_group_goes_and_the_conv_has_one_group_fewer():
    torch.manual_seed(0)
    m = _Grouped().eval()
    _kill(m.conv2, m.bn2, [4, 5, 6, 7])  # conv2's group 1: every filter zero, its BatchNorm killed
    _kill(m.conv1, m.bn1, [0, 9])  # and one dead input in two other groups: unequal, they stay
    x = torch.randn(2, 3, 8, 8)
    result = condense_with_details(m, x, channels_last=False)
    conv2 = result.model.conv2
    # Group 1's inputs (conv1's filters 4-7, which nothing else reads) and outputs go with it.
    assert (conv2.groups, conv2.in_channels, conv2.out_channels) == (3, 12, 12)
    assert result.model.conv1.out_channels == 12 and result.model.fc.in_features == 12
    kept = {k["layer"]: k for k in result.pass_edits["kept_zeros"]}
    assert set(kept) == {"conv1"} and kept["conv1"]["channels"] == 2, kept
    _same(m, result.model, torch.randn(3, 3, 8, 8))

    fresh = _Grouped().eval()  # the two sides replay in order on a freshly built model
    replay(fresh, result.pass_edits, x[:1])
    assert (fresh.conv2.groups, fresh.conv2.in_channels, fresh.conv2.out_channels) == (3, 12, 12)
    fresh.load_state_dict(result.model.state_dict())
    _same(m, fresh, torch.randn(3, 3, 8, 8))


@pytest.mark.parametrize("inputs_first", [True, False])
def test_whole_groups_go_from_either_side_of_a_grouped_conv(inputs_first):
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 8, 3, padding=1, groups=4, bias=True)  # 3 inputs and 2 outputs a group
    with torch.no_grad():
        conv.weight[2:6] = 0  # groups 1 and 2 are dead: a zero filter and bias each
        conv.bias[2:6] = 0
    reference = nn.Conv2d(6, 4, 3, padding=1, groups=2, bias=True)
    with torch.no_grad():
        reference.weight.copy_(conv.weight[[0, 1, 6, 7]])
        reference.bias.copy_(conv.bias[[0, 1, 6, 7]])
    pruner, inputs, outputs = GroupedConvPruner(), [3, 4, 5, 6, 7, 8], [2, 3, 4, 5]
    if inputs_first:
        pruner.prune_in_channels(conv, inputs)
        pruner.prune_out_channels(conv, outputs)  # the second side: already gone with the first
    else:
        pruner.prune_out_channels(conv, outputs)
        pruner.prune_in_channels(conv, inputs)
    assert (conv.groups, conv.in_channels, conv.out_channels) == (2, 6, 4)
    assert not hasattr(conv, "_whole_groups_pending")
    x = torch.randn(2, 12, 5, 5)
    _same(reference, conv, x[:, [0, 1, 2, 9, 10, 11]])


def test_zero_masks_are_read_once_per_weight_and_never_stale(monkeypatch):
    torch.manual_seed(0)
    m = _Grouped().eval()
    _kill(m.conv1, m.bn1, [2])
    reads = []
    real = channel_rules._compute_zero_masks
    monkeypatch.setattr(channel_rules, "_compute_zero_masks", lambda w, groups: reads.append(w) or real(w, groups))
    with channel_rules.cached_zero_masks():
        first = channel_rules.zero_filters(m.conv1)
        assert channel_rules.unread_inputs(m.conv1).tolist() == [False] * 3 and len(reads) == 1
        with torch.no_grad():
            m.conv1.weight[5] = 0  # an in-place write: the cached answer is stale
        after = channel_rules.zero_filters(m.conv1)
        assert len(reads) == 2 and after[5] and not first[5] and first[2]
    channel_rules.zero_filters(m.conv1)
    channel_rules.zero_filters(m.conv1)
    assert len(reads) == 4  # outside the context nothing is kept


class _Shuffle(nn.Module):
    """ShuffleNetV2's pattern: split in halves, one half through a branch, cat, channel shuffle."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), _bn(8)
        self.conv1, self.bn1 = nn.Conv2d(4, 6, 1, bias=False), _bn(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 4, 1, bias=False), _bn(4)
        self.head = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        a, b = x.chunk(2, dim=1)
        b = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(b))))))
        x = torch.cat([a, b], 1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.fc(torch.relu(self.head(x)).mean((2, 3)))


def test_channel_shuffle_and_split_never_break_the_model():
    torch.manual_seed(0)
    m = _Shuffle().eval()
    _kill(m.stem, m.bn0, [1, 6])
    _kill(m.conv1, m.bn1, [2, 3])  # inside the branch: free to go
    _kill(m.conv2, m.bn2, [0])  # into the cat and the shuffle: coupled, kept
    x = torch.randn(2, 3, 8, 8)
    result = condense_with_details(m, x, channels_last=False)
    assert result.model.conv1.out_channels == 4 and result.model.conv2.in_channels == 4
    kept = {k["layer"]: k["reason"] for k in result.pass_edits["kept_zeros"]}
    assert {"stem", "conv2"} <= set(kept), kept
    _same(m, result.model, torch.randn(3, 3, 8, 8))


def test_a_group_search_stops_where_it_reaches_a_channel_shuffle():
    torch.manual_seed(0)
    m = _Shuffle().eval()
    DG = dependency_graph.build(m, torch.randn(1, 3, 8, 8))
    prune_out = DG.get_pruner_of_module(m.conv2).prune_out_channels
    with pytest.raises(dependency_graph.ReachesOpaque, match="channel shuffle"):
        DG.get_pruning_group(m.conv2, prune_out, [0], stop_at_opaque=True)
    group = DG.get_pruning_group(m.conv2, prune_out, [0])  # without the stop (a replay): the whole group
    assert any(item.dep.target in DG.opaque for item in group.items)


class _PartialAdd(nn.Module):
    """A residual add onto part of the channels (`x[:, :C] + y`), then a narrow and a cat."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), _bn(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 4, 1, bias=False), _bn(4)
        self.conv3, self.bn3 = nn.Conv2d(8, 6, 1, bias=False), _bn(6)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(x))
        x = torch.cat([x[:, :4] + y, x.narrow(1, 4, 4)], 1)
        z = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.cat([z, x[:, :2]], 1).mean((2, 3)))


def test_partial_channel_add_and_narrow_are_exact_or_kept():
    torch.manual_seed(0)
    m = _PartialAdd().eval()
    _kill(m.conv1, m.bn1, [0, 5])
    _kill(m.conv2, m.bn2, [0, 1])
    _kill(m.conv3, m.bn3, [1, 4])
    x = torch.randn(2, 3, 8, 8)
    result = condense_with_details(m, x, channels_last=False)
    assert result.max_abs_diff <= 1e-5 * result.output_scale
    _same(m, result.model, torch.randn(3, 3, 8, 8))
    # Every layer with dead filters lost them, or is listed with a reason.
    kept = {k["layer"] for k in result.pass_edits["kept_zeros"]}
    for name, width in (("conv1", 8), ("conv2", 4), ("conv3", 6)):
        assert result.model.get_submodule(name).out_channels < width or name in kept, (name, kept)


class _Mlp(nn.Module):
    """ConvNeXt's block: depthwise conv, LayerNorm over channels (NHWC), Linear → GELU → Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.norm = nn.LayerNorm(8)
        self.fc1, self.fc2 = nn.Linear(8, 32), nn.Linear(32, 8)
        self.head = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.fc2(nn.functional.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        return self.head((x + y).mean((2, 3)))


def test_dead_hidden_units_of_linear_layers_go():
    torch.manual_seed(0)
    m = _Mlp().eval()
    with torch.no_grad():
        for layer, dead in ((m.fc1, [1, 5, 9, 30]), (m.head[0], [0, 3, 7])):
            layer.weight[dead], layer.bias[dead] = 0, 0
    x = torch.randn(2, 3, 16, 16)
    result = condense_with_details(m, x, channels_last=False)
    assert result.model.fc1.out_features == 28 and result.model.fc2.in_features == 28
    assert result.model.head[0].out_features == 13 and result.model.head[3].in_features == 13
    _same(m, result.model, torch.randn(3, 3, 16, 16))


def test_the_pass_leaves_modes_grad_flags_and_memory_format_as_it_found_them():
    torch.manual_seed(0)
    m = _Grouped().train()
    m.bn2.eval()
    _kill(m.conv1, m.bn1, [0, 4, 8, 12])
    m.conv2.weight.requires_grad_(False)
    m.to(memory_format=torch.channels_last)
    modes = {n: mod.training for n, mod in m.named_modules()}
    dependency_graph.build(m, torch.randn(1, 3, 8, 8))  # Torch-Pruning's tracer calls eval()
    assert {n: mod.training for n, mod in m.named_modules()} == modes
    changed, _, _ = remove_dead_channels(m, torch.randn(1, 3, 8, 8))
    assert changed and m.conv2.in_channels == 12
    assert {n: mod.training for n, mod in m.named_modules()} == modes
    assert not m.conv2.weight.requires_grad and m.conv1.weight.requires_grad
    for conv in (m.conv1, m.conv2):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_a_failing_dependency_graph_keeps_every_zero_and_says_so(monkeypatch):
    torch.manual_seed(0)
    m = _Grouped().eval()
    _kill(m.conv1, m.bn1, [0, 4, 8, 12])

    def broken(*args, **kwargs):
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(channel_pruning, "build", broken)
    x = torch.randn(2, 3, 8, 8)
    result = condense_with_details(m, x, channels_last=False)
    assert result.model.conv1.out_channels == 16
    kept = result.pass_edits["kept_zeros"]
    assert [k["layer"] for k in kept] == ["conv1"] and "ZeroDivisionError" in kept[0]["reason"]


def test_a_search_over_its_bound_keeps_that_group():
    torch.manual_seed(0)
    m = _Grouped().eval()
    _kill(m.conv1, m.bn1, [0, 4, 8, 12])
    result = prune_dead_channels(m, torch.randn(1, 3, 8, 8), max_search_steps=2)
    assert not result.changed and m.conv1.out_channels == 16
    assert any("dependency search over 2 steps" in k["reason"] for k in result.kept)


def test_a_removal_that_moves_the_output_is_undone(monkeypatch):
    torch.manual_seed(0)
    m = _Grouped().eval()
    _kill(m.conv1, m.bn1, [0, 4, 8, 12])
    original = copy.deepcopy(m)
    # A rule that wrongly calls live channels dead: the output check must catch it.
    real = channel_pruning.analyse

    def wrong(DG, group, n):
        a = real(DG, group, n)
        a.removable[:] = True
        return a

    monkeypatch.setattr(channel_pruning, "analyse", wrong)
    monkeypatch.setattr(channel_pruning, "_looks_dead", lambda DG, root: list(range(root.weight.shape[0])))
    result = prune_dead_channels(m, torch.randn(1, 3, 8, 8))
    assert not result.changed and m.conv1.out_channels == 16
    assert result.kept and all("changed the output" in k["reason"] for k in result.kept)
    _same(original, m, torch.randn(2, 3, 8, 8))


def _tiny_transformer(kind: str) -> nn.Module:
    import torchvision.models as tv

    if kind == "vit":
        return tv.VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=32,
                                    mlp_dim=64, num_classes=10)
    return tv.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=[4, 4],
                              num_classes=10)


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_transformers_say_there_is_no_conv_structure(kind):
    torch.manual_seed(0)
    model = _tiny_transformer(kind).eval()
    with torch.no_grad():
        for m in model.modules():  # dead units, as the regularizers leave them: still nothing to do
            if isinstance(m, nn.Linear):
                m.weight[:2] = 0
    result = condense_with_details(model, torch.randn(1, 3, 32, 32))
    notes = [after for layer, _, after in result.converted if layer == ""]
    assert len(notes) == 1 and notes[0].startswith("no conv structure to remove: ")
