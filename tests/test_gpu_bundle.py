"""The GPU bundle tools (tools/gpu_bundle) and bench/gpu_session.sh's choice of release, on CPU.

What needs no GPU is run for real on tiny stand-ins: the resolver on a folder of made-up
wheels (pip download from --find-links), the vllm-wheel extraction, part splitting and its
MANIFEST, install.sh stash/status/finish/check on parts cut from a tiny archive (with a made-up
host python whose nvidia/ folders get linked), and gpu_session.sh picking a release's env.sh
and installing this checkout as a plugin. The real bundles are checked on the GPU host by
install.sh's self-check.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools" / "gpu_bundle"
SHARED_BUILDER = REPO.parent / "shared" / "gpu" / "build_bundle.sh"


def run(cmd, *, env=None, cwd=REPO, check=True):
    full_env = {**os.environ, **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None: unset
    p = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def tools(*args, check=True):
    return run([sys.executable, str(TOOLS / "bundle_tools.py"), *args], check=check)


def make_wheel(folder: Path, name: str, version: str, requires=(), files=None) -> Path:
    """A py3-none-any wheel with the given Requires-Dist lines (and files)."""
    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    files = dict(files or {f"{name.replace('-', '_')}/__init__.py": ""})
    files[f"{dist}.dist-info/METADATA"] = "\n".join(meta) + "\n"
    files[f"{dist}.dist-info/WHEEL"] = (
        "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files[f"{dist}.dist-info/RECORD"] = "".join(f"{n},,\n" for n in files)
    with zipfile.ZipFile(path, "w") as z:
        for n, text in files.items():
            z.writestr(n, text)
    return path


# --------------------------------------------------------------------------- naming
@pytest.mark.parametrize(
    ("release", "dest"),
    [("0.34.0", "/tmp/vllm034"), ("0.15.1", "/tmp/vllm015"), ("1.2.3", "/tmp/vllm102")],
)
def test_each_release_gets_its_own_folder_on_the_host(release, dest):
    p = run(
        ["bash", "-c", f"source {TOOLS}/naming.sh; bundle_dest {release}; bundle_parts {release}"]
    )
    assert p.stdout.split() == [dest, f"/tmp/vllm-bundle-{release}/parts"]


def test_a_release_that_is_not_x_y_z_is_refused():
    p = run(["bash", "-c", f"source {TOOLS}/naming.sh; bundle_dest 0.34"], check=False)
    assert p.returncode == 2 and "not a vLLM release" in p.stderr


# --------------------------------------------------------------------------- release files
def release_vars(release: str) -> dict[str, str]:
    script = f'source {TOOLS}/releases/{release}.sh; for v in VLLM_VER TORCH_VER TRITON_VER \
        TORCHVISION_VER HOST_PKGS SKIP_RE CHECK_MODULES; do printf "%s=%s\\0" $v "${{!v}}"; done; \
        printf "VLLM_DROP=%s\\0" "${{VLLM_DROP[*]}}"; printf "SEEDS=%s\\0" "${{SEEDS[*]}}"'
    out = run(["bash", "-c", script]).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if item)


def test_the_0_15_1_release_keeps_the_shared_builders_pins_and_lists():
    if not SHARED_BUILDER.exists():
        pytest.skip(f"{SHARED_BUILDER} is not here")
    shared = SHARED_BUILDER.read_text()
    ours = release_vars("0.15.1")
    for var in ("TORCH_VER", "TRITON_VER", "TORCHVISION_VER"):
        assert re.search(rf"^{var}={re.escape(ours[var])}\b", shared, re.M), var
    for var in ("HOST_PKGS", "SKIP_RE"):
        m = re.search(rf"^{var}=(['\"])(.*?)\1", shared, re.M | re.S)
        assert m and m.group(2).split() == ours[var].split(), var
    assert (
        "--seed 'transformers>=4.57,<4.58'" in shared
        and "transformers>=4.57,<4.58" in ours["SEEDS"]
    )
    for dropped in ours["VLLM_DROP"].split():
        assert dropped in (TOOLS.parent.parent.parent / "shared/gpu/bundle_tools.py").read_text()


def test_the_0_34_0_release_pins_torch_2_14_and_imports_vllms_stable_abi_modules():
    v = release_vars("0.34.0")
    assert (v["VLLM_VER"], v["TORCH_VER"], v["TRITON_VER"]) == ("0.34.0", "2.14.0", "3.8.0")
    assert "vllm._C_stable_libtorch" in v["CHECK_MODULES"].split()
    # FA3 stays (Hopper's attention), FA2 goes
    assert "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so" in v["VLLM_DROP"].split()
    assert not any("fa3" in d for d in v["VLLM_DROP"].split())


# --------------------------------------------------------------------------- split
def test_split_cuts_parts_no_larger_than_asked_and_the_manifest_hashes_them(tmp_path):
    data = os.urandom(1000)
    archive = tmp_path / "x-bundle.tar.xz"
    archive.write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-009").write_text("left over from an earlier build")
    tools("split", str(archive), str(out), "--part-bytes", "300", "--field", "release=0.34.0")
    parts = sorted(p.name for p in out.glob("part-*"))
    assert parts == ["part-000", "part-001", "part-002", "part-003"]
    assert b"".join((out / p).read_bytes() for p in parts) == data
    manifest = (out / "MANIFEST").read_text().splitlines()
    fields = {ln.split()[0]: ln.split()[1:] for ln in manifest if not ln.startswith(("#", "part "))}
    assert fields["release"] == ["0.34.0"] and fields["parts"] == ["4"]
    assert fields["archive_sha256"] == [hashlib.sha256(data).hexdigest()]
    assert fields["archive_bytes"] == ["1000"] and fields["archive"] == ["x-bundle.tar.xz"]
    rows = [ln.split() for ln in manifest if ln.startswith("part ")]
    assert [r[1] for r in rows] == parts
    for _, name, sha, size in rows:
        body = (out / name).read_bytes()
        assert (hashlib.sha256(body).hexdigest(), len(body)) == (sha, int(size))
        assert len(body) <= 300


# --------------------------------------------------------------------------- extract-vllm
def test_extract_vllm_leaves_out_the_named_files_and_folders_and_their_record_rows(tmp_path):
    files = {
        "vllm/__init__.py": "__version__ = '0.34.0'\n",
        "vllm/_C.abi3.so": "elf",
        "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so": "fa2",
        "vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so": "fa3",
        "vllm/third_party/deep_gemm/a.py": "",
        "vllm/third_party/deep_gemm/include/b.h": "",
        "vllm/README.md": "docs",
    }
    wheel = make_wheel(tmp_path, "vllm", "0.34.0", files=files)
    site = tmp_path / "site"
    tools(
        "extract-vllm",
        str(wheel),
        str(site),
        "--drop",
        "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so",
        "--drop",
        "vllm/third_party/deep_gemm/",
    )
    kept = sorted(str(p.relative_to(site)) for p in site.rglob("*") if p.is_file())
    assert "vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so" in kept and "vllm/_C.abi3.so" in kept
    assert not [k for k in kept if "fa2" in k or "deep_gemm" in k or k.endswith(".md")]
    record = (site / "vllm-0.34.0.dist-info/RECORD").read_text()
    assert "fa2" not in record and "deep_gemm" not in record and "_vllm_fa3_C" in record
    assert os.access(site / "vllm/_C.abi3.so", os.X_OK)


def test_extract_vllm_refuses_a_drop_that_names_nothing_in_the_wheel(tmp_path):
    wheel = make_wheel(tmp_path, "vllm", "0.34.0", files={"vllm/__init__.py": ""})
    p = tools(
        "extract-vllm", str(wheel), str(tmp_path / "site"), "--drop", "vllm/_gone.so", check=False
    )
    assert p.returncode != 0 and "vllm/_gone.so" in p.stderr


# --------------------------------------------------------------------------- resolve
def test_resolve_follows_requirements_carries_misfit_host_packages_and_skips_the_rest(tmp_path):
    pytest.importorskip("packaging")
    index = tmp_path / "index"
    index.mkdir()
    root = make_wheel(
        tmp_path,
        "rootpkg",
        "1.0",
        requires=[
            "alpha>=1",
            "beta[fast]",
            "oldhost>=2",  # the host has 1.0: carried
            "keephost>=3",  # the host has 1.0 but it is kept: a warning, not carried
            "goodhost>=1",  # the host's 1.5 fits: left to it
            "skipme",  # --skip-re
            'py39only; python_version < "3.10"',
            'opt; extra == "extra"',
        ],
    )
    make_wheel(index, "alpha", "1.0")
    make_wheel(index, "alpha", "2.0", requires=["gamma<2"])
    make_wheel(index, "gamma", "1.5")
    make_wheel(index, "gamma", "2.5")
    make_wheel(index, "beta", "1.0", requires=['delta; extra == "fast"', 'eps; extra == "slow"'])
    make_wheel(index, "delta", "1.0")
    make_wheel(index, "oldhost", "2.1")
    host_versions = tmp_path / "host-versions.txt"
    host_versions.write_text(
        "oldhost==1.0  # read there\nkeephost==1.0\ngoodhost==1.5  # estimate\n"
    )
    dest = tmp_path / "work" / "wheels"
    p = tools(
        "resolve",
        str(dest),
        "--seed-from-wheel",
        str(root),
        "--find-links",
        str(index),
        "--host",
        "oldhost keephost goodhost",
        "--host-versions",
        str(host_versions),
        "--host-keep",
        "keephost",
        "--skip-re",
        "skip.*",
        "--platform",
        "manylinux_2_28_x86_64",
    )
    listed = (tmp_path / "work" / "wheels.txt").read_text()
    got = sorted(ln.split("  #")[0] for ln in listed.splitlines())
    assert got == ["alpha==2.0", "beta==1.0", "delta==1.0", "gamma==1.5", "oldhost==2.1"]
    assert sorted(f.name.split("-")[0] for f in dest.glob("*.whl")) == [
        "alpha",
        "beta",
        "delta",
        "gamma",
        "oldhost",
    ]
    out = p.stdout
    assert "oldhost: host 1.0, needs >=2" in out
    assert re.search(r"WARNING: left to the host.*\n  keephost: host 1.0, needs >=3", out)
    assert "goodhost (host 1.5): >=1" in out
    assert re.search(r"not bundled:\n  skipme", out)


# --------------------------------------------------------------------------- install.sh
def tiny_bundle(
    tmp_path: Path, release: str = "0.34.0", part_bytes: int = 700, legacy: bool = False
) -> Path:
    """Parts of a tiny bundle as build.sh lays it out: a fake torch, a carried nccl lib,
    host links to make, bundle.env, env-extra.sh."""
    stage = {
        "site/torch/__init__.py": "__version__ = '2.14.0+cu130'\n",
        "site/nvidia/nccl/lib/libnccl.so.2": "carried",
        "host-links.txt": "# comment\ncu13 dir cu13\ncusparse files cu13/lib/libcusparse.so.12\n",
        "bundle.env": f"BUNDLE_RELEASE={release}\nBUNDLE_TORCH=2.14.0\nBUNDLE_TRITON=3.8.0\n"
        "BUNDLE_CHECK_MODULES=vllm._C\nBUNDLE_NOT_BUNDLED=numba\n",
        "env-extra.sh": "export PYTORCH_SKIP_CUDNN_COMPATIBILITY_CHECK=1\n",
        "filler.bin": os.urandom(3000).hex(),  # random: xz cannot shrink it below a few parts
    }
    if legacy:  # as ../shared/gpu/build_bundle.sh made them: no bundle.env, no release line
        del stage["bundle.env"], stage["env-extra.sh"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, text in stage.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = tmp_path / f"vllm{release.replace('.', '')[:3]}-bundle.tar.xz"
    archive.write_bytes(buf.getvalue())
    out = tmp_path / "parts-out"
    fields = [] if legacy else ["--field", f"release={release}"]
    tools("split", str(archive), str(out), "--part-bytes", str(part_bytes), *fields)
    return out


@pytest.fixture
def host(tmp_path):
    """A made-up host python: python3 whose sys.path has a site-packages with nvidia/cu13."""
    site = tmp_path / "host-site"
    lib = site / "nvidia" / "cu13" / "lib"
    lib.mkdir(parents=True)
    (lib / "libcusparse.so.12").write_text("host")
    wrapper = tmp_path / "host-python3"
    wrapper.write_text(
        f'#!/bin/sh\nPYTHONPATH="{site}${{PYTHONPATH:+:$PYTHONPATH}}" exec {sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    return {"python": str(wrapper), "site": site}


def install(release, *args, env, check=True):
    return run(["bash", str(TOOLS / "install.sh"), release, *args], env=env, check=check)


def test_install_stashes_parts_one_call_at_a_time_and_says_what_is_missing_or_damaged(
    tmp_path, host
):
    out = tiny_bundle(tmp_path)
    parts = sorted(p.name for p in out.glob("part-*"))
    assert len(parts) >= 3
    env = {
        "BUNDLE_ROOT": str(tmp_path / "host-tmp"),
        "DEST": str(tmp_path / "vllm034"),
        "PYTHON": host["python"],
    }
    stashed = tmp_path / "host-tmp" / "vllm-bundle-0.34.0" / "parts"
    # the first call brings MANIFEST and part-000, as .bundle-00 does
    first = tmp_path / ".bundle-00"
    first.mkdir()
    for name in ("MANIFEST", parts[0]):
        (out / name).rename(first / name)
    p = install("0.34.0", "stash", str(first), env=env)
    assert f"stashed {parts[0]}" in p.stdout and not list(first.iterdir())
    assert f"1 of {len(parts)} part(s) present and verified" in p.stdout
    assert "missing: " + " ".join(parts[1:]) in p.stdout
    # a part damaged on the way is named, to be sent again
    bad = tmp_path / ".bundle-01"
    bad.mkdir()
    (bad / parts[1]).write_bytes(b"x" + (out / parts[1]).read_bytes()[1:])
    p = install("0.34.0", "stash", str(bad), env=env)
    assert f"damaged (send again): {parts[1]}" in p.stdout
    p = install("0.34.0", "finish", env=env, check=False)
    assert p.returncode != 0 and "missing or damaged" in p.stderr
    for i, name in enumerate(parts[1:], 1):
        d = tmp_path / f".bundle-{i:02d}"
        d.mkdir(exist_ok=True)
        (out / name).rename(d / name)
        install("0.34.0", "stash", str(d), env=env)
    p = install("0.34.0", "status", env=env)
    assert f"{len(parts)} of {len(parts)} part(s) present and verified" in p.stdout
    assert "complete: run 'install.sh 0.34.0 finish'" in p.stdout
    assert sorted(f.name for f in stashed.iterdir()) == sorted(["MANIFEST", *parts])


def test_install_refuses_a_manifest_of_another_release(tmp_path, host):
    out = tiny_bundle(tmp_path, release="0.15.1")
    env = {"BUNDLE_ROOT": str(tmp_path / "host-tmp"), "PYTHON": host["python"]}
    p = install("0.34.0", "stash", str(out), env=env, check=False)
    assert p.returncode != 0 and "is for vllm '0.15.1', not 0.34.0" in p.stderr


def test_install_finish_unpacks_links_the_hosts_libraries_and_writes_an_env_that_shadows_the_host(
    tmp_path, host
):
    out = tiny_bundle(tmp_path)
    dest = tmp_path / "vllm034"
    env = {"BUNDLE_ROOT": str(tmp_path / "host-tmp"), "DEST": str(dest), "PYTHON": host["python"]}
    install("0.34.0", "stash", str(out), env=env)
    p = install("0.34.0", "finish", env=env)
    assert "checking the whole archive (sha256)" in p.stdout
    cu13 = dest / "site/nvidia/cu13"
    assert cu13.is_symlink() and cu13.resolve() == (host["site"] / "nvidia/cu13").resolve()
    lib = dest / "site/nvidia/cusparse/lib/libcusparse.so.12"
    assert lib.is_symlink() and lib.read_text() == "host"
    env_sh = (dest / "env.sh").read_text()
    assert f'PYTHONPATH="{dest}/site' in env_sh
    # the carried library's folder goes on LD_LIBRARY_PATH; folders of links to the host do not
    ld = re.search(r'LD_LIBRARY_PATH="([^$"]*)', env_sh).group(1).split(":")
    assert ld == [f"{dest}/site/nvidia/nccl/lib"]
    assert (
        "PYTORCH_SKIP_CUDNN_COMPATIBILITY_CHECK=1" in env_sh
        and "VLLM_BUNDLE_RELEASE=0.34.0" in env_sh
    )
    # the made-up torch shadows the test environment's own: the self-check got this far and
    # failed (no GPU, no real torch), which finish reports without failing
    assert "self-check (needs the GPU)" in p.stdout and "WARNING: self-check FAILED" in p.stdout
    q = run(
        [
            "bash",
            "-c",
            f"source {dest}/env.sh && cd /tmp && {sys.executable} -c "
            "'import torch; print(torch.__version__, torch.__file__)'",
        ]
    )
    assert q.stdout.split()[0] == "2.14.0+cu130" and q.stdout.split()[1].startswith(str(dest))
    # check runs the self-check again and, unlike finish, fails with it
    c = install("0.34.0", "check", env=env, check=False)
    assert c.returncode != 0 and "bundle for vllm 0.34.0: torch 2.14.0, triton 3.8.0" in c.stdout


def test_install_takes_the_shared_builders_0_15_1_parts_too(tmp_path, host):
    out = tiny_bundle(tmp_path, release="0.15.1", legacy=True)
    assert "release" not in (out / "MANIFEST").read_text().split()
    dest = tmp_path / "vllm015"
    env = {"BUNDLE_ROOT": str(tmp_path / "host-tmp"), "DEST": str(dest), "PYTHON": host["python"]}
    p = install("0.34.0", "stash", str(out), env=env, check=False)
    assert p.returncode != 0 and "is for vllm '0.15.1', not 0.34.0" in p.stderr
    install("0.15.1", "stash", str(out), env=env)
    p = install("0.15.1", "finish", env=env)
    bundle_env = (dest / "bundle.env").read_text()
    assert "BUNDLE_TORCH=2.9.1" in bundle_env and "BUNDLE_TRITON=3.5.1" in bundle_env
    assert "vllm._moe_C " in bundle_env and "bundle for vllm 0.15.1: torch 2.9.1" in p.stdout
    assert "VLLM_BUNDLE_RELEASE=0.15.1" in (dest / "env.sh").read_text()


# --------------------------------------------------------------------------- self_check.py
def test_the_requirement_walk_reports_what_the_first_found_versions_miss(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    for name, version, requires in [
        (
            "vllm",
            "0.34.0",
            ["alpha>=2", "beta", "numba==0.65.0", "gone", 'win; sys_platform == "win32"'],
        ),
        ("alpha", "1.0", []),
        ("beta", "1.0", ["alpha<3", 'gamma; extra == "x"']),
    ]:
        di = site / f"{name}-{version}.dist-info"
        di.mkdir()
        (di / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            + "".join(f"Requires-Dist: {r}\n" for r in requires)
        )
    p = run(
        [sys.executable, str(TOOLS / "self_check.py"), "--requirements-only"],
        env={"PYTHONPATH": str(site), "BUNDLE_NOT_BUNDLED": "numba torch.*"},
        cwd=tmp_path,
    )
    lines = [ln.strip() for ln in p.stdout.splitlines()]
    assert "alpha>=2 (for vllm): found 1.0" in lines
    assert "gone (for vllm): not installed" in lines
    assert not [ln for ln in lines if "numba" in ln or "win" in ln or "gamma" in ln]
    assert "requirements of vllm not met (2; warnings: vLLM may run anyway):" in lines


# --------------------------------------------------------------------------- gpu_session.sh
def fake_bundle(tmp_path: Path, release: str) -> Path:
    """A bundle folder whose env.sh puts a made-up vllm of that release first."""
    dest = tmp_path / f"bundle-{release}"
    (dest / "site" / "vllm").mkdir(parents=True)
    (dest / "site" / "vllm" / "__init__.py").write_text(f"__version__ = '{release}'\n")
    (dest / "env.sh").write_text(f'export PYTHONPATH="{dest}/site${{PYTHONPATH:+:$PYTHONPATH}}"\n')
    return dest


def session(*args, env, check=True):
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    return run(["bash", "bench/gpu_session.sh", *args], env={"PATH": path, **env}, check=check)


@pytest.mark.parametrize("release", ["0.15.1", "0.34.0"])
def test_gpu_session_runs_each_step_on_the_chosen_releases_bundle(tmp_path, release):
    dest = fake_bundle(tmp_path, release)
    plugin = tmp_path / "plugin"
    p = session(
        "env", env={"RELEASE": release, "BUNDLE_DEST": str(dest), "PLUGIN_DIR": str(plugin)}
    )
    assert f"release {release}: {dest}/env.sh" in p.stdout
    assert f"vllm {release} from {dest}/site/vllm/__init__.py" in p.stdout
    pythonpath = re.search(r"^PYTHONPATH=(.*)$", p.stdout, re.M).group(1).split(":")
    if release == "0.15.1":  # patched in place: no plugin folder on the path
        assert pythonpath[:2] == ["/tmp/site", f"{dest}/site"] and str(plugin) not in pythonpath
    else:
        assert pythonpath[:3] == [str(plugin), "/tmp/site", f"{dest}/site"]


def test_gpu_session_defaults_to_0_15_1_and_says_to_run_setup_when_its_bundle_is_missing(tmp_path):
    missing = str(tmp_path / "nothing")
    p = session("env", env={"RELEASE": None, "BUNDLE_DEST": missing}, check=False)
    assert p.returncode == 1
    assert f"no {missing}/env.sh: run 'RELEASE=0.15.1 bash bench/gpu_session.sh setup'" in p.stderr
    p = session("env", env={"RELEASE": "0.34.0", "BUNDLE_DEST": missing}, check=False)
    assert p.returncode == 1 and "'RELEASE=0.34.0 bash bench/gpu_session.sh setup'" in p.stderr
    p = session("env", env={"RELEASE": "0.33.0", "BUNDLE_DEST": missing}, check=False)
    assert p.returncode == 2 and "RELEASE must be 0.15.1 or 0.34.0, not '0.33.0'" in p.stderr


def test_gpu_session_installs_this_checkout_as_a_plugin_without_network_or_build_leftovers(
    tmp_path,
):
    pytest.importorskip("setuptools")
    import tomllib

    dest = fake_bundle(tmp_path, "0.34.0")
    plugin = tmp_path / "plugin"
    before = set(os.listdir(REPO))
    p = session(
        "plugin",
        env={
            "RELEASE": "0.34.0",
            "BUNDLE_DEST": str(dest),
            "PLUGIN_DIR": str(plugin),
            "PIP_NO_INDEX": "1",
        },
    )
    assert set(os.listdir(REPO)) == before  # no build/ or *.egg-info in the checkout
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    dist = f"vllm_moe_expert_profiler-{project['version']}.dist-info"
    assert (plugin / dist / "METADATA").exists() and (plugin / "moe_route_log").is_dir()
    declared = project.get("entry-points", {}).get("vllm.general_plugins", {})
    line = re.search(r"^vllm.general_plugins entry points of this project: (.*)$", p.stdout, re.M)
    assert line, p.stdout
    if declared:
        assert line.group(1) == ", ".join(f"{k} = {v}" for k, v in declared.items())
    else:
        assert line.group(1) == "none" and "WARNING: this checkout registers no" in p.stdout
    p = session("plugin", env={"RELEASE": "0.15.1", "BUNDLE_DEST": str(dest)}, check=False)
    assert p.returncode == 2 and "0.15.1 is patched" in p.stderr


# --------------------------------------------------------------------------- lay_parts.sh
def test_lay_parts_puts_each_part_in_its_own_ignored_folder_and_prints_the_calls(tmp_path):
    out = tiny_bundle(tmp_path)
    parts = sorted(p.name for p in out.glob("part-*"))
    tree = tmp_path / "checkout"
    tree.mkdir()
    run(["git", "init", "-q"], cwd=tree)
    (tree / ".gitignore").write_text((REPO / ".gitignore").read_text())
    (tree / ".bundle-07").mkdir()  # a folder of an earlier, longer bundle
    p = run(
        ["bash", str(TOOLS / "lay_parts.sh"), "0.34.0", str(out)], env={"BUNDLE_TREE": str(tree)}
    )
    folders = sorted(d.name for d in tree.glob(".bundle-*"))
    assert folders == [f".bundle-{i:02d}" for i in range(len(parts))]
    assert sorted(f.name for f in (tree / ".bundle-00").iterdir()) == ["MANIFEST", "part-000"]
    for i, name in enumerate(parts):
        laid = tree / f".bundle-{i:02d}" / name
        assert laid.read_bytes() == (out / name).read_bytes()
        stash = f'carry [".bundle-{i:02d}"]  bash tools/gpu_bundle/install.sh 0.34.0 stash'
        assert stash in p.stdout
    assert "RELEASE=0.34.0 bash bench/gpu_session.sh setup" in p.stdout.splitlines()[-1]
    assert run(["git", "status", "--porcelain"], cwd=tree).stdout.strip() == "?? .gitignore"
    p = run(
        ["bash", str(TOOLS / "lay_parts.sh"), "0.15.1", str(out)],
        env={"BUNDLE_TREE": str(tree)},
        check=False,
    )
    assert p.returncode == 1 and "is for vllm '0.34.0', not 0.15.1" in p.stderr
    run(["bash", str(TOOLS / "lay_parts.sh"), "--clean"], env={"BUNDLE_TREE": str(tree)})
    assert not list(tree.glob(".bundle-*"))
