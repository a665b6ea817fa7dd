#!/usr/bin/python3
"""libvirt-migrate.py — `virsh migrate --live --p2p --tls` between two libvirt
hosts on this machine, with rekeyguard's launcher as the domain's <emulator>.

Run by `make libvirt-migrate` (tests/qemu/libvirt-migrate.sh installs the
packages, builds the tree and the guest); see --help. Needs root: it makes
namespaces and starts libvirt daemons. Standard library only.

Two "hosts", rg-host-a and rg-host-b, each a network, mount and UTS
namespace made here (unshare): their only addresses are 10.77.0.1 and
10.77.0.2 on a veth pair between them (plus their own loopback). Each has
its own /etc (an overlay: libvirtd.conf with its own host_uuid, qemu.conf
with migrate_tls_x509_cert_dir and migrate_tls_x509_verify, /etc/hosts,
/etc/rekeyguard/qemu.conf), its own /run, /var/lib/libvirt,
/var/log/libvirt and /var/cache/libvirt, and Debian's libvirtd and virtlogd
(libvirt-daemon-system) running in it. rekeyguard is installed from the
tree (make install PREFIX=/usr/local, seen by both hosts through an overlay
on /usr/local); the domain's <emulator> is the launcher's QEMU-named
symlink /usr/local/libexec/rekeyguard/qemu-system-x86_64.

The domain boots the smoke test's guest (guest/guest.c), which keeps
dirtying and checking its memory. Migrations (virsh on the source host,
peer to peer, --tls): precopy (the domain is suspended after --precopy-seconds
if it has not converged) and postcopy (virsh migrate --postcopy, then
virsh migrate-postcopy), a->b and b->a, with key updates provoked through
REKEYGUARD_PROVOKE_REKEY in /etc/rekeyguard/qemu.conf. Each must complete;
the destination guest must run on with no bad word; the source and
destination QEMU logs must carry the library's notice; rekeyguard-status
must report the source QEMU (before) and the destination QEMU (after)
protected. Then --control-runs migrations with REKEYGUARD_MODE=off in both
configuration files: their outcome is reported, not asserted (the race is
not deterministic), but rekeyguard-status must report them unprotected.

Every libvirtd, virtlogd and QEMU started here is killed when the run ends.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
# the guest's status block and the library's log lines, as the QMP tests read them
from migrate import KEY_UPDATE_RE, NOTICE, STATUS_ADDR, STATUS_KEYS, STATUS_MAGIC  # noqa: E402

LOG_HEADER_RE = re.compile(r"starting up libvirt version")
DOMAIN = "rekeyguard-migrate"
EMULATOR = "/usr/local/libexec/rekeyguard/qemu-system-x86_64"
# each host's daemons, pid files in its own /run
VIRTLOGD = ["virtlogd", "--pid-file", "/run/virtlogd.pid"]
LIBVIRTD = ["libvirtd", "--listen", "--pid-file", "/run/libvirtd.pid"]
GUEST_PATH = "/var/lib/libvirt/images/rekeyguard-guest.elf"
PKI = "/etc/pki/libvirt-migrate"     # libvirt's default migrate_tls_x509_cert_dir
T0 = time.monotonic()


def log(msg):
    print("[%6.1fs] %s" % (time.monotonic() - T0, msg), flush=True)


class Failure(Exception):
    pass


def run(cmd, check=True, timeout=60, **kw):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise Failure("%s: exit %d: %s" % (" ".join(cmd), p.returncode, p.stdout.strip()))
    return p


# ---- one libvirt "host" ------------------------------------------------------

class Host:
    def __init__(self, name, addr, work):
        self.name = name            # a | b
        self.hostname = "rg-host-" + name
        self.addr = addr
        self.dir = os.path.join(work, "host-" + name)
        self.uuid = str(uuid.uuid4())
        self.holder = None          # the process that keeps the namespaces
        self.daemons = []

    def path(self, *p):
        return os.path.join(self.dir, *p)

    def ns(self, cmd):
        return ["nsenter", "-t", str(self.holder.pid), "-n", "-m", "-u", "--"] + cmd

    def sh(self, cmd, **kw):
        return run(self.ns(cmd), **kw)

    def virsh(self, *args, check=True, timeout=60):
        return run(self.ns(["virsh", "-c", "qemu:///system"] + list(args)),
                   check=check, timeout=timeout)

    # files the host's libvirt and rekeyguard read, in the overlays
    def prepare(self, inst, pki, guest, provoke, mode):
        etc = self.path("etc-upper")
        for d in ("etc-upper/libvirt", "etc-upper/rekeyguard", "etc-work", "run/libvirt",
                  "run/lock"):
            os.makedirs(self.path(d), exist_ok=True)
        certs = os.path.join(etc, PKI[len("/etc/"):])
        shutil.copytree(pki, certs)
        for f in os.listdir(certs):   # QEMU runs as libvirt-qemu and reads them itself
            os.chmod(os.path.join(certs, f), 0o644)
        with open(os.path.join(etc, "hosts"), "w") as f:
            f.write("127.0.0.1\tlocalhost\n10.77.0.1\trg-host-a\n10.77.0.2\trg-host-b\n")
        with open(os.path.join(etc, "hostname"), "w") as f:
            f.write(self.hostname + "\n")
        with open(os.path.join(etc, "libvirt/libvirtd.conf"), "w") as f:
            f.write("# rekeyguard libvirt-migrate: host %s\n"
                    "listen_tls = 0\nlisten_tcp = 1\nlisten_addr = \"%s\"\n"
                    "auth_tcp = \"none\"\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n"
                    "host_uuid = \"%s\"\n"
                    "log_outputs = \"1:file:/var/log/libvirt/libvirtd.log\"\n"
                    "log_filters = \"1:qemu.qemu_monitor 1:qemu.qemu_migration 3:*\"\n"
                    % (self.hostname, self.addr, self.uuid))
        with open(os.path.join(etc, "libvirt/qemu.conf"), "w") as f:
            f.write("# rekeyguard libvirt-migrate: host %s\n"
                    "migrate_tls_x509_cert_dir = \"%s\"\n"
                    "migrate_tls_x509_verify = 1\n"
                    "migration_address = \"%s\"\n"
                    % (self.hostname, PKI, self.addr)
                    + QEMU_CONF_EXTRA)
        self.write_rekeyguard_conf(provoke, mode)
        for d in ("var-lib-libvirt", "var-log-libvirt", "var-cache-libvirt"):
            src = "/" + d.replace("-", "/", 2)
            run(["cp", "-a", src, self.path(d)])
        for f in os.listdir(self.path("var-log-libvirt/qemu")):   # the host's own domains' logs
            os.unlink(self.path("var-log-libvirt/qemu", f))
        kernel = self.path("var-lib-libvirt", GUEST_PATH[len("/var/lib/libvirt/"):])
        shutil.copy(guest, kernel)
        os.chmod(kernel, 0o644)
        self.inst = inst

    def write_rekeyguard_conf(self, provoke, mode):
        with open(self.path("etc-upper/rekeyguard/qemu.conf"), "w") as f:
            f.write("# rekeyguard libvirt-migrate: host %s\n"
                    "QEMU=/usr/bin/qemu-system-x86_64\n"
                    "REKEYGUARD_LOG=debug\n" % self.hostname)
            if provoke:
                f.write("REKEYGUARD_PROVOKE_REKEY=%s\n" % provoke)
            if mode:
                f.write("REKEYGUARD_MODE=%s\n" % mode)

    def start(self):
        # unshare: new network, mount (private propagation) and UTS namespaces
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--uts", "--propagation", "private", "--",
             "sh", "-c", "hostname %s && ip link set lo up && echo ready && exec sleep infinity"
             % self.hostname], stdout=subprocess.PIPE, universal_newlines=True,
            preexec_fn=os.setsid)
        if self.holder.stdout.readline().strip() != "ready":
            raise Failure("host %s: unshare failed" % self.name)
        mounts = [
            ["mount", "-t", "overlay", "overlay", "-o",
             "lowerdir=/etc,upperdir=%s,workdir=%s" % (self.path("etc-upper"), self.path("etc-work")),
             "/etc"],
            ["mount", "-t", "overlay", "overlay", "-o",
             "lowerdir=%s:/usr/local" % os.path.join(self.inst, "usr/local"), "/usr/local"],
            ["mount", "--bind", self.path("run"), "/run"],
            ["mount", "--bind", self.path("var-lib-libvirt"), "/var/lib/libvirt"],
            ["mount", "--bind", self.path("var-log-libvirt"), "/var/log/libvirt"],
            ["mount", "--bind", self.path("var-cache-libvirt"), "/var/cache/libvirt"],
        ]
        for m in mounts:
            self.sh(m)

    def spawn(self, cmd):
        with open(self.path("daemons.out"), "a") as logs:
            self.daemons.append(subprocess.Popen(self.ns(cmd), stdout=logs, stderr=logs,
                                                 preexec_fn=os.setsid))

    def start_daemons(self):
        self.spawn(VIRTLOGD)
        self.spawn(LIBVIRTD)

    def wait_daemons(self):
        deadline = time.monotonic() + 30
        while True:
            p = self.virsh("hostname", check=False, timeout=10)
            if p.returncode == 0:
                break
            if time.monotonic() > deadline or any(d.poll() is not None for d in self.daemons):
                raise Failure("host %s: libvirtd did not come up: %s\n%s" % (
                    self.name, p.stdout.strip(), tail(self.path("daemons.out"))))
            time.sleep(0.3)
        got = p.stdout.strip()
        if got != self.hostname:
            raise Failure("host %s: virsh hostname says %r" % (self.name, got))
        caps = self.virsh("capabilities").stdout
        if self.uuid not in caps:
            raise Failure("host %s: capabilities do not carry host_uuid %s" % (self.name, self.uuid))

    def restart_libvirtd(self):
        d = self.daemons.pop()          # libvirtd, started last
        os.killpg(d.pid, signal.SIGKILL)
        d.wait()
        self.spawn(LIBVIRTD)
        self.wait_daemons()

    def qemu_pid(self):
        try:
            with open(self.path("run/libvirt/qemu", DOMAIN + ".pid")) as f:
                pid = int(f.read().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def qemu_log(self):
        p = self.path("var-log-libvirt/qemu", DOMAIN + ".log")
        try:
            with open(p, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def state(self):
        p = self.virsh("domstate", DOMAIN, check=False)
        return p.stdout.strip() if p.returncode == 0 else "absent"

    def guest_status(self):
        p = self.virsh("qemu-monitor-command", DOMAIN, "--hmp", "xp /16wx 0x%x" % STATUS_ADDR)
        # "0000000000180000: 0x.... 0x.... 0x.... 0x....": only the words carry 0x
        words = [int(w, 16) for w in re.findall(r"0x([0-9a-f]{8})", p.stdout)]
        return dict(zip(STATUS_KEYS, words[:16]))

    def rekeyguard_status(self, pid):
        p = self.sh(["rekeyguard-status", "--json", str(pid)], check=False)
        try:
            return json.loads(p.stdout)[0]
        except (ValueError, IndexError):
            return {"state": "unreadable", "raw": p.stdout.strip()}

    def stop(self):
        pid = self.qemu_pid() if self.holder else None
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for d in self.daemons + ([self.holder] if self.holder else []):
            try:
                os.killpg(d.pid, signal.SIGKILL)
            except OSError:
                pass
            d.wait()
        self.daemons = []
        self.holder = None


QEMU_CONF_EXTRA = """\
# This machine has no AppArmor or SELinux in the kernel.
security_driver = "none"
"""


def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def domain_xml(guest_sleep):
    return """<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%s</kernel>
    <cmdline>sleep=%d</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>%s</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
