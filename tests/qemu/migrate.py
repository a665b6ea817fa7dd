#!/usr/bin/python3
"""migrate.py — QMP-driven QEMU TLS live migrations for the rekeyguard tests.

Run by tests/qemu/smoke.sh (which installs packages, builds the guest and
makes the certificates); see --help. Standard library only.

One *scenario* starts a destination and a source QEMU (TCG, -display none,
-nodefaults, QMP on unix sockets), both through run-qemu-with-shim.sh unless
the scenario is "plain" (no launcher, no library), migrates the tiny guest
(guest/guest.c) over TLS on 127.0.0.1 with the return path (precopy) or
postcopy, and checks the result:

  * migration status "completed";
  * precopy: the destination's RAM equals the stopped source's, byte for byte
    (sha256 of pmemsave dumps), and the guest's pass counter matches;
  * the destination guest runs on after migration (its pass counter
    advances) and its self-checks found no bad page;
  * with the library: both QEMU logs carry its notice line.

Protection kinds: "guard" (library, REKEYGUARD_MODE unset = auto), "off"
(library loaded, REKEYGUARD_MODE=off: the unprotected stack, used with
provocation to show the bug), "plain" (no library: the throughput baseline).

Suites: "selftest" (rekeyguard-selftest: guarded precopy and postcopy with
provoked key updates through the installed launcher; --control adds runs
with the library switched off, whose failures are reported), "smoke" (a
no-library baseline, guarded precopy and postcopy with
provoked key updates, then unprotected runs whose failures are reported, not
asserted), "soak" (no provocation: precopy until --soak-gb went over, past
GnuTLS's automatic rekeys, which gdb counts with a breakpoint that never
stops), "bench" (alternating no-library / guarded / guarded+provoked
precopy; medians of MB/s and of CPU seconds per GB outside the vCPU thread,
the figure that survives a busy host).

Every wait has a timeout; every QEMU gets SIGKILL when this script exits, is
interrupted or dies (PR_SET_PDEATHSIG). A guarded run that hangs gets gdb
backtraces of both QEMUs saved next to its logs; one that crashes dumps
core (without guest RAM) and gets the backtraces from the core.
"""

import argparse
import ctypes
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.abspath(os.path.join(HERE, "..", ".."))
LAUNCHER = os.path.join(TOP, "run-qemu-with-shim.sh")

NOTICE = "rekeyguard: guarding TLS 1.3 sessions against the key-update race"
PROVOKE_NOTICE = "REKEYGUARD_PROVOKE_REKEY="
KEY_UPDATE_RE = re.compile(r"rekeyguard: provoked key update: (-?\d+)")
FAILURE_PATTERNS = [
    # what QEMU (7.2) writes when the TLS stream breaks; reported, not asserted
    ("decryption", re.compile(r"[Dd]ecrypt")),
    ("tls-error", re.compile(r"TLS|gnutls|GnuTLS", re.I)),
    ("migration-error", re.compile(r"[Mm]igrat\w* .*(fail|error)|load of migration failed|Unable to|error while loading state")),
]

STATUS_ADDR = 0x00180000
STATUS_FMT = "<16I"
STATUS_MAGIC = 0x31474752
STATUS_KEYS = ["magic", "version", "passes", "page", "errors", "static_rounds",
               "static_errors", "dirty_base", "dirty_pages", "ram_top",
               "first_bad_addr", "first_bad_expected", "first_bad_found",
               "fault", "ticks", "sleep_ticks"]   # guest/guest.c's status block
RAM_MB = 512
GIB = 1 << 30
RECORDS_PER_AUTO_REKEY = (1 << 24) - 3   # GnuTLS: seq & 0xffffff == 0xfffffd

ALL_QEMUS = []


def log(msg):
    print(msg, flush=True)


# ---- processes ------------------------------------------------------------

