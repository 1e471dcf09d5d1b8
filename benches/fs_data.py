#!/usr/bin/env python3
"""Generates the union-filesystem benchmark data set, deterministically.

Six layer directories (layer0..layer5) holding about 92,000 entries in all:
  layer0: big/file1g (1 GiB: sequential and random reads, 1 GiB copy-up),
          wide/ (10,000 files in one directory: ls -f, ls -l)
  layer1..layer4: tree/N/dAA/eBB/fCC (about 18,000 entries each; tree/ is
          merged from four layers; rm -rf of a lower tree removes tree/1)
  layer5: small/ (4,000 files for tar), git/ (5,000 files for git add and
          git status), up/ (1,000 files of 4 KiB for append and chmod)
and extract.tar (20,000 small files under extract/) for the extract workload.

Usage: fs_data.py OUTDIR   (OUTDIR must not exist; written via OUTDIR.tmp)
"""
import os
import random
import shutil
import sys
import tarfile

final = sys.argv[1]
out = final + ".tmp"
shutil.rmtree(out, ignore_errors=True)
rng = random.Random(42)


def write(path, size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(rng.randbytes(size))


def big_file(path, size):
    # Rotations of one random MiB: incompressible-looking, cheap to make, and
    # no two MiB blocks within 7 MiB of each other are equal.
    os.makedirs(os.path.dirname(path), exist_ok=True)
    block = rng.randbytes(1 << 20)
    with open(path, "wb") as f:
        for i in range(size >> 20):
            f.write(block[i % 7 :] + block[: i % 7])


l0 = os.path.join(out, "layer0")
big_file(os.path.join(l0, "big/file1g"), 1 << 30)
for i in range(10000):
    write(os.path.join(l0, "wide", "f%05d" % i), 64)

for layer in range(1, 5):
    root = os.path.join(out, "layer%d" % layer, "tree", str(layer))
    for a in range(30):
        for b in range(30):
            d = os.path.join(root, "d%02d" % a, "e%02d" % b)
            os.makedirs(d, exist_ok=True)
            for c in range(19):
                write(os.path.join(d, "f%02d" % c), rng.randrange(0, 2048))

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
with tarfile.open(os.path.join(out, "extract.tar"), "w", format=tarfile.GNU_FORMAT) as t:
    t.add(src, arcname="extract")
shutil.rmtree(src)

os.rename(out, final)
