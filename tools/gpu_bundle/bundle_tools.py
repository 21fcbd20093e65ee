#!/usr/bin/env python3
"""Helpers of tools/gpu_bundle/build.sh (run with the build's throwaway venv, which has
`packaging`; the tests run them with any Python that has it).

Subcommands:
  pins WHEEL NAME...                print "NAME VERSION" for each `NAME==VERSION` pin in the
                                    wheel's METADATA (e.g. torch's nvidia-* and triton pins)
  extract-vllm WHEEL SITE [--drop P] copy the vllm wheel's run-time files into SITE, minus the
                                    files (or folders, P ending in /) named by --drop
  resolve DEST ...                  download the wheel closure (see --help)
  unpack SITE WHEEL... [--drop G]   unzip wheels into SITE (like pip --target), minus files
                                    whose installed path matches a --drop glob
  split ARCHIVE OUTDIR ...          cut ARCHIVE into parts of at most --part-bytes and write
                                    OUTDIR/MANIFEST (sha256 of each part and of the whole)
"""

from __future__ import annotations

import argparse
import email.parser
import fnmatch
import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile

# --------------------------------------------------------------------------
# pins
# --------------------------------------------------------------------------


def wheel_metadata(path):
    z = zipfile.ZipFile(path)
    meta = next(
        n
        for n in z.namelist()
        if n.count("/") == 1 and n.split("/")[0].endswith(".dist-info") and n.endswith("/METADATA")
    )
    return email.parser.Parser().parsestr(z.read(meta).decode("utf-8", "replace"))


def exact_pins(path):
    """{canonical name: version} of the `NAME==VERSION` requirements in a wheel's METADATA."""
    out = {}
    for line in wheel_metadata(path).get_all("Requires-Dist") or []:
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*\(?==\s*([0-9][^,;)\s]*)", line)
        if m:
            out[canon(m.group(1))] = m.group(3)
    return out


def cmd_pins(a):
    pins = exact_pins(a.wheel)
    missing = [n for n in a.names if canon(n) not in pins]
    for n in a.names:
        if canon(n) in pins:
            print(canon(n), pins[canon(n)])
    if missing:
        wheel = os.path.basename(a.wheel)
        raise SystemExit(f"{wheel} pins no exact version of: {' '.join(missing)}")


# --------------------------------------------------------------------------
# extract-vllm
# --------------------------------------------------------------------------
DROP_SUFFIXES = (".md", ".jpg", ".pyi", "/README", "/.gitkeep")


