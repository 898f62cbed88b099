"""Export: squash masks → convert each trained layer → verify → report → save.

    report = learnsparse.export.export("run/checkpoints/last.pt")   # what learnsparse-export does
    trained = learnsparse.export.load_trained("run/checkpoints/last.pt")
    deployed = learnsparse.export.condense(trained, torch.randn(8, *trained.input_shape))
    model = learnsparse.export.load("run/export/condensed.pt")
"""
from .artifacts import load
from .condense import ExportResult, condense, condense_with_details
from .dense_form import dense_equivalent
from .from_checkpoint import export, load_trained
from .registry import register_converter
from .verify import ExportMismatchError

__all__ = ["ExportMismatchError", "ExportResult", "condense", "condense_with_details", "dense_equivalent", "export", "load",
           "load_trained", "register_converter"]
