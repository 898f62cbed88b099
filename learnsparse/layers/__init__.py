"""The layer index: every built-in layer type, trained (its structure is learned) or deployed
(what the export turns trained layers into). Each file holds one type's class and its
registration (`learnsparse.core.layer_types.register_layer_type`): converters, dense and
trainable forms, structure save/restore, what the structure passes must know. A new built-in
type is one file and one line here."""
from .condensed_dense_block import CondensedDenseBlock
from .connectivity_conv import ConnectivityConv
from .dense_block import DenseBlock
from .deployed import ChannelShuffle, IndexSelectGroupConv
from .flgc_conv import FLGConv
from .igc_conv import IGCConv
from .learned_group_conv import LearnedGroupConv
from .lowered_conv import LoweredConv2d
from .permuted_group_conv import PermutedGroupConv

__all__ = ["ChannelShuffle", "CondensedDenseBlock", "ConnectivityConv", "DenseBlock", "FLGConv", "IGCConv",
           "IndexSelectGroupConv", "LearnedGroupConv", "LoweredConv2d", "PermutedGroupConv"]
