"""Time to the first training step and peak memory of `charlm train` on a large corpus, beside
the code before the corpus cache (a baseline measured in the same run).

    python benchmarks/corpus_scale.py TARBALL [--repeat 10] [--baseline-rev 1db09cf] [--whole]

TARBALL is chinese-poetry-2.0.1.tgz (`npm pack chinese-poetry@2.0.1`). The corpus is all.txt
(Tang and Song, 18.7M characters), built with `python -m charlm.corpora TARBALL --all` into
--work; --repeat N also writes it N times over into one file.

Each measurement runs, as a user would,

    /usr/bin/time -v python -m charlm train CORPUS --max-steps 30 --eval-interval 1000 --out DIR

with the corpus cache (CHARLM_CACHE) in a folder of its own: emptied first for "cold", kept from
the cold run for "warm". Time to first step is from just before the command starts (time.perf_counter)
to the moment the first record of DIR/metrics.jsonl (written after step 1) appears, polled every
20 ms. Peak RSS is /usr/bin/time's "Maximum resident set size". Without --whole the command is
killed (SIGKILL) once the first record appears, so its peak covers reading, encoding, building
the model and the first step; with --whole it runs to its end (30 steps, then the old code scores
the whole validation split, the new code a 100,000-character subset and then the whole split).
The command's CPU time (user + system) is printed too: on a shared machine it varies less than
the wall time.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# --prepare: the data preparation alone, in a process of its own, CPU seconds and peak RSS
_PREPARE = """
import resource, sys, time
from pathlib import Path
import torch
from charlm.config import Config, ModelConfig, TrainConfig
from charlm.train import prepare
cfg, path = Config(ModelConfig(), TrainConfig(max_steps=30)), sys.argv[1]
c, w = time.process_time(), time.perf_counter()
if sys.argv[2] == "old":
    from charlm.checkpoint import render_lines
    from charlm.data import read_corpus
    render_lines(prepare(read_corpus(path), cfg, path).lines)  # what the old Run did before step 1
else:
    from charlm.encoded import Source
    prepare(Source(Path(path)), cfg, path)
print(f"prepare: {time.process_time() - c:5.1f} s of CPU, {time.perf_counter() - w:5.1f} s wall, "
      f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:5.0f} MB (torch imported)")
"""


def build_corpus(tarball: Path, work: Path, repeat: int) -> Path:
    built = work / "corpora" / "all.txt"
    if not built.is_file():
        subprocess.run([sys.executable, "-m", "charlm.corpora", str(tarball), "--out", str(built.parent), "--all"],
                       check=True, cwd=ROOT)
    if repeat == 1:
        return built
    big = work / f"all-x{repeat}.txt"
    if not big.is_file() or big.stat().st_size != repeat * built.stat().st_size:
        with big.open("wb") as out:
            for _ in range(repeat):
                with built.open("rb") as f:
                    shutil.copyfileobj(f, out)
    return big


def baseline_code(rev: str, work: Path) -> Path:
    """The charlm package as it was at ``rev``, unpacked for PYTHONPATH."""
    dest = work / f"charlm-{rev}"
    if not (dest / "charlm").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", rev, "charlm"], cwd=ROOT, check=True, capture_output=True).stdout
        with tempfile.TemporaryFile() as f:
            f.write(archive)
            f.seek(0)
            tarfile.open(fileobj=f).extractall(dest)
    return dest


def measure(code: Path, corpus: Path, out: Path, cache: Path, whole: bool, steps: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(code), "CHARLM_CACHE": str(cache)}
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "charlm", "train", str(corpus), "--max-steps", str(steps),
           "--eval-interval", "1000", "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = None
    while proc.poll() is None:
        log = out / "metrics.jsonl"
        if first is None and log.is_file() and log.stat().st_size > 0:
            first = time.perf_counter() - t0
            if not whole:
                for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                    os.kill(int(child), signal.SIGKILL)
        time.sleep(0.02)
    err = proc.stderr.read()
    wall = time.perf_counter() - t0
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    cpu = sum(float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", err))
    return {"first_step_s": first, "wall_s": wall, "peak_rss_mb": int(rss.group(1)) / 1024 if rss else None, "cpu_s": cpu,
            "tail": err.strip().splitlines()[-25:] if first is None else []}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tarball", type=Path)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "charlm-corpus-scale")
    ap.add_argument("--repeat", type=int, default=1, help="write all.txt this many times over into the corpus")
    ap.add_argument("--baseline-rev", default="1db09cf", help="the code to compare with ('' for none)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--whole", action="store_true", help="let each command run to its end")
    ap.add_argument("--prepare", action="store_true", help="time the data preparation alone, in-process")
    args = ap.parse_args()
    corpus = build_corpus(args.tarball, args.work, args.repeat)
    print(f"corpus {corpus} ({corpus.stat().st_size / 2**20:.0f} MiB), {os.cpu_count()} CPUs", flush=True)
    runs = []
    if args.baseline_rev:
        runs.append((f"before the cache ({args.baseline_rev})", baseline_code(args.baseline_rev, args.work), "none"))
    runs += [("this tree, cold cache", ROOT, "cold"), ("this tree, warm cache", ROOT, "warm")]
    cache = args.work / "cache"
    if args.prepare:
        for label, code, kind in runs:
            if kind == "cold":
                shutil.rmtree(cache, ignore_errors=True)
            env = {**os.environ, "PYTHONPATH": str(code), "CHARLM_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
            out = subprocess.run([sys.executable, "-c", _PREPARE, str(corpus), "old" if kind == "none" else "new"],
                                 env=env, capture_output=True, text=True)
            print(f"{label:32s} {out.stdout.strip() or out.stderr.strip()[-500:]}", flush=True)
        return
    for label, code, kind in runs:
        if kind == "cold":
            shutil.rmtree(cache, ignore_errors=True)
        r = measure(code, corpus, args.work / "run", cache, args.whole, args.steps)
        first = f"{r['first_step_s']:.1f} s" if r["first_step_s"] is not None else "never"
        print(f"{label:32s} first step after {first:>8s}   peak RSS {r['peak_rss_mb']:7.0f} MB   "
              f"command {r['wall_s']:.0f} s, {r['cpu_s']:.0f} s of CPU"
              + ("" if args.whole else " (killed after the first step)"), flush=True)
        for line in r["tail"]:
            print("    " + line)


if __name__ == "__main__":
    main()
