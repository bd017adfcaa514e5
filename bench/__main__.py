"""``python -m bench`` lists the benchmarks."""

import pkgutil

import bench

for info in pkgutil.iter_modules(bench.__path__):
    if not info.name.startswith("_"):
        print(f"python -m bench.{info.name}")
