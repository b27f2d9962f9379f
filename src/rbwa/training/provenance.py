"""Where a run's numbers come from: the versions, the git revision and the machine it trained on (written into
every checkpoint and summary.json), and a warning when a run resumes under others."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rbwa import __version__


def cpu_kind(cpuinfo: str, capability: str, fallback: str = "") -> str:
    """The CPU that float rounding depends on, from the text of /proc/cpuinfo (empty elsewhere: ``fallback``,
    the platform's processor name) and the vector instructions torch dispatches to.

    >>> cpu_kind("model name\t: Intel(R) Xeon(R) Processor\ncpu family\t: 6\nmodel\t\t: 207\n", "AVX512")
    'Intel(R) Xeon(R) Processor (family 6, model 207), torch AVX512'
    """
    fields: dict[str, str] = {}
    for line in cpuinfo.split("\n\n")[0].splitlines():  # the first processor's block
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or fallback or "unknown CPU"
    numbers = ", ".join(f"{label} {fields[key]}" for key, label in (("cpu family", "family"), ("model", "model"))
                        if fields.get(key))
    return f"{name}{f' ({numbers})' if numbers else ''}, torch {capability}"


def versions() -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"rbwa": __version__, "git": commit, "torch": str(torch.__version__), "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "torch_threads": torch.get_num_threads(), "cpu": _this_cpu()}


def _this_cpu() -> str:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    return cpu_kind(cpuinfo, torch.backends.cpu.get_cpu_capability(), platform.processor())


def version_warning(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """A warning when a run resumes under another rbwa version or git revision, or on another CPU kind or thread
    count where the checkpoint recorded them (its numbers may change)."""
    changed = [f"{k} {saved.get(k)} -> {now.get(k)}" for k in ("rbwa", "git", "cpu", "torch_threads")
               if saved.get(k) != now.get(k) and (k in ("rbwa", "git") or k in saved)]
    return f"warning: resuming under another {', '.join(changed)}; the rest of this run may not match an " \
        "uninterrupted one" if changed else None
