"""Self-check of a tools/gpu_bundle bundle on the GPU host (install.sh RELEASE finish / check).

Run after `source /tmp/vllmXYZ/env.sh` with BUNDLE_RELEASE, BUNDLE_TORCH, BUNDLE_TRITON,
BUNDLE_CHECK_MODULES and BUNDLE_NOT_BUNDLED set (install.sh takes them from bundle.env).
Exit status 1 when a check failed. Without a GPU every CUDA step fails, but the versions,
imports, loaded libraries and requirement check are still shown.

`python3 self_check.py --requirements-only` runs just the requirement check (no torch).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import re
import sys

BAD: list[str] = []


def step(name, fn):
    try:
        r = fn()
        print(f"  {name}: ok{'' if r is None else ' (' + str(r) + ')'}", flush=True)
    except Exception as e:
        print(f"  {name}: FAILED: {type(e).__name__}: {e}", flush=True)
        BAD.append(name)


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def unmet_requirements(root: str, ignore: list[str]) -> list[str]:
    """Requirements of `root` and, transitively, of what it requires, that the distributions
    Python finds first on sys.path (the bundle's site/ before the host's) do not meet.
    Names matching an `ignore` regex (the requirements deliberately not bundled) are skipped.
    """
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version

    ignore_res = [re.compile(p) for p in ignore]
    out: list[str] = []
    seen: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    while todo:
        name, extras = todo.pop()
        if (canon(name), extras) in seen:
            continue
        seen.add((canon(name), extras))
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # reported by the parent that requires it
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": e}) for e in ("", *extras)
            ):
                continue
            n = canon(req.name)
            if any(p.fullmatch(n) for p in ignore_res):
                continue
            try:
                have = md.version(req.name)
            except md.PackageNotFoundError:
                out.append(f"{n}{req.specifier} (for {dist.metadata['Name']}): not installed")
                continue
            try:
                ok = req.specifier.contains(Version(have), prereleases=True)
            except InvalidVersion:
                ok = True
            if not ok:
                out.append(f"{n}{req.specifier} (for {dist.metadata['Name']}): found {have}")
            todo.append((req.name, frozenset(req.extras)))
    return sorted(set(out))


def check_requirements() -> None:
    ignore = os.environ.get("BUNDLE_NOT_BUNDLED", "").split()
    unmet = unmet_requirements("vllm", ignore)
    if unmet:
        print(f"  requirements of vllm not met ({len(unmet)}; warnings: vLLM may run anyway):")
        for u in unmet:
            print(f"    {u}")
    else:
        print("  requirements of vllm: all met (bundle over host)")


def main() -> int:
    if "--requirements-only" in sys.argv[1:]:
        check_requirements()
        return 0
    release = os.environ.get("BUNDLE_RELEASE", "?")
    want_torch = os.environ.get("BUNDLE_TORCH", "")
    want_triton = os.environ.get("BUNDLE_TRITON", "")
    modules = os.environ.get("BUNDLE_CHECK_MODULES", "").split()
    print(f"  bundle for vllm {release}: torch {want_torch}, triton {want_triton}")
    for d in (
        "vllm",
        "torch",
        "triton",
        "torchvision",
        "transformers",
        "tokenizers",
        "huggingface-hub",
        "pydantic",
        "xgrammar",
        "numpy",
    ):
        try:
            print(f"  {d:16s} {md.version(d)}")
        except Exception as e:
            print(f"  {d:16s} ? ({e})")

    import torch

    print(
        f"  torch {torch.__version__} from {os.path.dirname(torch.__file__)} "
        f"(CUDA {torch.version.cuda})"
    )
    if torch.__version__.split("+")[0] != want_torch:
        BAD.append("torch version")

    def cuda_available():
        if not torch.cuda.is_available():
            raise RuntimeError("torch.cuda.is_available() is False")
        return torch.cuda.get_device_name(0)

    def matmul():
        a = torch.randn(256, 256, device="cuda", dtype=torch.float16)
        c = a @ a
        torch.cuda.synchronize()
        return f"norm {c.float().norm().item():.1f}"

    def cudnn():
        c = torch._C._cudnn
        built, found = c.getCompileVersion(), c.getRuntimeVersion()
        return f"{torch.backends.cudnn.version()}; built against {built}, found {found}"

    step("torch.cuda.is_available()", cuda_available)
    step("fp16 matmul on cuda (cuBLAS)", matmul)
    step("cuDNN version", cudnn)
    step("NCCL version (as torch reports it)", lambda: torch.cuda.nccl.version())

    import triton

    print(f"  triton {triton.__version__} from {os.path.dirname(triton.__file__)}")
    if triton.__version__ != want_triton:
        BAD.append("triton version")

    def triton_kernel():
        import triton.language as tl

        @triton.jit
        def add(x, y, o, n, BLOCK: tl.constexpr):
            i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            m = i < n
            tl.store(o + i, tl.load(x + i, mask=m) + tl.load(y + i, mask=m), mask=m)

        x = torch.randn(1000, device="cuda")
        y = torch.randn(1000, device="cuda")
        o = torch.empty_like(x)
        add[(4,)](x, y, o, 1000, BLOCK=256)
        torch.cuda.synchronize()
        if not torch.allclose(o, x + y):
            raise RuntimeError("wrong result")

    step("triton kernel (compile + run)", triton_kernel)

    for m in modules:
        step(f"import {m}", lambda m=m: importlib.import_module(m) and None)

    def rms():
        x = torch.randn(4, 128, device="cuda", dtype=torch.bfloat16)
        r = torch.randn_like(x)
        w = torch.ones(128, device="cuda", dtype=torch.bfloat16)
        torch.ops._C.fused_add_rms_norm(x, r, w, 1e-6)
        torch.cuda.synchronize()

    step("torch.ops._C.fused_add_rms_norm", rms)

    import vllm

    print(f"  vllm {vllm.__version__} from {os.path.dirname(vllm.__file__)}")
    if vllm.__version__.split("+")[0] != release:
        BAD.append("vllm version")

    keys = (
        "libcudart",
        "libcublas",
        "libcudnn.so",
        "libnccl",
        "libcusparse",
        "libcurand",
        "libcufile",
        "libcufft",
        "libnvshmem_host",
        "libnvJitLink",
        "libnvrtc.so",
        "libcupti",
        "libtorch_cuda.so",
    )
    with open("/proc/self/maps") as f:
        libs = sorted({ln.split()[-1] for ln in f if ".so" in ln and any(k in ln for k in keys)})
    print("  CUDA libraries loaded (real paths):")
    for lib in libs:
        print("    " + os.path.realpath(lib))
    check_requirements()
    if BAD:
        print("  FAILED: " + ", ".join(BAD))
        return 1
    print("  all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
