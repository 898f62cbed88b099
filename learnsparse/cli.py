"""Thin command-line entry points. All work happens in importable functions."""
from __future__ import annotations

import os
import sys

from .errors import UserError


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _one_line(exc: BaseException) -> str:
    """Hydra's composition errors span lines (options listed below); fold them into one."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    head = lines[0]
    if len(lines) > 1 and lines[1].startswith("Available options"):
        head += f" (available: {', '.join(lines[2:])})"
    return head


def _preflight(argv: list[str], config_name: str, check) -> None:
    """Compose and check the config before Hydra creates an output folder, so bad input
    costs one clear line and leaves nothing behind. Multirun sweeps are left to Hydra."""
    if any(a.startswith("-") for a in argv):
        return
    from .config_dir import compose

    try:
        cfg = compose([a for a in argv if not a.startswith("hydra.")], config_name)
        check(cfg)
    except UserError as e:
        _fail(str(e))
    except Exception as e:  # Hydra's override and composition errors
        _fail(_one_line(e))


def _run_hydra(task, config_name: str, check) -> None:
    try:
        import hydra

        from .config_dir import config_dir

        path = str(config_dir())
    except UserError as e:
        _fail(str(e))
    _preflight(sys.argv[1:], config_name, check)
    hydra.main(version_base="1.3", config_path=path, config_name=config_name)(task)()


def _train_task(cfg) -> None:
    from .engine import NonFiniteLossError, train

    try:
        metrics = train(cfg)
    except UserError as e:
        _fail(str(e))
    except NonFiniteLossError as e:
        _fail(str(e), 3)
    except KeyboardInterrupt:
        _fail("interrupted; the last checkpoint is intact (resume with trainer.resume=auto)", 130)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun every rank holds the same global metrics; one report is enough
    if metrics.get("val_top1") is not None:
        print(f"test accuracy: top-1 {metrics['val_top1']:.2f}%  top-5 {metrics['val_top5']:.2f}%  "
              f"(loss {metrics['val_loss']:.4f}, epoch {metrics['epoch'] + 1})")
    print(f"outputs: {metrics['output_dir']}")


def export_main() -> None:
    """learnsparse-export checkpoint=<path> [formats=[pt,pt2,onnx]] [key=value ...]"""
    from .config_dir import compose

    args = sys.argv[1:]
    if any(a in ("-h", "--help") for a in args):
        print(export_main.__doc__)
        return
    try:
        if "checkpoint" not in {a.split("=", 1)[0] for a in args}:
            raise UserError("learnsparse-export needs checkpoint=<path to a training checkpoint>")
        cfg = compose(args, config_name="export")
    except UserError as e:
        _fail(str(e))
    except Exception as e:
        _fail(_one_line(e))
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .export.from_checkpoint import export_checkpoint

    try:
        report = export_checkpoint(cfg)
    except UserError as e:
        _fail(str(e))
    print(report["table"])
    for kind, path in report["files"].items():
        print(f"wrote {kind}: {path}")
    print(f"report: {report['report']}")


def train_main() -> None:
    from .engine.config_checks import check_config

    _run_hydra(_train_task, "train", check_config)


if __name__ == "__main__":
    train_main()
