"""Thin command-line entry points. All work happens in importable functions."""
from __future__ import annotations

import os
import re
import sys

from .core.errors import UserError, find_cause

# Hydra flags that print something instead of running: nothing to check before them.
_INFO_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--resolve", "--shell-completion",
               "-sc", "--version")
_CONFIG_DIR_FLAGS = ("--config-dir", "-cd")


def _current_folder_importable() -> None:
    """A `_target_` model or plugin in the folder the command runs from imports, as it would
    for `python train.py` there (a console script puts its own folder on sys.path, not this
    one). Appended, so a file here never shadows an installed package."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())


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
    from .config_errors import config_keys
    from .core.config_dir import compose

    def valid_keys(bad_key: str) -> list[str]:
        # Compose again without the override that named the unknown key, to list the real ones.
        keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != bad_key]
        try:
            return config_keys(compose(keep, config_name, config_dirs))
        except Exception:
            return []

    try:
        cfg = compose(overrides, config_name, config_dirs)
    except Exception as e:
        fail_with_cause(e, valid_keys)
    if check is not None:
        checked_or_fail(check, cfg)
    return cfg


def fail_with_cause(e: BaseException, valid_keys=None) -> None:
    """End the process with the one line that says what went wrong behind `e`."""
    from .config_errors import describe

    cause = find_cause(e)
    _fail(str(cause) if isinstance(cause, UserError) else describe(e, valid_keys))


def checked_or_fail(check, cfg):
    """`check(cfg)`'s result; bad input ends the process with one line."""
    try:
        return check(cfg)
    except Exception as e:
        fail_with_cause(e)


def _hydra_value(text: str) -> str:
    """`text` as the value of a Hydra override (quoted unless it is plain)."""
    if re.fullmatch(r"[\w./+:@-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def pin_run_folder(cfg, overrides: list[str]) -> list[str]:
    """Hydra names a run's folder from the clock when its run starts; the config composed
    before it named one from the clock then. Fix the folder once, absolute as Hydra makes it,
    so the run built before Hydra starts is the run Hydra's task receives."""
    from omegaconf import open_dict

    if any(o.startswith("paths.output_dir=") for o in overrides):
        return overrides  # the user's folder, the same in both
    folder = os.path.abspath(str(cfg.paths.output_dir))
    with open_dict(cfg):
        cfg.paths.output_dir = folder
    if any(o.startswith("hydra.run.dir=") for o in overrides):
        return overrides
    return [*overrides, f"hydra.run.dir={_hydra_value(folder)}"]


def build_before_hydra(flags: list[str], config_dirs: list[str], overrides: list[str]):
    """Compose and build the run before Hydra creates an output folder, so bad input costs
    one clear line and leaves nothing behind. Returns the overrides to hand to Hydra and the
    Run its task trains. A sweep is checked by building its first job (then dropped: each job
    builds its own run from its own config)."""
    from .engine.run import build

    overrides = whole_run_in_output_dir(flags, overrides)
    if any(f.split("=", 1)[0] in _INFO_FLAGS for f in flags):
        return overrides, None
    if any(f in ("-m", "--multirun") for f in flags):
        try:
            first = first_of_each_sweep(overrides)
        except Exception as e:
            fail_with_cause(e)
        checked_or_fail(build, compose_or_fail(first, "train", config_dirs)).close()
        return overrides, None
    cfg = compose_or_fail(overrides, "train", config_dirs)
    overrides = pin_run_folder(cfg, overrides)
    return overrides, checked_or_fail(build, cfg)


def _train_task(cfg, built=None) -> None:
    """Hydra's task: train the run built before Hydra started, or build this config's run
    (each job of a sweep)."""
    from .engine import NonFiniteLossError
    from .engine.run import build

    try:
        run = built if built is not None and built.is_for(cfg) else build(cfg)
        metrics = run.train()
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


# The shipped hydra/launcher configs and the plugin each needs (pip install learnsparse[cluster]).
_LAUNCHER_PLUGINS = {"joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
                     "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
                     "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher")}


def launcher_plugin_or_fail(overrides: list[str]) -> None:
    """`hydra/launcher=joblib` without its plugin: one line naming the package, not Hydra's
    'Unknown plugin class' traceback after the sweep was built."""
    import importlib.util

    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") == "hydra/launcher" and value in _LAUNCHER_PLUGINS:
            module, package = _LAUNCHER_PLUGINS[value]
            if importlib.util.find_spec(module) is None:
                _fail(f"hydra/launcher={value} needs the {package} package: pip install 'learnsparse[cluster]'")


def train_main() -> None:
    """learnsparse-train [--config-dir DIR] [-m] key=value ...  (Hydra; see --help)"""
    import hydra

    from .core.config_dir import CONFIG_MODULE  # importing it registers the config resolvers

    _current_folder_importable()
    flags, config_dirs, overrides = split_arguments(sys.argv[1:])
    launcher_plugin_or_fail(overrides)
    overrides, built = build_before_hydra(flags, config_dirs, overrides)
    sys.argv = [sys.argv[0], *flags, *overrides]

    def task(cfg) -> None:  # the built run goes to Hydra's task by closure, not through a global
        _train_task(cfg, built)

    # A sweep's launcher may pickle the task for its workers (joblib, submitit): there it is
    # the plain module function, and each job builds its own run.
    hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="train")(
        _train_task if built is None else task)()


def export_help() -> str:
    from .core.config_dir import config_dir

    keys = (config_dir() / "export.yaml").read_text().strip()
    return ("usage: learnsparse-export checkpoint=<path> [key=value ...]\n\n"
            "Turns a training checkpoint into the deployed network, proves it equal to the trained one,\n"
            "measures it, and writes export/condensed.pt, model.pt2, model.onnx and report.json.\n"
            "Keys and their defaults (docs/export.md):\n\n" + keys)


def export_main() -> None:
    """learnsparse-export checkpoint=<path> [formats=[pt,pt2,onnx]] [key=value ...]"""
    _current_folder_importable()
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
