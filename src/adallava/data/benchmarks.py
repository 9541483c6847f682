"""The benchmarks adallava reads and writes, and the reader of each (`adallava.eval.readers`).

A table, apart from logic: the world generator names each benchmark's reader in its manifest, and
the evaluator checks and uses that reader.
"""

BENCHMARKS = ("vqav2", "pope", "mme", "textvqa", "scienceqa", "mmbench")
# Each benchmark's reader function in `adallava.eval.readers` (the world's manifest names it).
READERS = {
    "vqav2": "read_vqav2",
    "pope": "read_pope",
    "mme": "read_mme",
    "textvqa": "read_textvqa",
    "scienceqa": "read_scienceqa",
    "mmbench": "read_mmbench",
}