def _die_with_parent(core_dumps=False):
    """preexec_fn: SIGKILL the child (and, across exec, QEMU) if we die;
    core dumps on or off (QEMU runs with dump-guest-core=off: small cores)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except Exception:
        pass
    import resource
    try:
        hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
        resource.setrlimit(resource.RLIMIT_CORE, (hard if core_dumps else 0, hard))
    except (ValueError, OSError):
        pass
    os.setpgrp()


def kill_all_qemus():
    for q in ALL_QEMUS:
        q.kill()


def _on_signal(signum, _frame):
    kill_all_qemus()
    sys.exit(128 + signum)


class QmpError(Exception):
    pass


class Qmp:
    def __init__(self, path, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise QmpError("QMP socket %s did not appear" % path)
                time.sleep(0.05)
        self.file = self.sock.makefile("rw", encoding="utf-8")
        self.events = []
        greeting = self._read()
        if "QMP" not in greeting:
            raise QmpError("no QMP greeting: %r" % greeting)
        self.cmd("qmp_capabilities")

    def _read(self):
        line = self.file.readline()
        if not line:
            raise QmpError("QMP connection closed")
        return json.loads(line)

    def cmd(self, name, timeout=None, **args):
        if timeout is not None:
            self.sock.settimeout(timeout)
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        try:
            self.file.write(json.dumps(msg) + "\n")
            self.file.flush()
            while True:
                reply = self._read()
                if "event" in reply:
                    self.events.append(reply)
                    continue
                if "error" in reply:
                    raise QmpError("%s: %s" % (name, reply["error"].get("desc")))
                return reply.get("return")
        except (OSError, ValueError) as e:
            raise QmpError("%s: %s" % (name, e))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Qemu:
    def __init__(self, name, workdir, args, env, use_launcher, qemu_binary, qmp_timeout,
                 core_dumps=False):
        self.name = name
        self.workdir = workdir
        self.qemu_binary = shutil.which(qemu_binary) or qemu_binary
        self.qmp_path = os.path.join(workdir, name + ".qmp")
        self.log_path = os.path.join(workdir, name + ".log")
        self.debugcon_path = os.path.join(workdir, name + ".debugcon")
        argv = [qemu_binary, "-name", "%s,debug-threads=on" % name, "-nodefaults", "-display", "none",
                "-machine", "pc,accel=tcg,dump-guest-core=off", "-m", str(RAM_MB),
                "-qmp", "unix:%s,server=on,wait=off" % self.qmp_path,
                "-debugcon", "file:%s" % self.debugcon_path] + args
        if use_launcher:
            argv = [LAUNCHER, "--"] + argv
        self.argv = argv
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, cwd=workdir,
                                     stdout=self.logf, stderr=subprocess.STDOUT,
                                     preexec_fn=lambda: _die_with_parent(core_dumps))
        ALL_QEMUS.append(self)
        self.qmp = None
        try:
            self.qmp = Qmp(self.qmp_path, qmp_timeout)
        except QmpError as first:
            err = first
            if self.proc.poll() is None:
                # QEMU runs but its monitor handshake failed: once more, said
                # in the log (seen once, on the first QEMU started in a
                # fresh Debian 13 chroot: QEMU alive after 1 s, no output)
                time.sleep(0.5)
                try:
                    self.qmp = Qmp(self.qmp_path, qmp_timeout)
                    log("  %s: the first QMP handshake failed (%s); the second worked" % (name, first))
                except QmpError as second:
                    err = second
            if self.qmp is None:
                time.sleep(0.2)
                raise QmpError("%s did not start (exit %s; %s): %s" % (
                    name, self.proc.poll(), err, self.log_text()[-600:]))

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def exit_desc(self):
        rc = self.proc.poll()
        if rc is None:
            return "running"
        if rc < 0:
            try:
                return "killed by %s" % signal.Signals(-rc).name
            except ValueError:
                return "killed by signal %d" % -rc
        return "exit %d" % rc

    def log_text(self):
        try:
            if not self.logf.closed:
                self.logf.flush()
            with open(self.log_path, "r", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def debugcon_text(self):
        try:
            with open(self.debugcon_path, "r", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def guest_status(self, path):
        self.qmp.cmd("pmemsave", timeout=10, val=STATUS_ADDR, size=64, filename=path)
        with open(path, "rb") as f:
            v = struct.unpack(STATUS_FMT, f.read(64))
        return dict(zip(STATUS_KEYS, v))

    def ram_sha256(self, path, ram_top):
        """sha256 of guest RAM from 1 MiB to ram_top (no legacy VGA/ROM hole)."""
        start = 0x100000
        self.qmp.cmd("pmemsave", timeout=120, val=start, size=ram_top - start, filename=path)
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while True:
                chunk = f.read(1 << 22)
                if not chunk:
                    break
                h.update(chunk)
        os.unlink(path)
        return h.hexdigest()

    def backtrace(self, path):
        if not self.alive() or not shutil.which("gdb"):
            return
        qpid = self.proc.pid   # the launcher execs QEMU: the PID is QEMU's
        with open(path, "w") as f:
            subprocess.run(["gdb", "-p", str(qpid), "-batch", "-ex", "info threads",
                            "-ex", "thread apply all bt"], stdout=f, stderr=subprocess.STDOUT,
                           timeout=120, stdin=subprocess.DEVNULL)

    def cpu_seconds(self):
        """(process CPU seconds, of which vCPU threads): the process total
        keeps the time of threads that already exited (the migration
        thread ends at completion)."""
        tick = os.sysconf("SC_CLK_TCK")

        def parse(path):
            with open(path) as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2:].split()
            return stat[stat.index("(") + 1:stat.rindex(")")], (int(fields[11]) + int(fields[12])) / tick

        try:
            total = parse("/proc/%d/stat" % self.proc.pid)[1]
            vcpu = 0.0
            for tid in os.listdir("/proc/%d/task" % self.proc.pid):
                try:
                    comm, cpu = parse("/proc/%d/task/%s/stat" % (self.proc.pid, tid))
                except OSError:
                    continue
                if "/TCG" in comm or "/KVM" in comm:
                    vcpu += cpu
            return total, vcpu
        except OSError:
            return None, None

    def core_backtrace(self):
        """After a crash: gdb backtraces from the core file (core_pattern
        "core" or "core.PID" in the work directory), then delete the core.
        Returns the backtrace file or None."""
        cores = [os.path.join(self.workdir, c) for c in ("core.%d" % self.proc.pid, "core")]
        core = next((c for c in cores if os.path.exists(c)), None)
        if not core or not shutil.which("gdb"):
            return None
        path = os.path.join(self.workdir, "%s.crash-bt.txt" % self.name)
        with open(path, "w") as f:
            try:
                subprocess.run(["gdb", "-batch", "-nx", "-ex", "info threads", "-ex",
                                "thread apply all bt", self.qemu_binary, core],
                               stdout=f, stderr=subprocess.STDOUT, timeout=180,
                               stdin=subprocess.DEVNULL)
            except subprocess.SubprocessError:
                pass
        os.unlink(core)
        return path

    def kill(self):
        if self.qmp:
            self.qmp.close()
        if self.alive():
            try:
                self.proc.kill()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:
            self.logf.close()
        except OSError:
            pass


class RekeyCounter:
    """Count calls of libgnutls's gnutls_session_key_update in a running
    QEMU with a gdb breakpoint that never stops (soak: shows that the
    automatic rekeys after 2^24 records really happened). Only the location
    inside libgnutls counts, so a call through the library's wrapper counts
    once. Costs nothing between hits. Must outlive the QEMU it watches: a
    gdb killed first would leave its breakpoint behind."""

    SCRIPT = r"""
