"""Thin command-line entry points. All work happens in importable functions."""
from __future__ import annotations

import os
import sys

from .errors import UserError, find_user_error

# Hydra flags that print something instead of running: nothing to check before them.
_INFO_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--resolve", "--shell-completion",
               "-sc", "--version")
_CONFIG_DIR_FLAGS = ("--config-dir", "-cd")


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def split_arguments(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(Hydra flags, user config folders named by --config-dir, overrides)."""
    flags, config_dirs, overrides = [], [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if name in _CONFIG_DIR_FLAGS:
            value = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            config_dirs.append(value)
            flags += [arg] if "=" in arg else argv[i:i + 2]
            i += 1 if "=" in arg else 2
            continue
        (flags if arg.startswith("-") else overrides).append(arg)
        i += 1
    return flags, config_dirs, overrides


def first_of_each_sweep(overrides: list[str]) -> list[str]:
    """A multirun's overrides with every sweep cut to its first value: the first job's config."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    out = []
    for text, override in zip(overrides, parsed):
        if override.is_sweep_override():
            prefix = text.split("=", 1)[0]
            out.append(f"{prefix}={next(iter(override.sweep_string_iterator()))}")
        else:
            out.append(text)
    return out


def whole_run_in_output_dir(flags: list[str], overrides: list[str]) -> list[str]:
    """`paths.output_dir=DIR` moves the whole run: Hydra's own files (.hydra/, train.log) go
    to DIR too, not only what learnsparse writes. In a sweep DIR holds one folder per job."""
    given = [o for o in overrides if o.startswith("paths.output_dir=")]
    if not given:
        return overrides
    directory = given[-1].split("=", 1)[1]
    if any(f in ("-m", "--multirun") for f in flags):
        if not any(o.startswith("hydra.sweep.dir=") for o in overrides):
            return [o for o in overrides if o not in given] + [f"hydra.sweep.dir={directory}"]
        return overrides
    if not any(o.startswith("hydra.run.dir=") for o in overrides):
        return overrides + [f"hydra.run.dir={directory}"]
    return overrides


def compose_or_fail(overrides: list[str], config_name: str, config_dirs: list[str], check=None):
    """Compose (and check) a config; bad input ends the process with one line."""
    from .config_dir import compose
    from .config_errors import config_keys, describe

    def valid_keys(bad_key: str) -> list[str]:
        # Compose again without the override that named the unknown key, to list the real ones.
        keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != bad_key]
        try:
            return config_keys(compose(keep, config_name, config_dirs))
        except Exception:
            return []

    try:
        cfg = compose(overrides, config_name, config_dirs)
        if check is not None:
            check(cfg)
        return cfg
    except Exception as e:
        user = find_user_error(e)
        if user is not None:
            _fail(str(user))
        _fail(describe(e, valid_keys))


def _preflight(flags: list[str], config_dirs: list[str], overrides: list[str], config_name: str, check) -> None:
    """Compose and check the config before Hydra creates an output folder, so bad input
    costs one clear line and leaves nothing behind. A sweep is checked on its first job."""
    if any(f.split("=", 1)[0] in _INFO_FLAGS for f in flags):
        return
    if any(f in ("-m", "--multirun") for f in flags):
        try:
            overrides = first_of_each_sweep(overrides)
        except Exception as e:
            from .config_errors import describe

            _fail(describe(e))
    compose_or_fail(whole_run_in_output_dir(flags, overrides), config_name, config_dirs, check)


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


def train_main() -> None:
    """learnsparse-train [--config-dir DIR] [-m] key=value ...  (Hydra; see --help)"""
    import hydra

    from .config_dir import CONFIG_MODULE  # importing it registers the config resolvers
    from .engine.preflight import preflight

    flags, config_dirs, overrides = split_arguments(sys.argv[1:])
    _preflight(flags, config_dirs, overrides, "train", preflight)
    sys.argv = [sys.argv[0], *flags, *whole_run_in_output_dir(flags, overrides)]
    hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="train")(_train_task)()


def export_help() -> str:
    from .config_dir import config_dir

    keys = (config_dir() / "export.yaml").read_text().strip()
    return ("usage: learnsparse-export checkpoint=<path> [key=value ...]\n\n"
            "Turns a training checkpoint into the deployed network, proves it equal to the trained one,\n"
            "measures it, and writes export/condensed.pt, model.pt2, model.onnx and report.json.\n"
            "Keys and their defaults (docs/export.md):\n\n" + keys)


def export_main() -> None:
    """learnsparse-export checkpoint=<path> [formats=[pt,pt2,onnx]] [key=value ...]"""
    args = sys.argv[1:]
    if any(a in ("-h", "--help") for a in args):
        print(export_help())
        return
    flags, config_dirs, overrides = split_arguments(args)
    if flags:
        _fail(f"learnsparse-export takes key=value overrides only (got {flags[0]}); see --help")
    if "checkpoint" not in {a.split("=", 1)[0] for a in overrides}:
        _fail("learnsparse-export needs checkpoint=<path to a training checkpoint>")
    cfg = compose_or_fail(overrides, "export", config_dirs)
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


if __name__ == "__main__":
    train_main()
