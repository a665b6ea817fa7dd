#!/usr/bin/python3
"""inject-qemu.py — rekeyguard-inject against a real QEMU (Debian's, TCG).

Run by tests/inject/inject-test.sh --qemu, or alone (as root):

    tests/inject/inject-qemu.py --workdir DIR [--no-migrations] [--unprotected-runs N]

1. attach: a QEMU started WITHOUT any preload (once plain, once under
   libvirt's -sandbox) runs its guest; rekeyguard-inject --verify-threads
   loads the library. Checked: the injector succeeds, /proc/PID/maps shows
   the library, QEMU's log has the "injected" line, no other thread (vCPU,
   RCU, workers) was stopped, the guest keeps running, and a second
   injection is refused ("already mapped").
2. in flight: two plain QEMUs migrate slowly over TLS with the return
   path; the injector must refuse the source (thread names "live_migration",
   "return path"; QEMU 10: "mig/src/main", "mig/src/return") and leave it
   untouched, and refuse the destination, whose incoming precopy shows no
   thread, from QMP query-migrate on a monitor socket no one holds; with
   every monitor held by another client it must warn about -incoming.
3. migrations: tests/qemu/migrate.py's provoked smoke scenarios, with the
   "guard" source and destination started without the launcher and
   injected while the guest runs (REKEYGUARD_PROVOKE_REKEY and
   REKEYGUARD_LOG=debug are in QEMU's environment from the start; the
   library reads them when it is activated). Precopy and postcopy must
   complete. The "off" runs (library preloaded with REKEYGUARD_MODE=off,
   same provocation) show the unprotected failure: reported, not asserted.

Exit status: 0 all required checks passed, 1 otherwise, 2 set-up error.
"""

