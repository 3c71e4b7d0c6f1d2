#!/usr/bin/python3
"""tools/bench/ingest_scale_summary.py DIR --threads T --store-bytes B --gz-bytes G --n N — the summary of
tools/bench/ingest_scale.sh from DIR/runs.txt, DIR/log.run*.jsonl (`mrisam ingest --log`) and DIR/samples.csv:
sources/s, volumes/s and MB/s per decile of the committed sources (steady?), resident memory after warm-up
(flat?), the longest gap between commits and the slowest commits with data.mdb's size there (stalls at map
growth?), and a projection to 110,000 volumes on a 16-core node. Prints text; writes DIR/summary.json."""
import argparse
import csv
import json
import os

WARMUP = 0.1  # resident memory is judged after the first tenth of each run (buffers still growing)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--store-bytes", type=int, required=True)
    ap.add_argument("--gz-bytes", type=int, required=True)
    ap.add_argument("--n", type=int, required=True)
    a = ap.parse_args()
    d = a.dir
    starts, t0 = {}, None
    for line in open(f"{d}/runs.txt"):
        f = line.split()
        if f[2] == "t0":
            t0 = float(f[0])
        elif f[2] == "start":
            starts[int(f[1])] = float(f[0])
    # every committed source on one clock (seconds since the first run started); dt = time since the previous
    # commit of the same run (the first: since the run started, listing and skipping included)
    rows = []
    for r in sorted(starts):
        path = f"{d}/log.run{r}.jsonl"
        prev = 0.0
        for s in open(path) if os.path.exists(path) else []:
            x = json.loads(s)
            x["run"], x["dt"], x["T"] = r, x["t"] - prev, starts[r] - t0 + x["t"]
            prev = x["t"]
            rows.append(x)
    out = {"sources_logged": len(rows), "threads": a.threads}
    print(f"{len(rows)} sources committed over {len(starts)} runs (killed once, resumed), {a.threads} threads")
    if not rows:
        return
    # deciles by committed sources
    print(f"{'decile':>6} {'sources':>8} {'volumes':>8} {'busy s':>8} {'src/s':>7} {'vol/s':>7} {'gz MB/s':>8} "
          f"{'vox MB/s':>9} {'data.mdb GB':>12}")
    dec = []
    for k in range(10):
        part = rows[len(rows) * k // 10: len(rows) * (k + 1) // 10]
        if not part:
            continue
        busy = sum(x["dt"] for x in part)
        e = {"decile": k + 1, "sources": len(part), "volumes": sum(x["volumes"] for x in part), "busy_s": busy,
             "sources_per_s": len(part) / busy, "volumes_per_s": sum(x["volumes"] for x in part) / busy,
             "gz_mb_per_s": sum(x["source_bytes"] for x in part) / busy / 1e6,
             "voxel_mb_per_s": sum(x["voxel_bytes"] for x in part) / busy / 1e6,
             "mdb_gb_end": part[-1]["mdb_bytes"] / 1e9}
        dec.append(e)
        print(f"{e['decile']:>6} {e['sources']:>8} {e['volumes']:>8} {busy:>8.1f} {e['sources_per_s']:>7.2f} "
              f"{e['volumes_per_s']:>7.2f} {e['gz_mb_per_s']:>8.1f} {e['voxel_mb_per_s']:>9.1f} "
              f"{e['mdb_gb_end']:>12.3f}")
    rates = [e["sources_per_s"] for e in dec]
    spread = (max(rates) - min(rates)) / (sum(rates) / len(rates))
    print(f"throughput: deciles from {min(rates):.2f} to {max(rates):.2f} sources/s (spread {100 * spread:.0f} % "
          f"of the mean; first and last deciles {rates[0]:.2f} and {rates[-1]:.2f})")
    out["deciles"] = dec
    # resident memory after warm-up, per run
    samples = list(csv.DictReader(open(f"{d}/samples.csv")))
    out["rss"] = {}
    for r in sorted(starts):
        run = [s for s in samples if int(s["run"]) == r and int(s["sources"]) > 0]  # from the first commit on
        rss = [int(s["rss_kb"]) / 1024 for s in run[int(len(run) * WARMUP):]]
        if rss:
            out["rss"][r] = {"min_mb": min(rss), "max_mb": max(rss), "samples": len(rss)}
            print(f"resident memory, run {r}, after its first tenth: {min(rss):.0f} to {max(rss):.0f} MB "
                  f"({len(rss)} samples, one a second)")
        else:
            print(f"resident memory, run {r}: no sample (a run under a second)")
    # stalls: the longest gap between commits (within a run, the first commit of each run aside) and the slowest
    # commits, with the map's size there
    gaps = [x for i, x in enumerate(rows) if i and rows[i - 1]["run"] == x["run"]]
    g = max(gaps or rows, key=lambda x: x["dt"])
    mean_dt = sum(x["dt"] for x in rows) / len(rows)
    print(f"longest gap between commits: {g['dt']:.2f} s before source {g['source']} (run {g['run']}; mean "
          f"{mean_dt:.2f} s; data.mdb {g['mdb_bytes'] / 1e9:.3f} GB there)")
    slow = sorted(rows, key=lambda x: -x["commit_ms"])[:3]
    print("slowest commits: " + ", ".join(f"{x['commit_ms']:.0f} ms (source {x['source']}, data.mdb "
                                          f"{x['mdb_bytes'] / 1e9:.3f} GB)" for x in slow)
          + f"; median {sorted(x['commit_ms'] for x in rows)[len(rows) // 2]:.1f} ms")
    out["longest_gap_s"], out["mean_gap_s"] = g["dt"], mean_dt
    # the first commit of each run waits for the listing, the pipeline's first volumes and, on a resume, the hashing
    # of every source already stored
    firsts = {}
    for x in rows:
        firsts.setdefault(x["run"], x["t"])
    print("first commit: " + ", ".join(f"run {r} after {t:.2f} s" for r, t in firsts.items()))
    out["first_commit_s"] = firsts
    out["slowest_commits_ms"] = [x["commit_ms"] for x in slow]
    # projection: the whole run's rate (busy time), per core assuming linear scaling in cores
    busy = sum(x["dt"] for x in rows)
    src_s = len(rows) / busy
    per_core = src_s / a.threads
    node = per_core * 16
    n_target = 110_000
    gz_per = a.gz_bytes / a.n
    store_per = a.store_bytes / a.n
    proj = {"sources_per_s": src_s, "per_core_sources_per_s": per_core, "node16_sources_per_s": node,
            "hours_110k_one_core": n_target / per_core / 3600, "hours_110k_node16": n_target / node / 3600,
            "gz_tb_110k": gz_per * n_target / 1e12, "store_tb_110k": store_per * n_target / 1e12,
            "store_over_gz": a.store_bytes / a.gz_bytes}
    out["projection"] = proj
    print(f"store: {a.store_bytes / 1e9:.2f} GB (du -sb) for {a.gz_bytes / 1e9:.2f} GB of .nii.gz "
          f"({proj['store_over_gz']:.3f})")
    print(f"projection to {n_target} volumes (sources), assuming throughput linear in cores (measured here with "
          f"{a.threads}): {per_core:.3f} sources/s per core -> {node:.2f} /s on 16 cores; "
          f"{proj['hours_110k_one_core']:.1f} h on one core, {proj['hours_110k_node16']:.2f} h on a 16-core node; "
          f"{proj['gz_tb_110k']:.2f} TB of .nii.gz -> {proj['store_tb_110k']:.2f} TB of store")
    # the one writer commits in order: its time per source bounds the rate whatever the cores
    commit_s = sum(x["commit_ms"] for x in rows) / 1e3 / len(rows)
    proj["writer_bound_sources_per_s"] = 1 / commit_s
    print(f"the writer (serial) spends {1e3 * commit_s:.1f} ms per source committing: at most {1 / commit_s:.1f} "
          f"sources/s whatever the cores" + (" - below the 16-core projection, which it caps" if 1 / commit_s < node
                                              else ""))
    with open(f"{d}/summary.json", "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