""" % (DOMAIN, GUEST_PATH, guest_sleep, EMULATOR)


# ---- the checks --------------------------------------------------------------

def wait_guest(host, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        st = host.guest_status()
        if st.get("magic") == STATUS_MAGIC and st.get("passes", 0) >= 1:
            return st
        if time.monotonic() > deadline:
            raise Failure("host %s: the guest did not boot: %r" % (host.name, st))
        time.sleep(0.5)


def last_segment(text):
    """The part of a domain log that the latest QEMU start wrote."""
    starts = [m.start() for m in LOG_HEADER_RE.finditer(text)]
    return text[starts[-1]:] if starts else text


def jobinfo(host, completed=True):
    p = host.virsh("domjobinfo", *(["--completed"] if completed else []), DOMAIN,
                   check=False, timeout=20)
    out = {}
    if p.returncode != 0:     # e.g. a transient domain that left with the migration
        return out
    for line in p.stdout.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def caps_from_libvirtd_log(host, since):
    """migrate-set-capabilities that libvirtd sent to QEMU after offset since."""
    path = host.path("var-log-libvirt", "libvirtd.log")
    try:
        with open(path, errors="replace") as f:
            f.seek(since)
            text = f.read()
    except OSError:
        return {}
    caps = {}
    for m in re.finditer(r'"execute":"migrate-set-capabilities","arguments":\{"capabilities":(\[.*?\])', text):
        try:
            for c in json.loads(m.group(1)):
                caps[c["capability"]] = c["state"]
        except ValueError:
            pass
    return caps


def log_size(host):
    try:
        return os.path.getsize(host.path("var-log-libvirt", "libvirtd.log"))
    except OSError:
        return 0


def migrate(src, dst, variant, opts, protected):
    """One virsh migrate; returns a result dict (ok, failure, figures)."""
    res = {"from": src.name, "to": dst.name, "variant": variant,
           "protection": "guard" if protected else "off", "ok": False, "failure": None,
           "details": []}

    def fail(kind, detail=""):
        if res["failure"] is None:
            res["failure"] = kind
        if detail:
            res["details"].append(detail)

    src_pid = src.qemu_pid()
    before = src.guest_status()
    st = src.rekeyguard_status(src_pid)
    res["status_src"] = st.get("state")
    want = "protected" if protected else "unprotected"
    if st.get("state") != want:
        fail("status-src", "rekeyguard-status on %s said %r for the source QEMU %s, want %s: %s" % (
            src.hostname, st.get("state"), src_pid, want, st.get("advice", st)))
    since = log_size(src)
    dst_since = log_size(dst)
    cmd = ["migrate", "--live", "--p2p", "--tls", "--verbose"]
    if variant == "precopy":
        cmd += ["--timeout", str(int(opts.precopy_seconds)), "--timeout-suspend"]
    else:
        cmd += ["--postcopy"]
    cmd += [DOMAIN, "qemu+tcp://%s/system" % dst.hostname]
    t0 = time.monotonic()
    proc = subprocess.Popen(src.ns(["virsh", "-c", "qemu:///system"] + cmd),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True, preexec_fn=os.setsid)
    switched = False
    deadline = t0 + opts.migrate_timeout
    running = {}      # the job's figures while it runs (a transient source forgets them)
    while proc.poll() is None:
        ji = jobinfo(src, completed=False)
        if ji.get("Data processed"):
            running = ji
        now = time.monotonic()
        if variant == "postcopy" and not switched and now - t0 >= opts.postcopy_after:
            p = src.virsh("migrate-postcopy", DOMAIN, check=False, timeout=30)
            switched = True
            if p.returncode != 0:
                fail("migrate-postcopy", p.stdout.strip())
        if now > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            src.virsh("domjobabort", DOMAIN, check=False, timeout=30)
            fail("timeout", "virsh migrate did not finish in %.0f s" % opts.migrate_timeout)
            break
        time.sleep(0.2)
    out = proc.communicate()[0]
    res["seconds"] = round(time.monotonic() - t0, 1)
    if proc.returncode != 0 and res["failure"] is None:
        fail("virsh-migrate", out.strip().splitlines()[-1] if out.strip() else "exit %s" % proc.returncode)
    res["caps"] = caps_from_libvirtd_log(src, since) or caps_from_libvirtd_log(dst, dst_since)

    # a transient domain's completed job vanishes with it on the source
    ji = (jobinfo(src) if proc.returncode == 0 else {}) or running
    res["bytes"] = ji.get("Data processed") or "?"

    # the destination runs the guest on, and its self-checks stay clean
    time.sleep(0.5)
    src_text = last_segment(src.qemu_log())
    dst_text = last_segment(dst.qemu_log())
    for who, text in (("source", src_text), ("destination", dst_text)):
        if "shutting down, reason=crashed" in text:
            res["failure"] = "%s-qemu-crashed" % who   # the cause, not virsh's symptom
            res["details"].append("libvirt: the %s QEMU crashed (shutting down, "
                                  "reason=crashed)" % who)
    if res["failure"]:
        pass     # a failed migration leaves nothing to check on the destination
    elif dst.state() != "running":
        fail("destination-not-running", "%s: domstate %s" % (dst.hostname, dst.state()))
    else:
        try:
            a = dst.guest_status()
            time.sleep(1.5)
            b = dst.guest_status()
            res["guest"] = {k: b.get(k) for k in ("passes", "errors", "static_errors", "fault")}
            if a.get("magic") != STATUS_MAGIC:
                fail("guest-status", "destination status block: %r" % a)
            elif b["passes"] <= a["passes"] or b["passes"] < before["passes"]:
                fail("guest-stalled", "passes %d -> %d (source had %d)" % (
                    a["passes"], b["passes"], before["passes"]))
            elif b["errors"] or b["static_errors"] or b["fault"]:
                fail("guest-detected-corruption", "destination guest: %d bad dirty words, "
                     "%d bad static words, fault %d; first at %#x: expected %#x found %#x" % (
                         b["errors"], b["static_errors"], b["fault"], b["first_bad_addr"],
                         b["first_bad_expected"], b["first_bad_found"]))
        except Failure as e:
            fail("guest-status", str(e))

    res["key_updates"] = {"src": len(KEY_UPDATE_RE.findall(src_text)),
                          "dst": len(KEY_UPDATE_RE.findall(dst_text))}
    if protected:
        for who, text in (("source", src_text), ("destination", dst_text)):
            if NOTICE not in text:
                fail("no-notice", "the %s QEMU log has no %r" % (who, NOTICE))
        if res["key_updates"]["src"] == 0:
            fail("no-key-update", "the source QEMU log shows no provoked key update")
    dst_pid = dst.qemu_pid()
    if dst_pid:
        st = dst.rekeyguard_status(dst_pid)
        res["status_dst"] = st.get("state")
        if st.get("state") != want:
            fail("status-dst", "rekeyguard-status on %s said %r for the destination QEMU %s, "
                 "want %s" % (dst.hostname, st.get("state"), dst_pid, want))
    errs = [l for l in (src_text + dst_text).splitlines()
            if re.search(r"[Dd]ecrypt|TLS|gnutls|error|Error|failed", l) and "rekeyguard:" not in l]
    res["log_errors"] = errs[-4:]
    res["ok"] = res["failure"] is None
    return res


def restart_on(a, b, failed_postcopy):
    """Start the domain afresh on a after a failed migration. After a failed
    postcopy libvirt keeps the source's "migration out" job for a
    --postcopy-resume, even once its QEMU is gone, and no start gets the
    domain until the job is dropped (virsh destroy on both hosts did not
    drop it, in libvirt 9.0); restarting the source's libvirtd does."""
    for h in (b, a):
        h.virsh("destroy", DOMAIN, check=False, timeout=60)
    if failed_postcopy:
        log("host a: restarting libvirtd to drop the failed postcopy's migration job")
        a.restart_libvirtd()
    a.virsh("start", DOMAIN, timeout=90)
    wait_guest(a)


