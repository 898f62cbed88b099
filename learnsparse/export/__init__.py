"""Export: squash masks → convert each trained layer → verify → report → save.

    deployed = learnsparse.export.condense(trained_model, example_inputs)
    model = learnsparse.export.load("export/condensed.pt")
"""
from .artifacts import load
from .condense import ExportResult, condense, condense_with_details
from .registry import register_converter
from .verify import ExportMismatchError

__all__ = ["ExportMismatchError", "ExportResult", "condense", "condense_with_details", "load", "register_converter"]