set pagination off
set confirm off
handle all nostop noprint pass
python
import gdb
class RekeyguardCount(gdb.Breakpoint):
    def stop(self):
        flags = int(gdb.parse_and_eval("$rsi"))
        print("rekeyguard-count: gnutls_session_key_update flags=%d thread=%s"
              % (flags, gdb.selected_thread().name), flush=True)
        return False
bp = RekeyguardCount("gnutls_session_key_update")
for loc in bp.locations:
    lib = gdb.solib_name(loc.address) or ""
    loc.enabled = "libgnutls" in lib
print("rekeyguard-count: watching", [(hex(l.address), gdb.solib_name(l.address)) for l in bp.locations if l.enabled], flush=True)
end
continue
"""

    def __init__(self, pid, workdir, name):
        self.out_path = os.path.join(workdir, "%s.rekeys.txt" % name)
        script = os.path.join(workdir, "%s.rekeys.gdb" % name)
        with open(script, "w") as f:
            f.write(self.SCRIPT)
        self.out = open(self.out_path, "w")
        self.proc = subprocess.Popen(["gdb", "-p", str(pid), "-batch", "-nx", "-x", script],
                                     stdout=self.out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "watching" not in self.text():
            time.sleep(0.2)

    def text(self):
        with open(self.out_path, errors="replace") as f:
            return f.read()

    def watching(self):
        return "rekeyguard-count: watching [(" in self.text()

    def count(self):
        return self.text().count("rekeyguard-count: gnutls_session_key_update")

    def finish(self):
        try:
            self.proc.wait(timeout=20)   # gdb leaves when its QEMU is gone
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.out.close()


# ---- one scenario -----------------------------------------------------------

class Scenario:
    def __init__(self, name, protection, variant, provoke_src=None, provoke_dst=None,
                 run_seconds=6.0, until_bytes=None, timeout=90.0, expect_ok=True,
                 count_rekeys=False):
        self.name = name
        self.protection = protection      # guard | off | plain
        self.variant = variant            # precopy | postcopy
        self.provoke_src = provoke_src
        self.provoke_dst = provoke_dst
        self.run_seconds = run_seconds
        self.until_bytes = until_bytes    # soak: migrate until this much RAM went over
        self.timeout = timeout
        self.expect_ok = expect_ok
        self.count_rekeys = count_rekeys


def scenario_env(base, protection, provoke, log_debug):
    env = dict(base)
    for k in list(env):
        if k.startswith("REKEYGUARD_") or k == "LD_PRELOAD":
            del env[k]
    if protection == "off":
        env["REKEYGUARD_MODE"] = "off"
    elif protection == "guard" and base.get("REKEYGUARD_MODE"):
        env["REKEYGUARD_MODE"] = base["REKEYGUARD_MODE"]
    if protection != "plain":
        if base.get("REKEYGUARD_QEMU_CONF"):
            env["REKEYGUARD_QEMU_CONF"] = base["REKEYGUARD_QEMU_CONF"]
        env["REKEYGUARD_LOG"] = "debug" if log_debug else base.get("REKEYGUARD_LOG", "warn")
    if provoke:
        env["REKEYGUARD_PROVOKE_REKEY"] = str(provoke)
    return env


def migration_stats(info):
    ram = info.get("ram", {}) if info else {}
    return {
        "status": info.get("status") if info else None,
        "transferred": ram.get("transferred", 0),
        "normal_pages": ram.get("normal", 0),
        "total_time_ms": info.get("total-time", 0) if info else 0,
        "mbps": ram.get("mbps", 0),
        "dirty_sync": ram.get("dirty-sync-count", 0),
        "error": info.get("error-desc") if info else None,
    }


def run_scenario(sc, opts, workroot, guest, certs):
    wd = tempfile.mkdtemp(prefix="%s-" % sc.name, dir=workroot)
    res = {"name": sc.name, "protection": sc.protection, "variant": sc.variant,
           "provoke_src": sc.provoke_src, "provoke_dst": sc.provoke_dst,
           "ok": False, "failure": None, "details": [], "workdir": wd}
    t_start = time.monotonic()
    use_launcher = sc.protection != "plain"
    common = ["-kernel", guest, "-append", "sleep=%d" % opts.guest_sleep]
    creds = lambda ep: ["-object", "tls-creds-x509,id=tls0,dir=%s,endpoint=%s,verify-peer=on" % (certs, ep)]
    src = dst = None
    counters = []

    def fail(kind, detail=""):
        if res["failure"] is None:
            res["failure"] = kind
        if detail:
            res["details"].append(detail)

    try:
        cores = opts.cores == "all" or (opts.cores == "guarded" and sc.protection == "guard")
        dst = Qemu("dst", wd, common + creds("server") + ["-incoming", "defer"],
                   scenario_env(os.environ, sc.protection, sc.provoke_dst, opts.log_debug),
                   use_launcher, opts.qemu, 20, cores)
        src = Qemu("src", wd, common + creds("client"),
                   scenario_env(os.environ, sc.protection, sc.provoke_src, opts.log_debug),
                   use_launcher, opts.qemu, 20, cores)
        res["pids"] = {"src": src.pid, "dst": dst.pid}
        if sc.count_rekeys and shutil.which("gdb"):
            counters = [(q.name, RekeyCounter(q.pid, wd, q.name)) for q in (src, dst)]

        # wait until the guest booted and filled its RAM once
        deadline = time.monotonic() + 30
        st_path = os.path.join(wd, "status.bin")
        while True:
            st = src.guest_status(st_path)
            if st["magic"] == STATUS_MAGIC and st["passes"] >= 1:
                break
            if time.monotonic() > deadline:
                raise QmpError("guest did not boot: %r" % st)
            time.sleep(0.1)

        caps = [{"capability": "return-path", "state": True}]
        if sc.variant == "postcopy":
            caps.append({"capability": "postcopy-ram", "state": True})
        for q in (dst, src):
            q.qmp.cmd("migrate-set-capabilities", capabilities=caps)
            q.qmp.cmd("migrate-set-parameters", **{"tls-creds": "tls0"})
        src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 64 * GIB,
                                                  "downtime-limit": 300})
        dst.qmp.cmd("migrate-incoming", uri="tcp:127.0.0.1:0")
        addr = dst.qmp.cmd("query-migrate").get("socket-address", [])
        port = next(int(a["port"]) for a in addr if a.get("type") == "inet")
        if not all(a.get("host") == "127.0.0.1" for a in addr):
            raise QmpError("destination listens beyond loopback: %r" % addr)
        src.qmp.cmd("migrate", uri="tcp:127.0.0.1:%d" % port)
        t_migrate = time.monotonic()

        # run, then stop the source (precopy) or switch to postcopy
        switched = False
        sample0 = None
        info = {}
        deadline = t_migrate + sc.timeout
        last_progress = last_report = time.monotonic()
        last_bytes = -1
        while True:
            if not src.alive() or not dst.alive():
                break
            try:
                info = src.qmp.cmd("query-migrate", timeout=10)
            except QmpError as e:
                fail("qmp-error", "source QMP: %s" % e)
                break
            stats = migration_stats(info)
            now = time.monotonic()
            if stats["transferred"] != last_bytes:
                last_bytes, last_progress = stats["transferred"], now
            if stats["status"] in ("completed", "failed", "cancelled"):
                break
            if stats["status"] in ("postcopy-paused",):
                fail("postcopy-paused", "source: postcopy-paused (the stream broke)")
                break
            if stats["status"] == "active" and sample0 is None:
                sample0 = (now, stats["transferred"])
            elapsed = now - t_migrate
            if not switched:
                due = (stats["transferred"] >= sc.until_bytes if sc.until_bytes
                       else elapsed >= sc.run_seconds)
                if due and stats["status"] == "active":
                    res["active_mb_s"] = ((stats["transferred"] - sample0[1]) / 1e6 /
                                          max(now - sample0[0], 1e-3)) if sample0 else None
                    res["src_before"] = stats
                    if sc.variant == "precopy":
                        src.qmp.cmd("stop")
                    else:
                        src.qmp.cmd("migrate-start-postcopy")
                    switched = True
                    t_switch = now
            if sc.until_bytes and now - last_report >= 30:
                last_report = now
                log("  %s: %.1f GB after %.0f s (%s)" % (sc.name, stats["transferred"] / 1e9,
                                                        elapsed, stats["status"]))
            if now > deadline or now - last_progress > opts.stall_seconds:
                fail("hang", "no completion after %.0f s (status %s, last progress %.0f s ago)" %
                     (now - t_migrate, stats["status"], now - last_progress))
                break
            time.sleep(0.25 if not sc.until_bytes else 1.0)

        res["phase"] = ("after %s (%.1f s later)" % ("stop" if sc.variant == "precopy" else
                                                    "migrate-start-postcopy",
                                                    time.monotonic() - t_switch)
                        if switched else "while migrating (%.1f s in)" % (time.monotonic() - t_migrate))
        time.sleep(0.3)   # let a dying peer finish dying, logs flush
        stats = migration_stats(info)
        res["migration"] = stats
        res["elapsed_s"] = time.monotonic() - t_migrate
        if switched:
            res["after_switch_s"] = time.monotonic() - t_switch
        if stats["total_time_ms"]:
            res["mb_s"] = stats["transferred"] / 1e6 / (stats["total_time_ms"] / 1000.0)

        for q in (src, dst):
            if not q.alive():
                fail("crash" if q.proc.returncode < 0 else "exit",
                     "%s QEMU %s, %s" % (q.name, q.exit_desc(), res["phase"]))
                bt = q.core_backtrace() if q.proc.returncode < 0 else None
                if bt:
                    res["details"].append("%s crash backtrace: %s" % (q.name, bt))
        if stats["status"] == "failed":
            fail("migration-failed", "source: migration failed: %s" % stats["error"])
        elif stats["status"] != "completed" and res["failure"] is None:
            fail("not-completed", "source status %s" % stats["status"])
        if dst.alive() and res["failure"] is None:
            try:
                dinfo = dst.qmp.cmd("query-migrate", timeout=10)
                if dinfo.get("status") not in (None, "completed"):
                    # postcopy: the destination may still be finishing
                    t_end = time.monotonic() + 20
                    while dinfo.get("status") not in ("completed", "failed") and time.monotonic() < t_end:
                        time.sleep(0.2)
                        dinfo = dst.qmp.cmd("query-migrate", timeout=10)
                    if dinfo.get("status") != "completed":
                        fail("dst-not-completed", "destination status %s" % dinfo.get("status"))
            except QmpError as e:
                fail("qmp-error", "destination QMP: %s" % e)

        if res["failure"] is None:
            # CPU spent moving the stream: everything but the vCPU thread
            # (source: migration thread encrypting and sending, return path;
            # destination: receive, decrypt, load), per GB transferred.
            (stot, svcpu), (dtot, dvcpu) = src.cpu_seconds(), dst.cpu_seconds()
            if stot is not None and dtot is not None:
                res["cpu"] = {"src_total_s": stot, "src_vcpu_s": svcpu,
                              "dst_total_s": dtot, "dst_vcpu_s": dvcpu}
                if stats["transferred"]:
                    gb = stats["transferred"] / 1e9
                    res["cpu"]["src_s_per_gb"] = (stot - svcpu) / gb
                    res["cpu"]["dst_s_per_gb"] = (dtot - dvcpu) / gb
            check_destination(sc, res, src, dst, wd, fail)

        if res["failure"] == "hang" and opts.backtraces:
            for q in (src, dst):
                bt = os.path.join(wd, "%s.gdb.txt" % q.name)
                try:
                    q.backtrace(bt)
                    res["details"].append("gdb backtrace: %s" % bt)
                except (subprocess.SubprocessError, OSError) as e:
                    res["details"].append("gdb on %s failed: %s" % (q.name, e))
    except QmpError as e:
        fail("setup-or-qmp-error", str(e))
    finally:
        for q in (src, dst):
            if q:
                q.kill()
        for name, counter in counters:
            counter.finish()
            res.setdefault("gnutls_key_updates", {})[name] = (
                counter.count() if counter.watching() else None)

    # logs: notice lines, key updates, error patterns
    res["key_updates"] = {}
    res["notice"] = {}
    res["log_hits"] = {}
    for q in (src, dst):
        if not q:
            continue
        text = q.log_text()
        rets = KEY_UPDATE_RE.findall(text)
        res["key_updates"][q.name] = {"ok": sum(1 for r in rets if r == "0"),
                                      "failed": sum(1 for r in rets if r != "0")}
        res["notice"][q.name] = NOTICE in text
        hits = [k for k, rx in FAILURE_PATTERNS
                if any(rx.search(l) for l in text.splitlines() if not l.startswith("rekeyguard:"))]
        if hits:
            res["log_hits"][q.name] = hits
            lines = [l for l in text.splitlines() if not l.startswith("rekeyguard: provoked")]
            res["details"].append("%s log: %s" % (q.name, " | ".join(lines[-4:])[:400]))
        if "rg-guest: BAD" in q.debugcon_text():
            fail("guest-detected-corruption", "%s guest: %s" % (
                q.name, [l for l in q.debugcon_text().splitlines() if "BAD" in l][:3]))
    if sc.protection != "plain" and res["failure"] is None:
        if sc.protection == "guard":
            missing = [n for n, seen in res["notice"].items() if not seen]
            if missing:
                fail("no-notice", "library notice missing in %s log" % ", ".join(missing))
    if res["failure"] is None and res.get("key_updates"):
        bad = {n: k["failed"] for n, k in res["key_updates"].items() if k["failed"]}
        if bad and sc.protection == "guard":
            fail("key-update-error", "provoked key updates returned errors: %r" % bad)
    res["wall_s"] = time.monotonic() - t_start
    res["ok"] = res["failure"] is None
    return res


def check_destination(sc, res, src, dst, wd, fail):
    st_path = os.path.join(wd, "status.bin")
    dst_status = dst.qmp.cmd("query-status")
    res["dst_runstate"] = dst_status.get("status")
    if sc.variant == "precopy":
        # source was stopped before completion: both sides hold the same RAM
        s_st = src.guest_status(st_path)
        d_st = dst.guest_status(st_path)
        if s_st != d_st:
            fail("state-mismatch", "guest status differs: src %r dst %r" % (s_st, d_st))
            return
        t0 = time.monotonic()
        s_hash = src.ram_sha256(os.path.join(wd, "src.ram"), s_st["ram_top"])
        d_hash = dst.ram_sha256(os.path.join(wd, "dst.ram"), d_st["ram_top"])
        res["ram_compare_s"] = time.monotonic() - t0
        if s_hash != d_hash:
            fail("ram-mismatch", "destination RAM differs from the source's (sha256 %s vs %s)"
                 % (s_hash[:16], d_hash[:16]))
            return
        res["ram_identical_mb"] = (s_st["ram_top"] - 0x100000) >> 20
        if res["dst_runstate"] != "running":
            dst.qmp.cmd("cont")
    before = dst.guest_status(st_path)
    time.sleep(1.0)
    after = dst.guest_status(st_path)
    res["guest"] = {"passes_before": before["passes"], "passes_after": after["passes"],
                    "errors": after["errors"], "static_errors": after["static_errors"],
                    "static_rounds": after["static_rounds"]}
    if after["fault"]:
        fail("guest-fault", "destination guest took a CPU exception")
    elif after["magic"] != STATUS_MAGIC:
        fail("guest-state", "destination guest status block lost its magic: %r" % after)
    elif after["passes"] <= before["passes"]:
        fail("guest-stuck", "destination guest does not run on (passes %d -> %d, runstate %s)"
             % (before["passes"], after["passes"], dst.qmp.cmd("query-status").get("status")))
    elif after["errors"] or after["static_errors"]:
        fail("guest-detected-corruption", "destination guest found %d bad dirty words, %d bad "
             "static words; first at %#x: expected %#x found %#x" % (
                 after["errors"], after["static_errors"], after["first_bad_addr"],
                 after["first_bad_expected"], after["first_bad_found"]))


# ---- suites -----------------------------------------------------------------

def smoke_suite(opts):
    run = opts.run_seconds
    n = opts.provoke
    suite = [Scenario("plain-precopy", "plain", "precopy", run_seconds=run)]
    for i in range(opts.guarded_runs):
        sfx = "" if opts.guarded_runs == 1 else "-%d" % (i + 1)
        suite.append(Scenario("guard-precopy" + sfx, "guard", "precopy", n, opts.provoke_dst,
                              run_seconds=run))
        suite.append(Scenario("guard-postcopy" + sfx, "guard", "postcopy", n, opts.provoke_dst,
                              run_seconds=run))
    for i in range(opts.unprotected_runs):
        variant = "precopy" if i % 2 == 0 else "postcopy"
        suite.append(Scenario("off-%s-%d" % (variant, i + 1), "off", variant, n, None,
                              run_seconds=run, timeout=opts.unprotected_timeout,
                              expect_ok=False))
    return suite


def selftest_suite(opts):
    """rekeyguard-selftest: what a fleet rollout checks after installing."""
    n = opts.provoke
    suite = [Scenario("guard-precopy", "guard", "precopy", n, opts.provoke_dst,
                      run_seconds=opts.run_seconds),
             Scenario("guard-postcopy", "guard", "postcopy", n, opts.provoke_dst,
                      run_seconds=opts.run_seconds)]
    for i in range(opts.unprotected_runs if opts.control else 0):
        suite.append(Scenario("off-precopy-%d" % (i + 1), "off", "precopy", n, None,
                              run_seconds=opts.run_seconds, timeout=opts.unprotected_timeout,
                              expect_ok=False))
    return suite


def soak_suite(opts):
    return [Scenario("soak-%s-precopy" % opts.soak_protection, opts.soak_protection, "precopy",
                     None, None, until_bytes=int(opts.soak_gb * 1e9),
                     timeout=opts.soak_timeout, expect_ok=opts.soak_protection == "guard",
                     count_rekeys=opts.count_rekeys)]


def bench_suite(opts):
    """Alternate the kinds so that load from elsewhere hits them alike."""
    suite = []
    for i in range(opts.bench_rounds):
        suite.append(Scenario("bench-plain-%d" % (i + 1), "plain", "precopy",
                              run_seconds=opts.run_seconds))
        suite.append(Scenario("bench-guard-%d" % (i + 1), "guard", "precopy",
                              run_seconds=opts.run_seconds))
        suite.append(Scenario("bench-provoke-%d" % (i + 1), "guard", "precopy", opts.provoke,
                              opts.provoke_dst, run_seconds=opts.run_seconds))
    return suite


def median(values):
    values = sorted(values)
    if not values:
        return 0.0
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def fmt_result(r):
    m = r.get("migration", {})
    ku = r.get("key_updates", {})
    kus = " ".join("%s:%d%s" % (n, k["ok"], ("+%dERR" % k["failed"]) if k["failed"] else "")
                   for n, k in ku.items())
    parts = ["%-18s" % r["name"],
             "OK  " if r["ok"] else "FAIL",
             "%-8s" % (r["failure"] or "-"),
             "%6.1f GB" % (m.get("transferred", 0) / 1e9),
             "%6.0f MB/s" % r["mb_s"] if r.get("mb_s") else "   ? MB/s",
             "(active %4.0f)" % r["active_mb_s"] if r.get("active_mb_s") else "(active    ?)",
             "key updates %-12s" % (kus or "-"),
             "cpu s/GB src %4.2f dst %4.2f" % (r["cpu"]["src_s_per_gb"], r["cpu"]["dst_s_per_gb"])
             if r.get("cpu", {}).get("src_s_per_gb") else "cpu s/GB src    ? dst    ?",
             "%5.1f s" % r["wall_s"]]
    return "  ".join(parts)


def main():
    global LAUNCHER
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", choices=["smoke", "soak", "bench", "selftest"], default="smoke")
    ap.add_argument("--launcher", default=LAUNCHER,
                    help="run-qemu-with-shim to start QEMU through (default: the source tree's)")
    ap.add_argument("--control", action="store_true",
                    help="selftest: also migrate with the library switched off (expected to fail)")
    ap.add_argument("--bench-rounds", type=int, default=3,
                    help="bench: rounds of plain / guarded / guarded+provoked precopy")
    ap.add_argument("--guest", required=True, help="guest kernel (build-guest.sh)")
    ap.add_argument("--certs", required=True, help="certificate directory (mkcerts.sh)")
    ap.add_argument("--workdir", required=True, help="logs and scratch files go here")
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--guest-sleep", type=int, default=5,
                    help="guest pacing: 10 ms ticks of hlt after each pass over its RAM")
    ap.add_argument("--run-seconds", type=float, default=8.0,
                    help="migrate this long before stop/postcopy (smoke)")
    ap.add_argument("--provoke", default="10000",
                    help="REKEYGUARD_PROVOKE_REKEY for the source (smoke)")
    ap.add_argument("--provoke-dst", default="1",
                    help="REKEYGUARD_PROVOKE_REKEY for the destination in guarded runs "
                         "('' for none)")
    ap.add_argument("--guarded-runs", type=int, default=1,
                    help="smoke: guarded precopy + postcopy pairs")
    ap.add_argument("--unprotected-runs", type=int, default=4)
    ap.add_argument("--unprotected-timeout", type=float, default=40.0)
    ap.add_argument("--stall-seconds", type=float, default=20.0,
                    help="no bytes moving for this long = hang")
    ap.add_argument("--soak-gb", type=float, default=72.0)
    ap.add_argument("--soak-timeout", type=float, default=1800.0)
    ap.add_argument("--soak-protection", choices=["guard", "off", "plain"], default="guard")
    ap.add_argument("--no-count-rekeys", dest="count_rekeys", action="store_false",
                    help="soak: do not watch gnutls_session_key_update with gdb")
    ap.add_argument("--cores", choices=["none", "guarded", "all"], default="guarded",
                    help="let these runs dump core (QEMU without guest RAM) and save gdb "
                         "backtraces of a crash next to the logs")
    ap.add_argument("--only", help="comma-separated scenario names (smoke)")
    ap.add_argument("--no-backtraces", dest="backtraces", action="store_false")
    ap.add_argument("--no-debug-log", dest="log_debug", action="store_false",
                    help="do not set REKEYGUARD_LOG=debug (key updates are counted from it)")
    ap.add_argument("--json", help="write all results to this file")
    opts = ap.parse_args()
    if opts.provoke_dst == "":
        opts.provoke_dst = None
    LAUNCHER = opts.launcher

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    os.makedirs(opts.workdir, exist_ok=True)

    suite = {"smoke": smoke_suite, "soak": soak_suite, "bench": bench_suite,
             "selftest": selftest_suite}[opts.suite](opts)
    if opts.only:
        names = opts.only.split(",")
        suite = [s for s in suite if s.name in names]
    results = []
    t0 = time.monotonic()
    try:
        for sc in suite:
            log("rekeyguard qemu %s: %s (%s, %s, provoke src=%s dst=%s) ..." % (
                opts.suite, sc.name, sc.protection, sc.variant, sc.provoke_src or "-",
                sc.provoke_dst or "-"))
            r = run_scenario(sc, opts, opts.workdir, opts.guest, opts.certs)
            results.append(r)
            log("  " + fmt_result(r))
            for d in r["details"]:
                log("      " + d)
            if r.get("guest"):
                g = r["guest"]
                log("      destination guest: passes %d -> %d after 1 s, %d bad pages, static region "
                    "verified %d times%s%s" % (
                        g["passes_before"], g["passes_after"], g["errors"] + g["static_errors"],
                        g["static_rounds"],
                        ", RAM identical to the source (%d MiB)" % r["ram_identical_mb"]
                        if r.get("ram_identical_mb") else "",
                        ", %.1f s after the switch" % r["after_switch_s"]
                        if r.get("after_switch_s") else ""))
            if opts.suite == "soak":
                m = r.get("migration", {})
                records = 2 * m.get("normal_pages", 0)
                log("      about %d records sent (2 per page): about %d automatic key updates "
                    "expected (one per %d records)" % (records, records // RECORDS_PER_AUTO_REKEY,
                                                        RECORDS_PER_AUTO_REKEY))
                seen = r.get("gnutls_key_updates")
                if seen:
                    log("      gnutls_session_key_update calls seen by gdb: %s" % ", ".join(
                        "%s %s" % (n, "?" if c is None else c) for n, c in seen.items()))
    finally:
        kill_all_qemus()

    # summary
    log("")
    log("rekeyguard qemu %s summary (%.0f s):" % (opts.suite, time.monotonic() - t0))
    required = [r for r, sc in zip(results, suite) if sc.expect_ok]
    unprotected = [r for r, sc in zip(results, suite) if not sc.expect_ok]
    for r in results:
        log("  " + fmt_result(r))
    base = [r for r in results if r["protection"] == "plain" and r.get("mb_s")]
    guard = [r for r in results if r["protection"] == "guard" and r["variant"] == "precopy"
             and r.get("mb_s")]
    if base and guard:
        log("  throughput precopy: no library %.0f MB/s (active %.0f), guarded + provoked %.0f MB/s "
            "(active %.0f)" % (base[0]["mb_s"], base[0].get("active_mb_s") or 0,
                               guard[0]["mb_s"], guard[0].get("active_mb_s") or 0))
    if opts.suite == "bench":
        for kind, label in (("bench-plain", "no library"), ("bench-guard", "guarded"),
                            ("bench-provoke", "guarded + provoked")):
            rs = [r for r in results if r["name"].startswith(kind + "-") and r["ok"]]
            log("  %-20s %d ok runs: median %.0f MB/s overall, %.0f MB/s while the guest ran, "
                "CPU s/GB outside the vCPU: source %.2f, destination %.2f" % (
                    label, len(rs), median([r.get("mb_s") or 0 for r in rs]),
                    median([r.get("active_mb_s") or 0 for r in rs]),
                    median([r.get("cpu", {}).get("src_s_per_gb", 0) for r in rs]),
                    median([r.get("cpu", {}).get("dst_s_per_gb", 0) for r in rs])))
    if unprotected:
        failed = [r for r in unprotected if not r["ok"]]
        log("  unprotected (%s): %d of %d runs failed: %s" % (
            ", ".join(sorted(set("no library" if r["protection"] == "plain" else
                                 "REKEYGUARD_MODE=off" + (" + provocation" if r["provoke_src"] else "")
                                 for r in unprotected))),
            len(failed), len(unprotected),
            ", ".join("%s=%s" % (r["name"], r["failure"]) for r in failed) or "none"))
        if not failed:
            log("  (reported, not asserted: the bug did not show in these runs)")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    bad = [r for r in required if not r["ok"]]
    if bad:
        log("FAIL: %s" % ", ".join("%s (%s)" % (r["name"], r["failure"]) for r in bad))
        log("logs: %s" % opts.workdir)
        return 1
    log("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
