"""Trained layers (whose structure is learned) and the deployed layers they export to."""
from .deployed import ChannelShuffle, IndexSelectGroupConv
from .learned_group_conv import LearnedGroupConv

__all__ = ["ChannelShuffle", "IndexSelectGroupConv", "LearnedGroupConv"]