import argparse
import inspect
import os
import re
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.abspath(os.path.join(HERE, "..", ".."))
QEMU_TESTS = os.path.join(TOP, "tests", "qemu")
INJECT = os.path.join(TOP, "rekeyguard-inject")
LIB = os.path.join(TOP, "librekeyguard.so")
SANDBOX = ["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
INJECTED_LINE = "rekeyguard: injected into running process"

sys.dont_write_bytecode = True   # no __pycache__ in tests/qemu
sys.path.insert(0, QEMU_TESTS)
import migrate  # noqa: E402  (tests/qemu/migrate.py)


def log(msg):
    print(msg, flush=True)


def result_fields(text):
    line = [l for l in text.splitlines() if l.startswith("RESULT ")]
    if not line:
        return {}
    return dict(kv.split("=", 1) for kv in line[-1].split()[1:] if "=" in kv)


def run_injector(pid, out_path, *extra):
    t0 = time.monotonic()
    p = subprocess.run([INJECT, "--verify-threads", "--lib", LIB, *extra, str(pid)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60)
    with open(out_path, "w") as f:
        f.write(p.stdout)
    return p.returncode, p.stdout, result_fields(p.stdout), time.monotonic() - t0


def clean_env():
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("REKEYGUARD_") or k == "LD_PRELOAD":
            del env[k]
    return env


def thread_names(pid):
    names = []
    for tid in sorted(os.listdir("/proc/%d/task" % pid), key=int):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                names.append(f.read().strip())
        except OSError:
            pass
    return names


# ---- 1. attach --------------------------------------------------------------

def attach_test(workdir, guest, sandbox):
    name = "attach-sandbox" if sandbox else "attach"
    wd = os.path.join(workdir, name)
    os.makedirs(wd, exist_ok=True)
    problems = []
    q = BaseQemu(name, wd, ["-kernel", guest, "-append", "sleep=5"] + (SANDBOX if sandbox else []),
                     clean_env(), False, "qemu-system-x86_64", 20)
    try:
        st_path = os.path.join(wd, "status.bin")
        deadline = time.monotonic() + 30
        while True:
            st = q.guest_status(st_path)
            if st["magic"] == migrate.STATUS_MAGIC and st["passes"] >= 1:
                break
            if time.monotonic() > deadline:
                raise migrate.QmpError("guest did not boot")
            time.sleep(0.1)
        pid = q.pid
        with open("/proc/%d/maps" % pid) as f:
            if "librekeyguard" in f.read():
                problems.append("library mapped before the injection")
        threads = thread_names(pid)
        with open("/proc/%d/status" % pid) as f:
            seccomp = re.search(r"^Seccomp:\s*(\d)", f.read(), re.M).group(1)
        before = q.guest_status(st_path)["passes"]
        rc, out, res, wall = run_injector(pid, os.path.join(wd, "inject.out"))
        if rc != 0:
            problems.append("injector exit %d: %s" % (rc, " | ".join(
                l.strip() for l in out.splitlines() if "refused" in l or "failed" in l)))
        with open("/proc/%d/maps" % pid) as f:
            mapped = "librekeyguard" in f.read()
        if not mapped:
            problems.append("library not in /proc/%d/maps" % pid)
        time.sleep(0.3)
        if INJECTED_LINE not in q.log_text():
            problems.append("no '%s' line in QEMU's log" % INJECTED_LINE)
        if res.get("other_stopped") != "0":
            problems.append("other threads stopped: %s" % res.get("other_stopped"))
        if res.get("self_unbound") not in (None, "0"):
            problems.append("the injected library's own calls to its wrappers go to libgnutls "
                            "(%s; link it with -Wl,-Bsymbolic-functions)" % " ".join(
                                l.split(":", 1)[1].strip() for l in out.splitlines()
                                if "unguarded internal calls" in l))
        time.sleep(1.0)
        after = q.guest_status(st_path)["passes"]
        if after <= before:
            problems.append("the guest stopped running (passes %d -> %d)" % (before, after))
        rc2, out2, res2, _ = run_injector(pid, os.path.join(wd, "inject-again.out"))
        if rc2 != 1 or "already mapped" not in out2:
            problems.append("second injection not refused as 'already mapped' (exit %d)" % rc2)
        if not q.alive():
            problems.append("QEMU died: %s" % q.exit_desc())
        line = [l for l in q.log_text().splitlines() if INJECTED_LINE in l]
        log("  %s: QEMU %d (seccomp %s, %d threads: %s)" % (
            name, pid, seccomp, len(threads), ", ".join(sorted(set(threads)))))
        log("    injector: %s" % " ".join("%s=%s" % (k, res.get(k)) for k in (
            "status", "slots", "guarded_slots", "guarded_functions", "borrowed_ms", "call_ms",
            "stopped_ms", "stops", "where", "other_threads", "other_stopped")))
        log("    injector wall time %.0f ms; guest passes %d -> %d; QEMU log: %s" % (
            wall * 1e3, before, after, line[0] if line else "-"))
        for l in out.splitlines():
            if l.startswith("  guarded GnuTLS") or l.startswith("    ") or "read back" in l:
                log("    " + l.strip())
    finally:
        q.kill()
    for p in problems:
        log("    PROBLEM: " + p)
    return not problems, res


# ---- 2. a migration in flight ---------------------------------------------------

def in_flight_test(workdir, guest, certs):
    """Two plain QEMUs migrate slowly over TLS; meanwhile the injector must
    refuse the source (its "live_migration" and "return path" threads)."""
    wd = os.path.join(workdir, "in-flight")
    os.makedirs(wd, exist_ok=True)
    problems = []
    common = ["-kernel", guest, "-append", "sleep=5"]
    creds = lambda ep: ["-object", "tls-creds-x509,id=tls0,dir=%s,endpoint=%s,verify-peer=on" % (certs, ep)]
    # The destination also gets a QMP monitor nobody holds, which the
    # injector can ask (the harness keeps the first one, as libvirt would).
    free_qmp = os.path.join(wd, "dst-free.qmp")
    dst = BaseQemu("dst", wd, common + creds("server") + [
        "-incoming", "defer", "-qmp", "unix:%s,server=on,wait=off" % free_qmp],
        clean_env(), False, "qemu-system-x86_64", 20)
    src = BaseQemu("src", wd, common + creds("client"), clean_env(), False, "qemu-system-x86_64", 20)
    try:
        for q in (dst, src):
            q.qmp.cmd("migrate-set-capabilities",
                      capabilities=[{"capability": "return-path", "state": True}])
            q.qmp.cmd("migrate-set-parameters", **{"tls-creds": "tls0"})
        src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 2 * 1000 * 1000})
        dst.qmp.cmd("migrate-incoming", uri="tcp:127.0.0.1:0")
        port = next(int(a["port"]) for a in dst.qmp.cmd("query-migrate")["socket-address"]
                    if a.get("type") == "inet")
        src.qmp.cmd("migrate", uri="tcp:127.0.0.1:%d" % port)
        deadline = time.monotonic() + 20
        while True:
            names = thread_names(src.pid)
            # QEMU up to 9.x: "return path"; QEMU 10: "mig/src/return".
            if src.qmp.cmd("query-migrate").get("status") == "active" and (
                    "return path" in names or "mig/src/return" in names):
                break
            if time.monotonic() > deadline:
                raise migrate.QmpError("the migration did not become active")
            time.sleep(0.1)
        rc, out, res, _ = run_injector(src.pid, os.path.join(wd, "src.inject"))
        refusal = [l.strip() for l in out.splitlines() if "refused:" in l]
        if rc != 1 or not any("migration seems to be in flight" in l for l in refusal):
            problems.append("source not refused during the migration (exit %d): %s" % (rc, refusal))
        with open("/proc/%d/maps" % src.pid) as f:
            if "librekeyguard" in f.read():
                problems.append("the library got into the source")
        log("  in-flight: source threads %s" % ", ".join(sorted(set(thread_names(src.pid)))))
        log("    source: exit %d, %s" % (rc, refusal[0] if refusal else "-"))
        # An incoming precopy stream runs in the destination's main thread:
        # no thread name shows it, QEMU's query-migrate does.
        rc, out, res, _ = run_injector(dst.pid, os.path.join(wd, "dst.check"), "--check")
        refusal = [l.strip() for l in out.splitlines() if "refused:" in l]
        log("    destination threads %s; --check: exit %d, %s" % (
            ", ".join(sorted(set(thread_names(dst.pid)))), rc, refusal[0] if refusal else "-"))
        if rc != 1 or not any('QEMU reports migration status "active" on this destination' in l
                              for l in refusal):
            problems.append("destination not refused during the incoming migration (exit %d): %s"
                            % (rc, refusal or out.strip().splitlines()[-3:]))
        # Both monitors held by other clients: the injector cannot ask and
        # must say what to check instead.
        holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        holder.connect(free_qmp)
        holder.recv(4096)   # the greeting: this client now holds the monitor
        rc, out, res, _ = run_injector(dst.pid, os.path.join(wd, "dst.busy.check"), "--check")
        holder.close()
        notes = [l.strip() for l in out.splitlines() if "started with -incoming" in l]
        log("    destination, its monitors held elsewhere: --check %s, %s" % (
            res.get("status"), notes[0][:110] + "..." if notes else "no -incoming warning"))
        if not notes or "did not answer" not in out:
            problems.append("no warning for a destination whose QMP monitors are busy: %s"
                            % out.strip().splitlines()[-4:])
        src.qmp.cmd("migrate_cancel")
    except migrate.QmpError as e:
        problems.append("QMP: %s" % e)
    finally:
        src.kill()
        dst.kill()
    for p in problems:
        log("    PROBLEM: " + p)
    return not problems


