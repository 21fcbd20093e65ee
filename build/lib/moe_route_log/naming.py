"""Names: which file each logging process writes, and how the model is called.

One file per process, never shared.

Only tensor-parallel rank 0 of each (data-parallel, pipeline) rank writes, so a
run with one data-parallel and one pipeline rank writes exactly the path the
user gave. Otherwise every writing process adds its host and ranks:
``routes.jsonl`` -> ``routes.<host>.dp<d>-pp<p>.jsonl``. Data- and
pipeline-parallel ranks are global across nodes, so names are unique in a
multi-node run too, and the host tells where each file was written.

Pure Python: no torch, no vLLM.
"""

from __future__ import annotations

import os
import re


def rank_log_path(
    path: str, dp_rank: int, dp_size: int, pp_rank: int, pp_size: int, hostname: str
) -> str:
    """The log file of the process with these ranks, for ``VLLM_LOG_MOE=path``."""
    if dp_size == 1 and pp_size == 1:
        return path
    stem, suffix = os.path.splitext(path)
    host = re.sub(r"[^A-Za-z0-9-]+", "_", hostname) or "host"
    return f"{stem}.{host}.dp{dp_rank}-pp{pp_rank}{suffix}"


def part_path(path: str, part: int) -> str:
    """File ``part`` of a rotated log: ``routes.jsonl`` -> ``routes.p00003.jsonl``."""
    stem, suffix = os.path.splitext(path)
    return f"{stem}.p{part:05d}{suffix}"


def log_files(path: str) -> list[str]:
    """The files a process logging to ``path`` has on disk: ``path`` or its parts."""
    stem, suffix = os.path.splitext(path)
    pattern = re.compile(re.escape(os.path.basename(stem)) + r"\.p\d{5}" + re.escape(suffix) + "$")
    directory = os.path.dirname(path) or "."
    parts = sorted(
        os.path.join(directory, name) for name in os.listdir(directory) if pattern.match(name)
    )
    return parts or ([path] if os.path.exists(path) else [])


def model_display_name(model: str) -> str:
    """The model as people name it: a hub id as given, a local folder by its own name.

    ``Qwen/Qwen1.5-MoE-A2.7B-Chat`` stays; ``/tmp/x/tiny-moe`` and ``smoke-out/tiny-moe``
    (folders that exist here) become ``tiny-moe``.
    """
    path = os.path.expanduser(model.rstrip("/"))
    if os.path.isabs(path) or os.path.isdir(path) or model.startswith((".", "~")):
        return os.path.basename(path) or model
    return model
