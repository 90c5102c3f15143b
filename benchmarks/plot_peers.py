"""The chart of benchmarks/compare_peers.py: train step and inference time per workload and
configuration, grouped bars on a log scale (W1 takes microseconds, the CNNs milliseconds).
Run by the runner with a Python that has matplotlib (never a kcompiler dependency):

    python benchmarks/plot_peers.py out/compare_peers.json docs/benchmarks-peers.png
"""
import json
import sys

LABELS = {"kc_fused": "kcompiler fused", "kc_unfused": "kcompiler unfused", "tf": "TF-Keras",
          "tf_xla": "TF-Keras XLA", "torch": "PyTorch eager", "torch_compile": "torch.compile"}


def main(results_path, png_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(results_path) as f:
        results = json.load(f)
    table = results["table"]
    workloads = list(table)
    configs = [k for k in LABELS if any(k in row for row in table.values())]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    width = 0.8 / max(len(configs), 1)
    for ax, what, title in ((axes[0], "train", "training step"), (axes[1], "infer", "inference (one batch)")):
        for i, key in enumerate(configs):
            xs, ys = [], []
            for j, w in enumerate(workloads):
                value = table[w].get(key, {}).get(what)
                if value:
                    xs.append(j + (i - (len(configs) - 1) / 2) * width)
                    ys.append(value * 1e3)
            ax.bar(xs, ys, width, label=LABELS[key])
        ax.set_yscale("log")
        ax.set_xticks(range(len(workloads)), workloads)
        ax.set_ylabel("ms (log scale)")
        ax.set_title(title)
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    m = results["machine"]
    fig.suptitle(f"kcompiler vs TF-Keras and PyTorch, {m['cpu_model']} ({m['llvm_cpu']}), {m['nproc']} CPUs, "
                 f"FMA peak {m['fma_peak_all']['gflops']:.0f} GFLOP/s, {results['date']}"
                 + (" (quick run)" if results["settings"]["quick"] else ""))
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:3])
