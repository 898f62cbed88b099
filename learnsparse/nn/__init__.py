"""Trained layers (whose structure is learned) and the deployed layers they export to."""
from .deployed import ChannelShuffle, IndexSelectGroupConv
from .flgc import FLGConv
from .learned_group_conv import LearnedGroupConv

__all__ = ["ChannelShuffle", "FLGConv", "IndexSelectGroupConv", "LearnedGroupConv"]
