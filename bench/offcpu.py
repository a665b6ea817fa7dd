#!/usr/bin/python3
"""offcpu.py — where each benchmark thread waits, plain GnuTLS against
rekeyguard: an off-CPU profile of one workload (make bench-offcpu).

For each configuration (no preload, then librekeyguard.so) it runs
`rg-bench worker WORKLOAD` under `perf record -e sched:sched_switch -g`
(kernel call chains of every switch), then sums, per thread (named by its
role: bulk-send, tick-recv, ...), the time it spent off the CPU by what it
waited in: the session lock (futex), data to arrive (recv, poll), socket
buffer space (send), its own sleep, or the run queue (preempted). The
return-path figures are also given per delivered message, which is what
the latency percentiles of `make bench` are made of.

Needs perf (linux-perf) and root (tracepoints; tracefs is mounted if it is
not). Writes OUT/offcpu-WORKLOAD.md and prints it.
"""

import argparse
import collections
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)

# the first kernel frame below the scheduler that names the wait
REASONS = [
    ("lock (futex)", re.compile(r"futex")),
    ("send: socket buffer full", re.compile(r"sk_stream_wait_memory|wait_for_tcp_memory")),
    ("recv: data to arrive", re.compile(r"sk_wait_data|tcp_recvmsg|unix_stream_read|sock_recvmsg")),
    ("poll: data to arrive", re.compile(r"do_poll|do_sys_poll|do_select|ep_poll|core_sys_select")),
    ("own sleep", re.compile(r"nanosleep|hrtimer_nanosleep|do_nanosleep")),
]
SCHED = re.compile(r"^(__schedule|schedule|schedule_hrtimeout|schedule_timeout|preempt_schedule|"
                   r"io_schedule|__cond_resched|_cond_resched|schedule_preempt_disabled)")

EVENT = re.compile(r"^\s*(\S.*?)\s+(\d+)\s+(?:\[\d+\]\s+)?(\d+\.\d+):\s+sched:sched_switch:\s+(.*)$")
FIELDS = re.compile(r"(\w+)=(\S+)")


def ensure_tracefs():
    if os.path.isdir("/sys/kernel/tracing/events/sched"):
        return
    subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"],
                   stderr=subprocess.DEVNULL)


def record(out, name, preload, workload, seconds):
    data = os.path.join(out, "offcpu-%s-%s.data" % (workload, name))
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    cmd = ["perf", "record", "-q", "-e", "sched:sched_switch", "-g", "-o", data, "--",
           "env"] + (["LD_PRELOAD=" + preload] if preload else []) + \
          [os.path.join(HERE, "rg-bench"), "worker", workload, "--seconds", str(seconds)]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, env=env)
    result = next((l for l in p.stdout.splitlines() if l.startswith("RESULT")), "")
    if p.returncode != 0 or "status=ok" not in result:
        sys.exit("offcpu: %s: %s %s" % (" ".join(cmd), result, p.stderr.strip()[-400:]))
    lat = sorted(int(v) for l in p.stdout.splitlines() if l.startswith("LAT ")
                 for v in l.split()[1:])
    if lat:
        pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0
        result += " messages=%d p50_us=%.0f p99_us=%.0f" % (len(lat), pct(0.5), pct(0.99))
    return data, result


