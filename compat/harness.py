#!/usr/bin/env python3
"""The compatibility harness: drivers' own public test suites, directly and through Sluice.

Run it with compat/run.sh, which installs what it needs first; see compat/README.md.

For every suite (suites.toml) and server it runs the suite twice, each time against a fresh
sandbox server started by sluice-compat-env (compat/env.rs): once directly, once through the
real sluice binary. A test that passes directly but not through Sluice is a difference. Each
difference must be listed, with its cause, in known-differences.toml; one that is not is run
again through Sluice, and if it fails again the harness exits 1. Listed tests that now pass
are reported so the list can shrink.
"""

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = Path(os.environ.get("SLUICE_CACHE") or Path.home() / ".cache/sluice") / "compat"
SERVERS = ("mariadb", "mysql9")
SERVER_NAMES = {"mariadb": "MariaDB 10.11", "mysql9": "MySQL 9"}
# More new differences than this in one suite means something broke wholesale: no re-run.
MAX_RERUN = 60
# How often an unlisted difference is run again (directly and through Sluice) before it counts.
RERUNS = 2
# sluice-compat-env's own failure (as env(1)): the command never ran.
ENV_FAILED = 125
# Every run happens in a network namespace of its own with only the loopback interface up:
# some suites connect to outside addresses on purpose (MariaDB Connector/Python's connect
# timeout test dials 8.8.8.8, Connector/Python probes LDAP hosts, mysql_async dials
# 255.255.255.255); there they fail at once with "Network is unreachable", directly and
# through Sluice alike, and nothing leaves the machine.
LOOPBACK_ONLY = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def log(msg):
    print(f"compat: {msg}", flush=True)


class HarnessError(Exception):
    pass


def run_logged(cmd, logfile, env=None, cwd=None):
    """Runs cmd with its output in logfile; on failure raises with the log's tail."""
    with open(logfile, "w") as out:
        rc = subprocess.run(
            [str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, cwd=cwd,
        ).returncode
    if rc != 0:
        tail = "".join(Path(logfile).read_text(errors="replace").splitlines(True)[-25:])
        raise HarnessError(f"{' '.join(map(str, cmd[:6]))} ... failed ({rc}):\n{tail}")


# ----------------------------------------------------------------------------------------
# Installing the suites: pinned, downloaded once into the cache.


def canonical(name):
    return re.sub(r"[-_.]+", "_", name).lower()


def ensure_venv():
    """The harness's virtualenv with requirements.txt installed; its python."""
    venv = CACHE / "venv"
    python = venv / "bin/python"
    wanted = (HERE / "requirements.txt").read_text()
    stamp = venv / ".compat-requirements"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    log(f"installing the pinned Python packages into {venv}")
    if not python.exists():
        run_logged([sys.executable, "-m", "venv", venv], CACHE / "venv.log")
    run_logged(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-r", HERE / "requirements.txt"],
        CACHE / "pip.log",
    )
    stamp.write_text(wanted)
    return python


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_sdist(python, suite):
    """The unpacked source distribution of a suite (downloaded and checked once)."""
    name, version, sha = suite["sdist"], suite["version"], suite["sha256"]
    downloads = CACHE / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)

    def cached():
        for path in downloads.glob("*.tar.gz"):
            stem = path.name[: -len(".tar.gz")]
            base, _, ver = stem.rpartition("-")
            if canonical(base) == canonical(name) and ver == version:
                return path
        return None

    archive = cached()
    if archive is None:
        log(f"downloading the {name} {version} source distribution from PyPI")
        # Only this package is taken as source; its build tools come as wheels.
        run_logged(
            [python, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
             "--no-deps", "--no-binary", name, "-d", downloads, f"{name}=={version}"],
            CACHE / "download.log",
        )
        archive = cached()
        if archive is None:
            raise HarnessError(f"pip downloaded no {name} {version} sdist into {downloads}")
    actual = sha256_of(archive)
    if actual != sha:
        archive.unlink()
        raise HarnessError(
            f"{archive.name} has sha256 {actual}, suites.toml pins {sha}; removed it"
        )
    src = CACHE / "src" / archive.name[: -len(".tar.gz")]
    if not (src / ".compat-unpacked").exists():
        shutil.rmtree(src, ignore_errors=True)
        src.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            # The "data" filter (no links out, no device files) where this Python has it.
            if hasattr(tarfile, "data_filter"):
                tar.extractall(src.parent, filter="data")
            else:
                tar.extractall(src.parent)
        if not src.is_dir():
            raise HarnessError(f"{archive.name} did not unpack into {src}")
        (src / ".compat-unpacked").write_text(actual)
    return src, archive