def cmd_extract_vllm(a):
    drop = {d for d in a.drop if not d.endswith("/")}
    drop_dirs = tuple(d for d in a.drop if d.endswith("/"))
    z = zipfile.ZipFile(a.wheel)
    names = {i.filename for i in z.infolist()}
    unknown = sorted(d for d in drop if d not in names)
    unknown += sorted(d for d in drop_dirs if not any(n.startswith(d) for n in names))
    if unknown:  # a typo or a renamed file would silently ship what was meant to stay out
        raise SystemExit(f"extract-vllm: --drop names files the wheel does not have: {unknown}")
    kept, dropped, nbytes, dbytes = 0, 0, 0, 0
    dist_info = None

    def is_dropped(n):
        return (
            n in drop
            or n.startswith(drop_dirs)
            or (n.startswith("vllm/") and n.endswith(DROP_SUFFIXES))
        )

    for info in z.infolist():
        n = info.filename
        if n.endswith("/"):
            continue
        top = n.split("/", 1)[0]
        if top.endswith(".dist-info"):
            dist_info = top
        elif top != "vllm":
            raise SystemExit(f"unexpected top-level entry in wheel: {n}")
        if is_dropped(n):
            dropped += 1
            dbytes += info.file_size
            continue
        dst = os.path.join(a.site, n)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with z.open(info) as src, open(dst, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        mode = (info.external_attr >> 16) & 0o777
        os.chmod(dst, 0o755 if (mode & 0o111 or n.endswith(".so")) else 0o644)
        kept += 1
        nbytes += info.file_size
    if dist_info is None:
        raise SystemExit("extract-vllm: the wheel has no .dist-info")
    # RECORD: drop rows of files not shipped (the dist-info is only there so that
    # importlib.metadata.version("vllm") and vLLM's entry points work).
    rec = os.path.join(a.site, dist_info, "RECORD")
    with open(rec) as f:
        rows = [r for r in f.read().splitlines() if not is_dropped(r.split(",", 1)[0])]
    with open(rec, "w") as f:
        f.write("\n".join(rows) + "\n")
    with open(os.path.join(a.site, dist_info, "INSTALLER"), "w") as f:
        f.write("vllm-offline-bundle\n")
    print(
        f"extract-vllm: kept {kept} files ({nbytes / 2**20:.1f} MiB), dropped {dropped} "
        f"({dbytes / 2**20:.1f} MiB); {dist_info}"
    )


# --------------------------------------------------------------------------
# resolve: transitive closure of wheels by reading each wheel's METADATA
# --------------------------------------------------------------------------
def canon(name):
    return re.sub(r"[-_.]+", "-", name).lower()


TARGET_ENV = {
    "implementation_name": "cpython",
    "implementation_version": "3.12.3",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_system": "Linux",
    "platform_version": "",
    "python_full_version": "3.12.3",
    "python_version": "3.12",
    "sys_platform": "linux",
}


def read_host_versions(path):
    """{canonical name: version} from lines `name==version  # where the number comes from`."""
    out = {}
    if not path:
        return out
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name, sep, ver = line.partition("==")
            if not sep or not ver.strip():
                raise SystemExit(f"{path}: expected name==version, got {line!r}")
            out[canon(name.strip())] = ver.strip()
    return out


def cmd_resolve(a):
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import parse_wheel_filename
    from packaging.version import Version

    host = {canon(x) for x in a.host.split()}
    host_keep = {canon(x) for x in a.host_keep.split()}
    host_versions = read_host_versions(a.host_versions)
    skip_res = [re.compile(p) for p in a.skip_re.split()]
    keep_res = [re.compile(p) for p in a.keep_re.split()]
    os.makedirs(a.dest, exist_ok=True)

    specs, extras, why = {}, {}, {}
    host_reqs, skipped = [], []
    carried_for_host = {}  # name -> (host version, specs) host packages carried anyway
    kept_misfits = {}  # name -> (host version, specs) left to the host although they miss
    have = {}  # canon name -> (wheel path, Version)

    def scan_dest():
        have.clear()
        for f in os.listdir(a.dest):
            if f.endswith(".whl"):
                n, v, _, _ = parse_wheel_filename(f)
                if canon(n) in have:
                    raise SystemExit(f"two wheels for {n} in {a.dest}")
                have[canon(n)] = (os.path.join(a.dest, f), v)

    def add_req(req_str, parent, parent_extras=()):
        r = Requirement(req_str)
        if r.marker is not None:
            envs = [{**TARGET_ENV, "extra": e} for e in ("", *tuple(parent_extras))]
            if not any(r.marker.evaluate(env) for env in envs):
                return
        n = canon(r.name)
        if any(p.fullmatch(n) for p in skip_res) and not any(p.fullmatch(n) for p in keep_res):
            skipped.append((n, str(r.specifier), parent))
            return
        if n in host:
            hv = host_versions.get(n)
            if hv is None or r.specifier.contains(Version(hv), prereleases=True):
                host_reqs.append((n, str(r.specifier), parent))
                return
            if n in host_keep:  # shadowing it would break the host's own packages
                kept_misfits.setdefault(n, (hv, set()))[1].add(f"{r.specifier} [{parent}]")
                host_reqs.append((n, str(r.specifier), parent))
                return
            # the host's version is known and does not fit: carry one that does
            carried_for_host.setdefault(n, (hv, set()))[1].add(f"{r.specifier} [{parent}]")
        specs.setdefault(n, SpecifierSet())
        specs[n] &= r.specifier
        extras.setdefault(n, set()).update(r.extras)
        spec = str(r.specifier)
        why.setdefault(n, []).append(f"{parent}{f' ({spec})' if spec else ''}")

    for s in a.seed:
        add_req(s, "<seed>")
    for path in a.seed_from_wheel:
        md = wheel_metadata(path)
        for rs in md.get_all("Requires-Dist") or []:
            add_req(rs, md["Name"])

    # --isolated: ignore pip config files / PIP_* variables (a local find-links or
    # file:// index has no upload times and would defeat --uploaded-prior-to).
    pip = [
        sys.executable,
        "-m",
        "pip",
        "--isolated",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        a.dest,
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        "--abi",
        "cp312",
    ]
    for p in a.platform.split():
        pip += ["--platform", p]
    if a.index_url:
        pip += ["--index-url", a.index_url]
    if a.find_links:  # tests: a folder of wheels and no index at all
        pip += ["--no-index", "--find-links", a.find_links]
    latest = {canon(x) for x in a.latest.split()}

    def pip_for(name):
        if a.cutoff and name not in latest:
            return [*pip, "--uploaded-prior-to", a.cutoff]
        return pip

    def download(names):
        ok = True
        for group in (
            [n for n in names if pip_for(n) is pip],
            [n for n in names if pip_for(n) is not pip],
        ):
            if group and subprocess.call(pip_for(group[0]) + [f"{n}{specs[n]}" for n in group]):
                ok = False
        if ok:
            return
        for n in names:  # find the culprit
            if subprocess.call([*pip_for(n), f"{n}{specs[n]}"]) != 0:
                raise SystemExit(f"pip download failed for {n}{specs[n]} (needed by {why.get(n)})")

    processed = {}  # canon name -> (version, frozenset(extras)) whose metadata was read
    for _round in range(50):
        scan_dest()
        todo = []
        for n, sp in sorted(specs.items()):
            if n in have and sp.contains(have[n][1], prereleases=True):
                continue
            if n in have:  # existing wheel violates a newer constraint: replace it
                print(f"  resolve: {n} {have[n][1]} does not satisfy {sp}; re-downloading")
                os.remove(have[n][0])
            todo.append(n)
        if todo:
            print(f"  round {_round}: downloading {len(todo)}: {' '.join(todo)}", flush=True)
            download(todo)
            scan_dest()
        changed = False
        for n in sorted(specs):
            if n not in have:
                raise SystemExit(f"resolve: pip downloaded no wheel for {n}{specs[n]}")
            path, v = have[n]
            key = (v, frozenset(extras.get(n, ())))
            if processed.get(n) == key:
                continue
            processed[n] = key
            changed = True
            md = wheel_metadata(path)
            for rs in md.get_all("Requires-Dist") or []:
                add_req(rs, f"{n}=={v}", tuple(extras.get(n, ())))
        if not changed and not todo:
            break
    else:
        raise SystemExit("resolve: no fixed point after 50 rounds")

    scan_dest()
    for n in sorted(set(have) - set(specs)):  # leftovers of earlier runs
        os.remove(have[n][0])
    scan_dest()
    wheels_txt = a.wheels_txt or os.path.join(a.dest, "..", "wheels.txt")
    with open(wheels_txt, "w") as f:
        for n in sorted(have):
            f.write(f"{n}=={have[n][1]}  # {os.path.basename(have[n][0])}\n")
    print(f"resolve: cutoff {a.cutoff or 'none'} (exempt: {a.latest or '-'})")
    total = sum(os.path.getsize(p) for p, _ in have.values())
    print(f"resolve: {len(have)} wheels, {total / 2**20:.1f} MiB")
    for n in sorted(have):
        print(f"  {n}=={have[n][1]}   <- {'; '.join(sorted(set(why[n])))[:150]}")
    if carried_for_host:
        print("carried although the host has them (the host's version does not fit):")
        for n in sorted(carried_for_host):
            hv, needs = carried_for_host[n]
            print(f"  {n}: host {hv}, needs {', '.join(sorted(needs))[:160]}")
    if kept_misfits:
        print("WARNING: left to the host although its version misses a requirement (--host-keep):")
        for n in sorted(kept_misfits):
            hv, needs = kept_misfits[n]
            print(f"  {n}: host {hv}, needs {', '.join(sorted(needs))[:160]}")
    print("requirements left to the host's packages:")
    agg = {}
    for n, sp, parent in host_reqs:
        agg.setdefault(n, set()).add(f"{sp or '*'} [{parent}]")
    for n in sorted(agg):
        hv = host_versions.get(n)
        print(
            f"  {n} ({f'host {hv}' if hv else 'host version not known here'}): "
            f"{', '.join(sorted(agg[n]))[:200]}"
        )
    print("requirements deliberately not bundled:")
    agg = {}
    for n, _sp, parent in skipped:
        agg.setdefault(n, set()).add(parent)
    for n in sorted(agg):
        print(f"  {n}  <- {', '.join(sorted(agg[n]))[:150]}")


# --------------------------------------------------------------------------
# unpack: install a wheel into SITE by unzipping it (what pip --target does,
# minus scripts/headers/data and .pyc), dropping files that match --drop globs
# --------------------------------------------------------------------------
def cmd_unpack(a):
    total_kept = total_dropped = 0
    for w in a.wheel:
        z = zipfile.ZipFile(w)
        kept = dropped = 0
        nbytes = dbytes = 0
        for info in z.infolist():
            name = info.filename
            if name.endswith("/"):
                continue
            parts = name.split("/")
            if parts[0].endswith(".data"):
                if len(parts) > 2 and parts[1] in ("purelib", "platlib"):
                    parts = parts[2:]
                else:
                    continue  # scripts / headers / data: not needed at run time
            rel = "/".join(parts)
            if any(fnmatch.fnmatchcase(rel, g) for g in a.drop):
                dropped += 1
                dbytes += info.file_size
                continue
            dst = os.path.join(a.site, *parts)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with z.open(info) as s, open(dst, "wb") as d:
                shutil.copyfileobj(s, d, 1 << 20)
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(dst, 0o755 if (mode & 0o111 or ".so" in parts[-1]) else 0o644)
            kept += 1
            nbytes += info.file_size
        print(
            f"unpack: {os.path.basename(w)}: {kept} files ({nbytes / 2**20:.1f} MiB)"
            + (f", dropped {dropped} ({dbytes / 2**20:.1f} MiB)" if dropped else "")
        )
        total_kept += kept
        total_dropped += dropped
    if len(a.wheel) > 1:
        print(f"unpack: {len(a.wheel)} wheels, {total_kept} files, {total_dropped} dropped")


# --------------------------------------------------------------------------
# split: parts of at most --part-bytes and their MANIFEST (install.sh reads it)
# --------------------------------------------------------------------------
def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cmd_split(a):
    if a.part_bytes < 1:
        raise SystemExit("split: --part-bytes must be >= 1")
    os.makedirs(a.outdir, exist_ok=True)
    for f in os.listdir(a.outdir):  # parts of an earlier build would be taken for this one's
        if f.startswith("part-") or f == "MANIFEST":
            os.remove(os.path.join(a.outdir, f))
    whole = hashlib.sha256()
    parts = []
    with open(a.archive, "rb") as src:
        while True:
            block = src.read(a.part_bytes)
            if not block:
                break
            name = f"part-{len(parts):03d}"
            with open(os.path.join(a.outdir, name), "wb") as out:
                out.write(block)
            whole.update(block)
            parts.append((name, hashlib.sha256(block).hexdigest(), len(block)))
    if not parts:
        raise SystemExit(f"split: {a.archive} is empty")
    size = os.path.getsize(a.archive)
    lines = [f"# {a.title}" if a.title else "# offline bundle (tools/gpu_bundle)"]
    for kv in a.field:
        k, sep, v = kv.partition("=")
        if not sep or not k or " " in k:
            raise SystemExit(f"split: --field wants KEY=VALUE, got {kv!r}")
        lines.append(f"{k} {v}")
    lines += [
        f"archive {os.path.basename(a.archive)}",
        f"archive_sha256 {whole.hexdigest()}",
        f"archive_bytes {size}",
        f"parts {len(parts)}",
    ]
    lines += [f"part {n} {h} {b}" for n, h, b in parts]
    with open(os.path.join(a.outdir, "MANIFEST"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"split: {len(parts)} part(s) of at most {a.part_bytes} bytes, {size} bytes in all")


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pins")
    p.add_argument("wheel")
    p.add_argument("names", nargs="+")
    p.set_defaults(fn=cmd_pins)
    p = sub.add_parser("extract-vllm")
    p.add_argument("wheel")
    p.add_argument("site")
    p.add_argument(
        "--drop",
        action="append",
        default=[],
        help="path of a file in the wheel, or of a folder when it ends with / (repeatable)",
    )
    p.set_defaults(fn=cmd_extract_vllm)
    p = sub.add_parser("resolve")
    p.add_argument("dest")
    p.add_argument("--seed", action="append", default=[], help="requirement string")
    p.add_argument(
        "--seed-from-wheel", action="append", default=[], help="use a wheel's Requires-Dist"
    )
    p.add_argument("--host", default="", help="space separated names already on the target")
    p.add_argument(
        "--host-versions",
        default="",
        help="file of name==version lines: the host's versions where known; a host "
        "package whose known version misses a requirement is carried",
    )
    p.add_argument(
        "--host-keep",
        default="",
        help="space separated host packages never carried, even where their version "
        "misses a requirement (a warning says so)",
    )
    p.add_argument(
        "--skip-re", default="", help="space separated regexes (canonical names) never bundled"
    )
    p.add_argument("--keep-re", default="", help="exceptions to --skip-re")
    p.add_argument("--platform", required=True, help="space separated platform tags")
    p.add_argument("--cutoff", default="", help="pip --uploaded-prior-to value (empty: newest)")
    p.add_argument("--latest", default="", help="space separated names exempt from --cutoff")
    p.add_argument("--index-url", default="", help="package index (default: pip's, i.e. PyPI)")
    p.add_argument("--find-links", default="", help="a folder of wheels instead of any index")
    p.add_argument(
        "--wheels-txt", default="", help="where to list the result (default DEST/../wheels.txt)"
    )
    p.set_defaults(fn=cmd_resolve)
    p = sub.add_parser("unpack")
    p.add_argument("site")
    p.add_argument("wheel", nargs="+")
    p.add_argument(
        "--drop",
        action="append",
        default=[],
        help="fnmatch glob on the installed path (repeatable)",
    )
    p.set_defaults(fn=cmd_unpack)
    p = sub.add_parser("split")
    p.add_argument("archive")
    p.add_argument("outdir")
    p.add_argument("--part-bytes", type=int, default=60 * 1024 * 1024)
    p.add_argument("--title", default="")
    p.add_argument(
        "--field",
        action="append",
        default=[],
        help="KEY=VALUE line for the MANIFEST (repeatable), e.g. release=0.34.0",
    )
    p.set_defaults(fn=cmd_split)
    a = ap.parse_args(argv)
    a.fn(a)


if __name__ == "__main__":
    main()
