"""How much per-request routing between the two whole models can add on the bench's requests, in top-1.

    .venv/bin/python docs/bench/s19/oracle_share.py

At a share f of requests on `large`, `random` scores small's mean top-1 x (1 - f) + f. An oracle that knows
every request's top-1 puts on `large` the requests where `small` agrees least. Labels: the bench's own
(`quality_labels`, the 256 held-out requests of `benchmarks/equal_throughput.py`, bf16 matmuls where native).
"""

from stitchllm.bench.run import BenchConfig, heldout_workload
from stitchllm.routing.catalog import load_catalog
from stitchllm.stitch.build import stitches_dir

cfg = BenchConfig(output_tokens=128, matmul_dtype="auto")
catalog = load_catalog()
_, labels = heldout_workload(catalog, stitches_dir(catalog.family), cfg)
small = labels.agree[:, labels.route_names.index("small")]  # [N] top-1 agreement of `small` with `large`
worst_first = small.sort().values
print("| share on `large` | random top-1 | oracle top-1 | oracle - random |")
print("|---:|---:|---:|---:|")
for share in (0.1, 0.2, 0.3, 0.5):
    k = int(share * len(small))
    rand = float(small.mean() * (1 - share) + share)
    oracle = float((worst_first[k:].sum() + k) / len(small))
    print(f"| {share:.0%} | {rand:.3f} | {oracle:.3f} | {oracle - rand:+.3f} |")
