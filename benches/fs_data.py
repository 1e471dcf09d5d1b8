#!/usr/bin/env python3
"""Generates the union-filesystem benchmark data set, deterministically.

Six layer directories (layer0..layer5) holding about 90,000 entries in all:
  layer0: big/file1g (1 GiB), wide/ (10,000 files in one directory)
  layer1..layer4: tree/N/... (deep trees of small files, ~18,000 entries each)
  layer5: small/ (tar workload), git/ (5,000 files), up/ (1,000 files for
          append/chmod copy-up)
and extract.tar (20,000 small files) for the extract workload.
Usage: fs_data.py OUTDIR
"""
import os
import random
import sys
import tarfile

out = sys.argv[1]
rng = random.Random(42)


def write(path, size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(rng.randbytes(size))


def big_file(path, size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    block = rng.randbytes(1 << 20)
    with open(path, "wb") as f:
        for i in range(size >> 20):
            f.write(block[i % 7:] + block[: i % 7])


l0 = os.path.join(out, "layer0")
big_file(os.path.join(l0, "big/file1g"), 1 << 30)
for i in range(10000):
    write(os.path.join(l0, "wide", "f%05d" % i), 64)

for layer in range(1, 5):
    root = os.path.join(out, "layer%d" % layer, "tree", str(layer))
    n = 0
    for a in range(30):
        for b in range(30):
            d = os.path.join(root, "d%02d" % a, "e%02d" % b)
            os.makedirs(d, exist_ok=True)
            for c in range(19):
                write(os.path.join(d, "f%02d" % c), rng.randrange(0, 2048))
                n += 1

l5 = os.path.join(out, "layer5")
for i in range(4000):
    write(os.path.join(l5, "small", "s%02d" % (i % 40), "f%04d" % i), rng.randrange(100, 8192))
for i in range(5000):
    write(os.path.join(l5, "git", "g%02d" % (i % 50), "f%04d.txt" % i), rng.randrange(100, 4096))
for i in range(1000):
    write(os.path.join(l5, "up", "u%04d" % i), 4096)

src = os.path.join(out, "extract-src")
for i in range(20000):
    write(os.path.join(src, "x%03d" % (i % 200), "f%05d" % i), rng.randrange(0, 4096))
with tarfile.open(os.path.join(out, "extract.tar"), "w") as t:
    t.add(src, arcname="extract")