# ---- 3. migrations ------------------------------------------------------------

BaseQemu = migrate.Qemu


class InjectingQemu(BaseQemu):
    """A QEMU that migrate.py would start through the launcher with the
    library guarding: started without any preload, then injected."""

    injections = []

    def __init__(self, *args, **kwargs):
        bound = inspect.signature(BaseQemu.__init__).bind(self, *args, **kwargs)
        env = bound.arguments.get("env") or {}
        inject = bool(bound.arguments.get("use_launcher")) and env.get("REKEYGUARD_MODE") != "off"
        if inject:
            bound.arguments["use_launcher"] = False
        super().__init__(*bound.args[1:], **bound.kwargs)
        if not inject:
            return
        time.sleep(0.5)   # the guest is starting: inject while it runs
        rc, out, res, _ = run_injector(self.pid, os.path.join(self.workdir, self.name + ".inject"))
        InjectingQemu.injections.append((self.name, rc, res))
        log("    injected %s (QEMU %d): %s" % (self.name, self.pid, " ".join(
            "%s=%s" % (k, res.get(k)) for k in ("status", "slots", "borrowed_ms", "where",
                                                "other_stopped"))))
        if rc != 0:
            raise migrate.QmpError("rekeyguard-inject failed on %s: %s" % (self.name, " | ".join(
                l.strip() for l in out.splitlines() if "refused" in l or "failed" in l)))