def ensure_mariadb_module(python, archive, version):
    """MariaDB Connector/Python built from its sdist (against libmariadb-dev) into the venv."""
    probe = subprocess.run(
        [python, "-c", "import mariadb; print(mariadb.__version__)"],
        capture_output=True, text=True,
    )
    if probe.returncode == 0 and probe.stdout.strip() == version:
        return
    log(f"building MariaDB Connector/Python {version} from its sdist")
    run_logged(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         archive],
        CACHE / "mariadb-build.log",
    )


def locked_version(crate):
    """The version of `crate` in Sluice's Cargo.lock."""
    text = (ROOT / "Cargo.lock").read_text()
    versions = re.findall(
        r'\[\[package\]\]\nname = "' + re.escape(crate) + r'"\nversion = "([^"]+)"', text
    )
    if len(versions) != 1:
        raise HarnessError(f"Cargo.lock holds {len(versions)} versions of {crate}")
    return versions[0]


def ensure_crate_tests(name, version, features, outdir):
    """Builds the published crate's tests; writes 'NAME PATH' lines; returns (src, file)."""
    meta = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    packages = json.loads(meta.stdout)["packages"]
    manifest = next(
        (p["manifest_path"] for p in packages if p["name"] == name and p["version"] == version),
        None,
    )
    if manifest is None:
        raise HarnessError(f"cargo metadata lists no {name} {version}")
    src = CACHE / "src" / f"{name}-{version}"
    if not (src / ".compat-copied").exists():
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(Path(manifest).parent, src)
        (src / ".compat-copied").write_text(manifest)
    env = dict(os.environ, CARGO_TARGET_DIR=str(CACHE / "target"),
               CARGO_PROFILE_DEV_DEBUG="0", CARGO_PROFILE_TEST_DEBUG="0")
    log(f"building {name} {version}'s tests (cached; the first build takes a few minutes)")
    cmd = ["cargo", "test", "--no-run", "--locked", "--message-format=json-render-diagnostics"]
    if features:
        cmd += ["--features", features]
    build_log = outdir / f"{name}-build.log"
    with open(build_log, "w") as err:
        built = subprocess.run(cmd, cwd=src, env=env, stdout=subprocess.PIPE, stderr=err,
                               stdin=subprocess.DEVNULL, text=True)
    if built.returncode != 0:
        tail = "".join(build_log.read_text(errors="replace").splitlines(True)[-30:])
        raise HarnessError(f"building {name}'s tests failed:\n{tail}")
    lines = []
    for line in built.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg["profile"]["test"]:
            continue
        target = msg["target"]
        label = "lib" if "lib" in target["kind"] else target["name"]
        lines.append(f"{label} {msg['executable']}")
    binaries = outdir / f"{name}-binaries.txt"
    binaries.write_text("\n".join(lines) + "\n")
    return src, binaries


# ----------------------------------------------------------------------------------------
# Running a suite and reading its results.


@dataclass
class Run:
    suite: str
    server: str
    via: str
    outdir: Path
    seconds: float = 0.0
    exit_code: int | None = None
    timed_out: bool = False
    # normalized test id -> "passed" | "failed" | "skipped"
    results: dict = field(default_factory=dict)
    # normalized test id -> the id the runner takes back in COMPAT_ONLY
    rerun_ids: dict = field(default_factory=dict)
    problem: str = ""

    def counts(self):
        values = list(self.results.values())
        return tuple(values.count(k) for k in ("passed", "failed", "skipped"))


