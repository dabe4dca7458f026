"""The README's set-up commands: CI runs the test command exactly as the README writes it."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _commands(text: str) -> list[str]:
    """Lines of the ```bash blocks in ``text``."""
    return [line.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]


def test_ci_runs_the_readme_test_command():
    """The README has one install-and-test line and one install-and-demo line; ``.ci/run`` runs the first as written.

    Mutation caught: editing the command in one place only (README and CI drift apart).
    """
    readme = _commands((REPO / "README.md").read_text())
    test_line = 'pip install -c constraints.txt -e ".[dev]" && YOLO_OFFLINE=1 python -m pytest tests -q'
    assert test_line in readme
    assert "pip install -c constraints.txt -e . && yolo-prune demo" in readme
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_line in ci


def test_constraints_pin_the_torch_pair():
    """``constraints.txt`` pins torch and torchvision together (PyPI's torchvision alone does not fit a CPU torch), and
    the OpenCV that draws the built-in data (checked pixel for pixel by tests/test_data.py), and the ModelOpt that
    qat=True is tested with."""
    lines = [line.strip() for line in (REPO / "constraints.txt").read_text().splitlines()]
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    assert set(pins) == {"torch", "torchvision", "opencv-python", "nvidia-modelopt"}


def test_the_readme_test_command_is_the_last_line_of_ci():
    """The test command ends ``.ci/run``: with ``set -e`` a failure before ``&&`` does not stop a script, so only as
    its last command does the command's status become CI's exit status.

    Mutation caught: a step added after it (e.g. ``ruff check .``) that would turn a failed install into a green run.
    """
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert ci[-1] == 'pip install -c constraints.txt -e ".[dev]" && YOLO_OFFLINE=1 python -m pytest tests -q'