def parse(data):
    """Off-CPU nanoseconds per (thread name, reason), and count of waits."""
    p = subprocess.run(["perf", "script", "-i", data, "-F", "comm,tid,time,event,trace,ip,sym"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True)
    out_at = {}          # tid -> (time, reason, comm)
    names = {}
    total = collections.defaultdict(float)
    count = collections.defaultdict(int)
    waits = collections.defaultdict(list)    # lock waits, ns each
    first = last = None
    cur = None           # the event whose call chain is being read

    def close(ev):
        if ev is None:
            return
        tid, t, reason, comm = ev
        out_at[tid] = (t, reason or "other", comm)   # a chain naming no known wait

    for line in p.stdout.splitlines():
        m = EVENT.match(line)
        if m:
            close(cur)
            cur = None
            t = float(m.group(3))
            first = t if first is None else first
            last = t
            f = dict(FIELDS.findall(m.group(4)))
            prev, nxt = int(f.get("prev_pid", -1)), int(f.get("next_pid", -1))
            names.setdefault(prev, f.get("prev_comm", "?"))
            if nxt in out_at:    # the waiting thread runs again
                t0, reason, comm = out_at.pop(nxt)
                total[(comm, reason)] += (t - t0) * 1e9
                count[(comm, reason)] += 1
                if reason == "lock (futex)":
                    waits[comm].append((t - t0) * 1e9)
            if prev > 0:
                state = f.get("prev_state", "S")
                reason = "run queue (preempted)" if state.startswith("R") else None
                cur = [prev, t, reason, f.get("prev_comm", "?")]
            continue
        if cur is not None and cur[2] is None:
            parts = line.split()
            if len(parts) >= 2:
                sym = parts[1]
                if SCHED.match(sym):
                    continue
                for reason, rx in REASONS:
                    if rx.search(sym):
                        cur[2] = reason
                        break
    close(cur)
    return total, count, waits, (last - first) if first is not None else 0.0


def result_field(result, key):
    m = re.search(r"\b%s=(\S+)" % re.escape(key), result)
    return m.group(1) if m else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", default="cf", help="a rg-bench workload (cf, c, dl, ...)")
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="alternating plain/rekeyguard runs, pooled")
    ap.add_argument("--shim", default=os.path.join(TOP, "librekeyguard.so"))
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    opts = ap.parse_args()
    ensure_tracefs()
    os.makedirs(opts.out, exist_ok=True)
    runs = []
    configs = (("plain", None), ("rekeyguard", os.path.abspath(opts.shim)))
    pooled = {name: [[], collections.defaultdict(float), collections.defaultdict(int),
                     collections.defaultdict(list), 0.0] for name, _ in configs}
    for rnd in range(opts.rounds):          # alternating, so load hits both alike
        for name, preload in configs:
            data, result = record(opts.out, name, preload, opts.workload, opts.seconds)
            total, count, waits, span = parse(data)
            os.unlink(data)
            acc = pooled[name]
            acc[0].append(result)
            for k, v in total.items():
                acc[1][k] += v
                acc[2][k] += count[k]
            for k, v in waits.items():
                acc[3][k] += v
            acc[4] += span
            print("round %d %s: %s" % (rnd + 1, name, result), file=sys.stderr)
    for name, _ in configs:
        results, total, count, waits, span = pooled[name]
        runs.append((name, results, total, count, span, waits))

    threads = sorted({c for _, _, t, _, _, _ in runs for (c, _) in t
                      if c not in ("perf", "env", "rg-bench")})
    reasons = sorted({r for _, _, t, _, _, _ in runs for (_, r) in t})
    lines = ["# Off-CPU profile: workload %s, %d x %g s, plain GnuTLS against rekeyguard" % (
        opts.workload, opts.rounds, opts.seconds), "",
        "`make bench-offcpu` (bench/offcpu.py): `perf record -e sched:sched_switch -g` of "
        "`rg-bench worker %s`; per thread, milliseconds off the CPU per second of the run, "
        "by what the kernel call chain shows it waited in (waits per second in brackets)." % opts.workload,
        ""]
    for name, results, _, _, _, _ in runs:
        keys = ("value", "unit", "per_cpu", "messages", "p50_us", "p99_us")
        for i, result in enumerate(results):
            got = " ".join("%s=%s" % (k, result_field(result, k)) for k in keys
                           if result_field(result, k))
            lines.append("- %s, round %d: `%s`" % (name, i + 1, got or result))
    lines += ["", "| thread | wait | plain ms/s | rekeyguard ms/s |", "|---|---|--:|--:|"]
    for th in threads:
        for r in reasons:
            cells = []
            for name, _, total, count, span, _ in runs:
                v = total.get((th, r), 0.0) / 1e6 / span if span else 0
                n = count.get((th, r), 0) / span if span else 0
                cells.append("%.2f (%d)" % (v, n) if v or n else "—")
            if any(c != "—" for c in cells):
                lines.append("| %s | %s | %s | %s |" % (th, r, cells[0], cells[1]))
    lines += ["", "Each wait for the session lock, by thread (rekeyguard; plain GnuTLS takes "
              "no lock of its own):", "",
              "| thread | waits | mean µs | p50 µs | p90 µs | p99 µs |", "|---|--:|--:|--:|--:|--:|"]
    waits = runs[1][5]
    for th in threads:
        w = sorted(waits.get(th, []))
        if w:
            q = lambda x: w[min(len(w) - 1, int(x * len(w)))] / 1e3
            lines.append("| %s | %d | %.0f | %.0f | %.0f | %.0f |" % (
                th, len(w), sum(w) / len(w) / 1e3, q(0.5), q(0.9), q(0.99)))
    text = "\n".join(lines) + "\n"
    path = os.path.join(opts.out, "offcpu-%s.md" % opts.workload)
    with open(path, "w") as f:
        f.write(text)
    print(text)
    print("written: %s" % path)


if __name__ == "__main__":
    main()