# SQLAlchemy names test classes after the backend: "ComponentReflectionTest_mariadb+pymysql_10_11_19".
BACKEND_SUFFIX = re.compile(r"_(?:mysql|mariadb)\+\w+_[0-9_]+$")


def pytest_node(base, classname, name):
    """The pytest node id (relative to base, where the runner starts pytest) of a junit test
    case: the module's path, then its classes, then the test's name."""
    parts = classname.split(".")
    for start in range(len(parts)):
        for end in range(len(parts), start, -1):
            path = "/".join(parts[start:end]) + ".py"
            if (base / path).exists():
                return "::".join([path, *parts[end:], name])
    return f"{classname}::{name}"


def parse_junit(run, base):
    path = run.outdir / "junit.xml"
    if not path.exists():
        return
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        run.problem = f"junit.xml is unreadable: {e}"
        return
    for case in tree.iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        tags = {child.tag for child in case}
        if tags & {"failure", "error"}:
            outcome = "failed"
        elif "skipped" in tags:
            outcome = "skipped"
        else:
            outcome = "passed"
        parts = [BACKEND_SUFFIX.sub("", p) for p in classname.split(".")]
        test_id = ".".join(parts) + "::" + name
        # A test with an error in teardown appears twice: the failure wins.
        if run.results.get(test_id) != "failed":
            run.results[test_id] = outcome
        run.rerun_ids[test_id] = pytest_node(base, classname, name)


LIBTEST_LINE = re.compile(r"^test (\S+)(?: - should panic)? \.\.\. (ok|FAILED|ignored)\b")


def parse_libtest(run):
    for path in sorted(run.outdir.glob("libtest-*.log")):
        label = path.name[len("libtest-"):-len(".log")]
        for line in path.read_text(errors="replace").splitlines():
            m = LIBTEST_LINE.match(line)
            if not m:
                continue
            name = m.group(1)
            test_id = name if label == "lib" else f"tests/{label}::{name}"
            run.results[test_id] = {"ok": "passed", "FAILED": "failed"}.get(m.group(2), "skipped")
            run.rerun_ids[test_id] = test_id


def parse_json(run):
    path = run.outdir / "results.json"
    if not path.exists():
        return
    for test_id, outcome in json.loads(path.read_text()).items():
        run.results[test_id] = outcome
        run.rerun_ids[test_id] = test_id


