# The swap bench plot: completion time vs working set, one panel per workload, one line per
# backend (median of the rounds). Run by `cargo xtask bench --swap`: plot.py CSV PNG VM_MIB.
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import statistics
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["status"] == "ok"]
workloads = sorted({r["workload"] for r in rows}, key=["seq", "rand", "sort"].index)
backends = list(dict.fromkeys(r["backend"] for r in rows))
fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4), squeeze=False)
for ax, w in zip(axes[0], workloads):
    for b in backends:
        times = {}
        for r in rows:
            if r["workload"] == w and r["backend"] == b:
                times.setdefault(int(r["mib"]), []).append(int(r["ms"]) / 1000)
        # Median of the rounds, the lower middle one of an even count (as in the tables).
        pts = sorted((m, sorted(t)[(len(t) - 1) // 2]) for m, t in times.items())
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=b)
    ax.set_title(w)
    ax.set_xlabel("working set (MiB; VM has %s MiB)" % sys.argv[3])
    ax.set_ylabel("completion time (s, QEMU TCG; median of rounds)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
fig.suptitle("tmem swap benchmark: completion time vs working set (same run)")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=90)
