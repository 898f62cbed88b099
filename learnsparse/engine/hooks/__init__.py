from .checkpoint import CheckpointHook
from .evaluation import EvalHook, evaluate
from .metrics_log import MetricsLogHook
from .progress_bar import ProgressBarHook
from .tensorboard import TensorBoardHook
from .train_stats import TrainStatsHook

__all__ = ["CheckpointHook", "EvalHook", "MetricsLogHook", "ProgressBarHook", "TensorBoardHook", "TrainStatsHook",
           "evaluate"]
