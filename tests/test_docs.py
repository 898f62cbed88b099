"""The docs run as written: every command composes, every Python block executes.

Commands (`learnsparse-train`, `learnsparse-export`, `torchrun ... -m learnsparse.cli`) are
taken from the code blocks and inline code of README.md and docs/*.md and composed with the
real configs and checks (no training; datasets may be missing). User config files shown in
the docs (a YAML block one of whose first two lines is `# <folder>/<group>/<name>.yaml`) are written to
the working folder first, so `--config-dir` examples compose against them. Python blocks run
in order, one namespace per page, in a folder that holds a tiny quickstart run, with every
training config shrunk to seconds on a 600-image Fashion-MNIST copy. A block preceded by
`<!-- docs-test: skip (reason) -->` is not run (it needs a real dataset or a GPU).
"""
from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The documented Fashion-MNIST runs, shrunk: the 600-image copy in tests/data, one epoch.
TINY_FASHION = [f"data.root={REPO / 'tests/data/fashion-mnist'}", "data.dataset.train_subset=128", "trainer.epochs=1",
                "trainer.device=cpu", "logger=none"]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`((?:learnsparse-train|learnsparse-export)[^`]*)`")
SKIP = "<!-- docs-test: skip"


def blocks(page: Path):
    """(language, code, skipped) of every fenced block."""
    text = page.read_text()
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip().splitlines()[-1:] or [""]
        yield m.group(1), m.group(2), before[0].startswith(SKIP)


def command_lines(page: Path) -> list[str]:
    found = []
    for lang, code, _ in blocks(page):
        if lang in ("bash", "sh", ""):
            found += [ln.strip() for ln in code.replace("\\\n", " ").splitlines()]
    found += INLINE.findall(page.read_text())
    return [c for c in found if re.match(r"(\w+=\S*\s+)*(\S*/)?(learnsparse-train|learnsparse-export|torchrun)\b", c)]


def all_commands():
    return [pytest.param(page, cmd, id=f"{page.name}:{cmd[:60]}") for page in PAGES for cmd in command_lines(page)]


def user_config_files(root: Path) -> None:
    """Write the config files and plugin modules the docs show (their first line names the path)."""
    for page in PAGES:
        for lang, code, _ in blocks(page):
            # The path is in one of the first two comment lines (`# @package` must come first).
            m = next(filter(None, (re.match(r"#\s*(\S+\.(?:yaml|py))\s*$", ln) for ln in code.splitlines()[:2])), None)
            if lang in ("yaml", "python") and m and m.group(1).endswith(f".{'yaml' if lang == 'yaml' else 'py'}") \
                    and not m.group(1).startswith("learnsparse/"):
                path = root / m.group(1)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(code)


@pytest.mark.parametrize("page, command", all_commands())
def test_documented_command_composes(page, command, tmp_path, monkeypatch):
    from learnsparse.cli import compose_or_fail, first_of_each_sweep, split_arguments
    from learnsparse.engine.config_checks import check_config

    monkeypatch.chdir(tmp_path)
    user_config_files(tmp_path)
    words = shlex.split(command, comments=True)
    while "=" in words[0]:  # environment assignments before the program (PYTHONPATH=.)
        words = words[1:]
    program = Path(words[0]).name
    if program == "torchrun":
        words = words[words.index("learnsparse.cli"):]
        program = "learnsparse-train"
    flags, config_dirs, overrides = split_arguments(words[1:])
    if any(f in ("-m", "--multirun") for f in flags):
        overrides = first_of_each_sweep(overrides)
    # compose_or_fail exits with the one-line message a user would see; pytest shows it.
    try:
        if program == "learnsparse-export":
            compose_or_fail(overrides, "export", config_dirs)
        else:
            compose_or_fail(overrides, "train", config_dirs, check_config)
    except SystemExit:
        pytest.fail(f"{page.name}: `{command}` does not compose (see the error above)")


def test_the_documented_plugin_trains_under_the_term_it_declares(tmp_path, monkeypatch):
    """docs/trainer.md's plugin, its config file and its command, trained for one tiny epoch:
    its loss term is logged under the name its `loss_names` declares (the trainer refuses any
    other)."""
    from learnsparse import train
    from learnsparse.cli import _current_folder_importable, split_arguments
    from learnsparse.core.config_dir import compose

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    _current_folder_importable()  # as the command does: the folder it runs from imports
    user_config_files(tmp_path)
    [command] = [c for c in command_lines(REPO / "docs" / "trainer.md") if "sparsity=first_conv_l2" in c]
    words = [w for w in shlex.split(command) if not w.startswith("PYTHONPATH=")]
    _, config_dirs, overrides = split_arguments(words[1:])
    metrics = train(compose([*overrides, *TINY_FASHION, f"paths.output_dir={tmp_path}/run"], "train", config_dirs))
    assert metrics["train_loss_reg_first_conv_l2"] > 0


@pytest.fixture(scope="module")
def docs_folder(tmp_path_factory):
    """A working folder with one tiny quickstart run in outputs/quickstart/, as after `make demo`."""
    from learnsparse import train
    from learnsparse.core.config_dir import compose

    root = tmp_path_factory.mktemp("docs")
    train(compose(["experiment=quickstart", *TINY_FASHION, f"paths.log_dir={root}/outputs"]))
    user_config_files(root)
    return root


def python_pages():
    return [pytest.param(p, id=p.name) for p in PAGES if any(lang == "python" for lang, _, _ in blocks(p))]


@pytest.mark.parametrize("page", python_pages())
def test_documented_python_runs(page, docs_folder, monkeypatch):
    import learnsparse.core.config_dir as config_dir

    real_compose = config_dir.compose

    def tiny_compose(overrides=None, config_name="train", config_dirs=None):
        # The documented call, shrunk: synthetic data in the doc's model's format, one epoch.
        extra = TINY_FASHION if config_name == "train" else []
        return real_compose([*(overrides or []), *extra], config_name, config_dirs)

    monkeypatch.setattr(config_dir, "compose", tiny_compose)
    monkeypatch.chdir(docs_folder)
    monkeypatch.syspath_prepend(str(docs_folder))
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    ran = 0
    for lang, code, skipped in blocks(page):
        if lang != "python" or skipped:
            continue
        exec(compile(code, f"{page.name} (python block {ran + 1})", "exec"), namespace)
        ran += 1
    assert ran > 0


def _options(group: str) -> list[str]:
    from learnsparse.core.config_dir import config_dir

    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["experiment", "sparsity", "model", "data", "optim", "lr_scheduler", "logger",
                                   "callbacks"])
def test_configs_page_names_every_option(group):
    text = (REPO / "docs" / "configs.md").read_text()
    missing = [o for o in _options(group) if f"`{o}`" not in text]
    assert not missing, f"docs/configs.md does not list {group} options {missing}"


def test_commands_use_one_style():
    """The README says once to activate .venv; after that every command is bare."""
    styled = [(p.name, ln.strip()) for p in PAGES for lang, code, _ in blocks(p) if lang in ("bash", "sh")
              for ln in code.splitlines() if ln.strip().startswith(".venv/bin/")]
    assert not styled, styled
