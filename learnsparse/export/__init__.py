"""Export: squash masks → convert each trained layer → verify → report → save.

    report = learnsparse.export.export("run/checkpoints/last.pt")   # what learnsparse-export does
    trained = learnsparse.export.load_trained("run/checkpoints/last.pt")
    deployed = learnsparse.export.condense(trained, torch.randn(8, *trained.input_shape))
    model = learnsparse.export.load("run/export/condensed.pt")
    learnsparse.export.save_onnx(model, example, "model.onnx")    # an in-memory model's files
    learnsparse.export.save_pt2(model, example, "model.pt2")
"""
from learnsparse.core.layer_types import dense_equivalent
from learnsparse.core.runtimes import register_runtime

from .artifacts import load, save_onnx, save_pt2
from .condense import ExportResult, condense, condense_with_details
from .from_checkpoint import export, load_trained
from .registry import register_converter
from .verify import ExportMismatchError

__all__ = ["ExportMismatchError", "ExportResult", "condense", "condense_with_details", "dense_equivalent", "export", "load",
           "load_trained", "register_converter", "register_runtime", "save_onnx", "save_pt2"]