def run_suite(ctx, name, server, via, scope, outdir, only=None):
    suite = ctx.suites[name]
    outdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        COMPAT_SCOPE=scope,
        COMPAT_OUT=str(outdir),
        COMPAT_SRC=str(ctx.src[name]),
        COMPAT_PYTHON=str(ctx.python),
    )
    if name in ctx.binaries:
        env["COMPAT_BINARIES"] = str(ctx.binaries[name])
    env.update({k: str(v) for k, v in suite.get("env", {}).items()})
    env.pop("COMPAT_ONLY", None)
    if only:
        only_file = outdir / "only.txt"
        only_file.write_text("\n".join(only) + "\n")
        env["COMPAT_ONLY"] = str(only_file)
    cmd = [ctx.env_binary, "--server", server, "--via", via]
    if suite.get("setup_sql"):
        cmd += ["--setup-sql", HERE / suite["setup_sql"]]
    if via == "sluice":
        cmd += ["--sluice-log", outdir / "sluice.log"]
    cmd = LOOPBACK_ONLY + cmd + ["--", HERE / suite["runner"]]
    timeout = suite["timeout"] if scope == "full" else suite["subset_timeout"]
    run = Run(name, server, via, outdir)
    started = time.monotonic()
    with open(outdir / "output.log", "w") as out:
        child = subprocess.Popen(
            [str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, cwd=ROOT, start_new_session=True,
        )
        try:
            run.exit_code = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            run.timed_out = True
            # The whole group: the wrapper, the suite and the servers they started.
            for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
                try:
                    os.killpg(child.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    child.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            run.problem = f"stopped after its {timeout} s limit"
    run.seconds = time.monotonic() - started
    kind = suite["results"]
    if kind == "junit":
        parse_junit(run, ctx.src[name] / suite.get("pytest_dir", ""))
    elif kind == "libtest":
        parse_libtest(run)
    else:
        parse_json(run)
    if run.exit_code == ENV_FAILED and not run.results:
        text = (outdir / "output.log").read_text(errors="replace")
        lines = [l for l in text.splitlines() if "sluice-compat-env" in l]
        run.problem = (lines[-1] if lines else "sluice-compat-env failed") + \
            f" (see {outdir / 'output.log'})"
    elif not run.results and not run.problem:
        run.problem = f"the suite reported no tests (exit {run.exit_code}; see " \
            f"{outdir / 'output.log'})"
    return run


# ----------------------------------------------------------------------------------------
# Known differences.


def check_loopback_only():
    """Fails unless runs can be put in a loopback-only network namespace (needs root)."""
    probe = subprocess.run(
        LOOPBACK_ONLY + ["ip", "-o", "link"], capture_output=True, text=True
    )
    links = [l.split(":")[1].strip() for l in probe.stdout.splitlines() if ":" in l]
    if probe.returncode != 0 or links != ["lo"]:
        raise HarnessError(
            "cannot run suites in a loopback-only network namespace (unshare --net, as "
            f"root): {probe.stderr.strip() or links}; the suites are not run without one"
        )


def load_known(suites):
    data = tomllib.loads((HERE / "known-differences.toml").read_text())
    causes = data.get("causes", {})
    known = {}
    flaky = set()
    for entry in data.get("flaky", []):
        if entry["suite"] not in suites or not entry.get("reason"):
            raise HarnessError(f"known-differences.toml: bad [[flaky]] entry {entry}")
        for server in entry.get("servers", SERVERS):
            flaky.update((entry["suite"], server, test) for test in entry["tests"])
    for entry in data.get("known", []):
        cause, suite = entry["cause"], entry["suite"]
        if cause not in causes:
            raise HarnessError(f"known-differences.toml: unknown cause {cause!r}")
        if suite not in suites:
            raise HarnessError(f"known-differences.toml: unknown suite {suite!r}")
        for server in entry.get("servers", SERVERS):
            for test in entry["tests"]:
                known[(suite, server, test)] = cause
    return causes, known, flaky


# ----------------------------------------------------------------------------------------
# Comparing and reporting.


@dataclass
class Outcome:
    suite: str
    server: str
    direct: Run
    sluice: Run
    known: dict = field(default_factory=dict)     # test -> cause
    new: dict = field(default_factory=dict)       # test -> what happened through Sluice
    flaky: list = field(default_factory=list)
    fixed: list = field(default_factory=list)     # listed, but passes through Sluice now


def compare(ctx, name, server, direct, sluice, scope):
    out = Outcome(name, server, direct, sluice)
    # A variant shares its base suite's tests, and so its list of known differences.
    listed = ctx.suites[name].get("known_as", name)
    for test, outcome in sorted(direct.results.items()):
        if outcome != "passed":
            continue
        through = sluice.results.get(test, "not run")
        cause = ctx.known.get((listed, server, test))
        if through == "passed":
            if cause:
                out.fixed.append(test)
            continue
        if cause:
            out.known[test] = cause
        else:
            out.new[test] = through
    for test in [t for t in out.new if (listed, server, t) in ctx.flaky]:
        out.flaky.append(test)
        del out.new[test]
    # A difference counts only if it holds up: run the tests again, directly and through
    # Sluice; one that fails directly too, or passes through Sluice, is flaky, not a difference.
    for attempt in range(1, RERUNS + 1):
        if not out.new or len(out.new) > MAX_RERUN or sluice.timed_out:
            break
        log(f"{name} on {server}: {len(out.new)} unlisted difference(s); running them again "
            f"directly and through Sluice ({attempt} of {RERUNS})")
        again = {}
        for via, first in (("direct", direct), ("sluice", sluice)):
            ids = [first.rerun_ids.get(t, t) for t in out.new]
            again[via] = run_suite(ctx, name, server, via, scope,
                                   first.outdir.parent / f"{via}-rerun{attempt}", only=ids)
        for test in list(out.new):
            if again["direct"].results.get(test) != "passed" or \
                    again["sluice"].results.get(test) == "passed":
                out.flaky.append(test)
                del out.new[test]
    return out


def fmt_counts(run):
    if run.problem and not run.results:
        return "could not run"
    p, f, s = run.counts()
    return f"{p} / {f} / {s}"


def table(ctx, outcomes):
    head = ["suite", "language", "version", "server", "direct p / f / s",
            "through Sluice p / f / s", "differences known / new / flaky"]
    rows = []
    for o in outcomes:
        suite = ctx.suites[o.suite]
        rows.append([
            o.suite, suite["language"], ctx.versions[o.suite], SERVER_NAMES[o.server],
            fmt_counts(o.direct), fmt_counts(o.sluice),
            f"{len(o.known)} / {len(o.new)} / {len(o.flaky)}",
        ])
    return head, rows


def print_table(head, rows):
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def markdown(ctx, outcomes, scope, seconds):
    head, rows = table(ctx, outcomes)
    lines = [
        f"# Compatibility run ({scope}, {seconds:.0f} s)", "",
        "p / f / s: passed / failed / skipped. A difference is a test that passes directly "
        "and not through Sluice.", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
    ]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    by_cause = {}
    for o in outcomes:
        for test, cause in o.known.items():
            by_cause.setdefault(cause, []).append((o, test))
    if by_cause:
        lines += ["", "## Known differences seen in this run, by cause", ""]
        for cause, items in by_cause.items():
            info = ctx.causes[cause]
            lines += [f"### {info['title']} ({len(items)})", "", info["reason"].strip(), ""]
            lines += [f"- `{o.suite}` on {SERVER_NAMES[o.server]}: `{t}`" for o, t in items]
            lines.append("")
    for o in outcomes:
        for title, tests in (("New differences", o.new), ("Flaky through Sluice", o.flaky),
                             ("Listed but passing now", o.fixed)):
            if tests:
                lines += ["", f"## {title}: `{o.suite}` on {SERVER_NAMES[o.server]}", ""]
                lines += [f"- `{t}`" + (f" ({tests[t]})" if isinstance(tests, dict) else "")
                          for t in tests]
    for o in outcomes:
        for run in (o.direct, o.sluice):
            if run.problem:
                lines += ["", f"- {o.suite} on {SERVER_NAMES[o.server]} ({run.via}): "
                          f"{run.problem}"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------


@dataclass
class Context:
    suites: dict
    causes: dict
    known: dict
    # (suite, server, test) that fail at random, directly too (known-differences.toml [[flaky]])
    flaky: set
    python: Path = None
    env_binary: Path = None
    src: dict = field(default_factory=dict)
    binaries: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)


def prepare(ctx, names, outdir):
    ctx.python = ensure_venv()
    for name in names:
        suite = ctx.suites[name]
        if suite.get("sdist"):
            src, archive = ensure_sdist(ctx.python, suite)
            ctx.src[name] = src
            ctx.versions[name] = suite["version"]
            if suite["sdist"] == "mariadb":
                ensure_mariadb_module(ctx.python, archive, suite["version"])
            elif suite.get("needs_mariadb_connector"):
                connector = ctx.suites["mariadb_python"]
                _, connector_archive = ensure_sdist(ctx.python, connector)
                ensure_mariadb_module(ctx.python, connector_archive, connector["version"])
        else:
            crate = suite.get("crate", name)
            version = locked_version(crate) if suite["version"] == "Cargo.lock" \
                else suite["version"]
            ctx.src[name], ctx.binaries[name] = ensure_crate_tests(
                crate, version, suite.get("features", ""), outdir
            )
            ctx.versions[name] = version


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true",
                        help="every test of every suite on every server it supports")
    parser.add_argument("--suite", action="append", default=[],
                        help="only this suite (repeatable); see suites.toml")
    parser.add_argument("--server", action="append", default=[], choices=SERVERS,
                        help="only this server (repeatable)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="suite runs at once (default 2: a suite's direct and Sluice runs "
                        "side by side)")
    parser.add_argument("--out", type=Path, default=ROOT / "target/compat",
                        help="where logs and report.md go (default target/compat)")
    parser.add_argument("--env-binary", type=Path, required=True,
                        help="the sluice-compat-env binary")
    args = parser.parse_args()
    # Runners change directory: every path they get must be absolute.
    args.out = args.out.resolve()
    args.env_binary = args.env_binary.resolve()

    started = time.monotonic()
    suites = tomllib.loads((HERE / "suites.toml").read_text())["suites"]
    unknown = [s for s in args.suite if s not in suites]
    if unknown:
        parser.error(f"unknown suite(s) {unknown}; suites.toml has {sorted(suites)}")
    causes, known, flaky = load_known(suites)
    ctx = Context(suites, causes, known, flaky, env_binary=args.env_binary)
    scope = "full" if args.full else "subset"

    plan = []
    for name, suite in suites.items():
        if args.suite and name not in args.suite:
            continue
        servers = suite["servers"] if args.full or args.suite else suite["default_servers"]
        for server in servers:
            if args.server and server not in args.server:
                continue
            plan.append((name, server))
    if not plan:
        parser.error("nothing to run with these filters")

    check_loopback_only()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    prepare(ctx, sorted({n for n, _ in plan}), args.out)
    log(f"running {len(plan)} suite/server pair(s), {scope} scope, each directly and "
        f"through Sluice; logs in {args.out}")

    runs = {}
    jobs = [(n, s, v) for n, s in plan for v in ("direct", "sluice")]

    def one(job):
        name, server, via = job
        run = run_suite(ctx, name, server, via, scope, args.out / name / server / via)
        p, f, s = run.counts()
        extra = f"; {run.problem}" if run.problem else ""
        log(f"{name} on {server} {via}: {p} passed, {f} failed, {s} skipped "
            f"in {run.seconds:.0f} s{extra}")
        return job, run

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for job, run in pool.map(one, jobs):
            runs[job] = run

    outcomes = [compare(ctx, n, s, runs[(n, s, "direct")], runs[(n, s, "sluice")], scope)
                for n, s in plan]
    seconds = time.monotonic() - started

    print()
    head, rows = table(ctx, outcomes)
    print_table(head, rows)
    report = markdown(ctx, outcomes, scope, seconds)
    (args.out / "report.md").write_text(report)

    failed = False
    for o in outcomes:
        where = f"{o.suite} on {SERVER_NAMES[o.server]}"
        for run in (o.direct, o.sluice):
            if run.problem:
                print(f"\n{where} ({run.via}): {run.problem}")
                if not run.results:
                    failed = True
        if o.new:
            failed = True
            print(f"\n{where}: {len(o.new)} test(s) pass directly but not through Sluice, "
                  f"and known-differences.toml does not list them:")
            for test, through in o.new.items():
                print(f"  {test}  ({through} through Sluice)")
        if o.flaky:
            print(f"\n{where}: differed once, not when run again, or listed as flaky:")
            for test in o.flaky:
                print(f"  {test}")
        if o.fixed:
            print(f"\n{where}: listed in known-differences.toml but passing through Sluice "
                  f"now; remove them from the list:")
            for test in o.fixed:
                print(f"  {test}")
    total_known = sum(len(o.known) for o in outcomes)
    total_new = sum(len(o.new) for o in outcomes)
    print(f"\ncompat: {scope} run in {seconds:.0f} s; {total_known} known difference(s), "
          f"{total_new} new; report in {args.out / 'report.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except HarnessError as e:
        log(f"error: {e}")
        sys.exit(2)