def describe(r):
    ku = r.get("key_updates", {})
    caps = r.get("caps", {})
    capstr = ",".join(k for k in ("return-path", "postcopy-ram") if caps.get(k)) or "none"
    return ("%-5s %-8s %s->%s  %5.1fs  bytes %-10s  key updates src %d dst %d  caps %s  "
            "status %s/%s  %s" % (
                r["protection"], r["variant"], r["from"], r["to"], r.get("seconds", 0),
                r.get("bytes", "?"), ku.get("src", 0), ku.get("dst", 0), capstr,
                r.get("status_src"), r.get("status_dst"),
                "PASS" if r["ok"] else "FAIL (%s)" % r["failure"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--install", required=True, help="DESTDIR of make install PREFIX=/usr/local")
    ap.add_argument("--guest", required=True, help="the guest kernel (build-guest.sh)")
    ap.add_argument("--quick", action="store_true",
                    help="one guarded precopy each way, one unprotected control run")
    ap.add_argument("--provoke", default="1000",
                    help="REKEYGUARD_PROVOKE_REKEY in both hosts' /etc/rekeyguard/qemu.conf")
    ap.add_argument("--precopy-seconds", type=float, default=8,
                    help="virsh migrate --timeout: suspend the domain after this long")
    ap.add_argument("--postcopy-after", type=float, default=4,
                    help="virsh migrate-postcopy this long after the migration started")
    ap.add_argument("--migrate-timeout", type=float, default=120)
    ap.add_argument("--control-runs", type=int, default=None,
                    help="migrations with REKEYGUARD_MODE=off (default 2, --quick 1)")
    ap.add_argument("--guest-sleep", type=int, default=5)
    opts = ap.parse_args()
    if opts.control_runs is None:
        opts.control_runs = 1 if opts.quick else 2
    if os.geteuid() != 0:
        print("libvirt-migrate: needs root (namespaces, libvirtd)", file=sys.stderr)
        return 2

    work = opts.workdir
    pki = os.path.join(work, "pki")
    run([os.path.join(HERE, "mkcerts.sh"), pki, "rg-host-a", "rg-host-b", "10.77.0.1", "10.77.0.2"])
    hosts = {"a": Host("a", "10.77.0.1", work), "b": Host("b", "10.77.0.2", work)}
    veth = ("rgm%da" % os.getpid(), "rgm%db" % os.getpid())
    results = []
    uffd = "/proc/sys/vm/unprivileged_userfaultfd"
    uffd_was = None
    try:
        with open(uffd) as f:
            if f.read().strip() == "0" and (not opts.quick or opts.control_runs > 1):
                # postcopy: QEMU 7.2 runs as libvirt-qemu and needs the
                # userfaultfd system call (it does not use /dev/userfaultfd)
                uffd_was = "0"
        if uffd_was is not None:
            with open(uffd, "w") as f:
                f.write("1")
            log("postcopy: set vm.unprivileged_userfaultfd=1 for this run (it was 0): QEMU "
                "running as libvirt-qemu cannot use userfaultfd otherwise")
    except OSError:
        pass
    try:
        for h in hosts.values():
            h.prepare(opts.install, pki, opts.guest, opts.provoke, None)
            h.start()
        run(["ip", "link", "add", veth[0], "type", "veth", "peer", "name", veth[1]])
        for h, v in zip(hosts.values(), veth):
            run(["ip", "link", "set", v, "netns", str(h.holder.pid)])
            h.sh(["ip", "addr", "add", h.addr + "/24", "dev", v])
            h.sh(["ip", "link", "set", v, "up"])
        for h in hosts.values():
            h.start_daemons()
        for h in hosts.values():
            h.wait_daemons()
            log("host %s: %s (%s), libvirtd and virtlogd up, host_uuid %s" % (
                h.name, h.hostname, h.addr, h.uuid))
        a, b = hosts["a"], hosts["b"]
        xml = os.path.join(work, "domain.xml")
        with open(xml, "w") as f:
            f.write(domain_xml(opts.guest_sleep))
        a.virsh("define", xml)
        t = time.monotonic()
        a.virsh("start", DOMAIN, timeout=90)
        st = wait_guest(a)
        log("host a: domain started through %s (QEMU pid %s) in %.1f s, guest pass %d" % (
            EMULATOR, a.qemu_pid(), time.monotonic() - t, st["passes"]))

        # the domain XML travels with its <emulator>: a destination without
        # the launcher must refuse the migration, and the domain stay put
        empty = os.path.join(work, "empty")
        os.makedirs(empty, exist_ok=True)
        b.sh(["mount", "--bind", empty, os.path.dirname(EMULATOR)])
        t = time.monotonic()
        p = a.virsh("migrate", "--live", "--p2p", "--tls", DOMAIN,
                    "qemu+tcp://%s/system" % b.hostname, check=False, timeout=120)
        b.sh(["umount", os.path.dirname(EMULATOR)])
        msg = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
        refused = {"from": "a", "to": "b", "variant": "no-launcher", "protection": "guard",
                   "seconds": round(time.monotonic() - t, 1), "details": [msg],
                   "ok": p.returncode != 0 and EMULATOR in msg and a.state() == "running",
                   "status_src": "-", "status_dst": "-"}
        refused["failure"] = None if refused["ok"] else "not-refused"
        results.append(refused)
        log("destination without the launcher: virsh migrate %s in %.1f s: %s" % (
            "refused" if p.returncode else "SUCCEEDED", refused["seconds"], msg))

        plan = [("precopy", a, b), ("precopy", b, a)]
        if not opts.quick:
            plan += [("postcopy", a, b), ("postcopy", b, a)]
        for variant, src, dst in plan:
            r = migrate(src, dst, variant, opts, True)
            results.append(r)
            log(describe(r))
            for d in r["details"]:
                log("      " + d)
            if not r["ok"]:
                break

        # control: the library switched off in both configuration files
        if all(r["ok"] for r in results) and opts.control_runs:
            for h in hosts.values():
                h.write_rekeyguard_conf(opts.provoke, "off")
            for i in range(opts.control_runs):
                variant = "precopy" if i % 2 == 0 else "postcopy"
                restart_on(a, b, bool(results) and results[-1].get("control") and
                           results[-1]["variant"] == "postcopy" and not results[-1]["ok"])
                r = migrate(a, b, variant, opts, False)
                r["control"] = True
                results.append(r)
                log(describe(r))
                for d in r["details"] + r.get("log_errors", []):
                    log("      " + d)
    except Failure as e:
        log("FAIL: %s" % e)
        results.append({"ok": False, "failure": "setup", "details": [str(e)]})
    finally:
        for h in hosts.values():
            h.stop()
        run(["ip", "link", "del", veth[0]], check=False)
        if uffd_was is not None:
            with open(uffd, "w") as f:
                f.write(uffd_was)

    guarded = [r for r in results if not r.get("control") and r.get("variant") != "no-launcher"]
    checks = [r for r in results if r.get("variant") == "no-launcher"]
    control = [r for r in results if r.get("control")]
    # the control runs: only the status verdict is asserted
    control_bad = [r for r in control if r.get("failure", "").startswith("status")]
    log("== libvirt-migrate summary (libvirt %s, QEMU %s)" % (LIBVIRT_VERSION, QEMU_VERSION))
    for r in results:
        if r.get("variant") == "no-launcher":
            log("  destination without the launcher: %s" % (
                "refused, domain stays on the source" if r["ok"] else "FAIL: " + "; ".join(r["details"])))
        elif "variant" in r:
            log("  " + describe(r))
    if control:
        log("  library off (REKEYGUARD_MODE=off in qemu.conf): %d of %d migrations failed: %s" % (
            sum(1 for r in control if not r["ok"]), len(control),
            ", ".join("%s %s" % (r["variant"], r["failure"] or "completed") for r in control)))
    ok = guarded and all(r["ok"] for r in guarded + checks) and not control_bad
    log("libvirt-migrate: %s" % ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


def version(cmd):
    try:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, universal_newlines=True).stdout
    except OSError:
        return "?"
    m = re.search(r"(\d+\.\d+\.\d+)", out)
    return m.group(1) if m else "?"


LIBVIRT_VERSION = version(["libvirtd", "--version"])
QEMU_VERSION = version(["qemu-system-x86_64", "--version"])

if __name__ == "__main__":
    sys.exit(main())