def migrations(workdir, guest, certs, unprotected_runs, run_seconds, guarded):
    migrate.Qemu = InjectingQemu
    names = guarded + [
        "off-%s-%d" % ("precopy" if i % 2 == 0 else "postcopy", i + 1) for i in range(unprotected_runs)]
    argv = ["migrate.py", "--suite", "smoke", "--only", ",".join(names),
            "--unprotected-runs", str(unprotected_runs), "--run-seconds", str(run_seconds),
            "--guest", guest, "--certs", certs, "--workdir", os.path.join(workdir, "runs"),
            "--json", os.path.join(workdir, "migrations.json")]
    log("  (guard-* below: both QEMUs started without preload and injected; "
        "off-*: preloaded with REKEYGUARD_MODE=off, the unprotected stack)")
    saved = sys.argv
    sys.argv = argv
    try:
        rc = migrate.main()
    finally:
        sys.argv = saved
    bad = [n for n, rc_, _ in InjectingQemu.injections if rc_ != 0]
    return rc == 0 and not bad


def main():
    global LIB
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--no-migrations", dest="migrations", action="store_false")
    ap.add_argument("--unprotected-runs", type=int, default=2)
    ap.add_argument("--run-seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=1, help="repeat the migrations")
    ap.add_argument("--guarded", default="guard-precopy,guard-postcopy",
                    help="injected scenarios of migrate.py's smoke suite")
    ap.add_argument("--no-attach", dest="attach", action="store_false",
                    help="skip the attach and in-flight tests")
    ap.add_argument("--lib", default=LIB, help="the library to inject")
    opts = ap.parse_args()
    LIB = os.path.abspath(opts.lib)
    if os.geteuid() != 0:
        log("inject-qemu.py: run as root")
        return 2
    for f in (INJECT, LIB):
        if not os.path.exists(f):
            log("inject-qemu.py: missing %s" % f)
            return 2
    os.makedirs(opts.workdir, exist_ok=True)
    subprocess.run([os.path.join(TOP, "tests", "ensure-deps.sh"), "qemu-system-x86", "gnutls-bin",
                    "gcc", "binutils"], check=True)
    guest = os.path.join(opts.workdir, "guest.elf")
    certs = os.path.join(opts.workdir, "certs")
    subprocess.run([os.path.join(QEMU_TESTS, "build-guest.sh"), guest], check=True)
    subprocess.run([os.path.join(QEMU_TESTS, "mkcerts.sh"), certs], check=True)

    ok = True
    pauses = []
    for sandbox in (False, True) if opts.attach else ():
        good, res = attach_test(opts.workdir, guest, sandbox)
        ok &= good
        if res.get("borrowed_ms"):
            pauses.append(float(res["borrowed_ms"]))
    if opts.attach:
        ok &= in_flight_test(opts.workdir, guest, certs)
    for _ in range(opts.rounds if opts.migrations else 0):
        ok &= migrations(opts.workdir, guest, certs, opts.unprotected_runs, opts.run_seconds,
                         [n for n in opts.guarded.split(",") if n])
    pauses += [float(r["borrowed_ms"]) for _, rc, r in InjectingQemu.injections
               if rc == 0 and r.get("borrowed_ms")]
    if pauses:
        pauses.sort()
        log("  QEMU main thread borrowed: min %.2f, median %.2f, max %.2f ms over %d injections" % (
            pauses[0], pauses[len(pauses) // 2], pauses[-1], len(pauses)))
    log("inject-qemu.py: %s" % ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        migrate.kill_all_qemus()
