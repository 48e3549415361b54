#!/usr/bin/env python
"""Side-by-side benchmark of the per-token statistics implementations.

impls: cross_entropy (F.cross_entropy, loss only), eager (naive formula, all stats),
torch_chunked, compiled, triton (CUDA), liger (loss only, if installed), fused_linear
(linear_token_stats from hidden states) and matmul_stats (its baseline: plain matmul, then the
default token_stats). Passes: fwd (no grad: a scoring pass) and fwd_bwd (backward of a loss
weighted per token by random weights).

Columns: ms = median of --repeats; compile_s = first call minus median (compile/autotune);
peak_mem_mb = peak memory above what was held before the call (CUDA: max_memory_allocated;
CPU: peak RSS, VmHWM after resetting it through /proc/self/clear_refs); gbps = N*V*itemsize
bytes of logits / time; floor_fraction = (minimum logit traffic / --peak-gbps) / time, where
the minimum is one read for fwd and read + read + write (2R+1W) for fwd_bwd. For the linear
impls, extra_vs_logits = (peak_mem - the gradients any path returns, grad_hidden + grad_weight)
/ N*V logit bytes: the memory the fused path spends, measured against the logits it avoids.

    python scripts/bench_kernels.py --device cpu --dtype fp32 --shapes 4096x32000 --json out.json

--dtype takes fp32, bf16, fp16 or torch's names float32, bfloat16, float16.
"""

from __future__ import annotations

import argparse
import gc
import ctypes
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from qtune.kernels import linear_token_stats, token_stats, token_stats_reference

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# torch's own names are accepted too; rows and JSON keep the short name, so results compare
DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def dtype_name(text: str) -> str:
    """`--dtype` value -> the short name (fp32 | bf16 | fp16); torch's names map to it."""
    name = DTYPE_ALIASES.get(text.lower().removeprefix("torch."), text.lower())
    if name not in DTYPES:
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r}; choose from {', '.join([*DTYPES, *DTYPE_ALIASES])}")
    return name


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


MMAP_THRESHOLD, TRIM_THRESHOLD = -3, -1  # glibc mallopt parameters


def _mallopt(param: int, value: int) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(param, value)
        if param == TRIM_THRESHOLD and value == 0:
            libc.malloc_trim(0)
    except OSError:
        pass


class Mem:
    """Peak memory above the current level, on CUDA or CPU (RSS high-water mark).

    On CPU, glibc is told for the measured call to serve every block >= 64 KiB by mmap and to
    return freed memory at once, so the RSS peak counts the call's own allocations instead of
    reusing pages that earlier calls freed; timing runs use normal heap reuse.
    """

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            _mallopt(MMAP_THRESHOLD, 64 << 10)
            _mallopt(TRIM_THRESHOLD, 0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base = _rss_kb("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = _rss_kb("VmHWM") * 1024 - self.base
            _mallopt(MMAP_THRESHOLD, 32 << 20)
            _mallopt(TRIM_THRESHOLD, 1 << 30)


def make_impls(device, liger):
    """name -> fn(inputs) returning a per-token loss tensor (and computing what the impl does)."""

    def ce(x, y, **_):
        return F.cross_entropy(x.float(), y, reduction="none")

    # the rows the targets compare come first; eager, the most memory-hungry, last
    impls = {"cross_entropy": ce}
    if device.type == "cuda":
        impls["triton"] = lambda x, y, **_: token_stats(x, y, backend="triton").loss
    impls["compiled"] = lambda x, y, **_: token_stats(x, y, backend="compiled").loss
    if liger is not None:
        impls["liger"] = lambda x, y, **_: liger(x, y, reduction="none")
    impls["torch_chunked"] = lambda x, y, **_: token_stats(x, y, backend="torch").loss
    impls["matmul_stats"] = lambda h, w, y, **_: token_stats(F.linear(h, w), y).loss
    impls["fused_linear"] = lambda h, w, y, **_: linear_token_stats(h, w, y).loss
    impls["eager"] = lambda x, y, **_: token_stats_reference(x, y).loss
    return impls


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_one(name, fn, pass_, inputs, device, repeats):
    linear = name in ("matmul_stats", "fused_linear")
    leaves = [inputs["h"], inputs["w"]] if linear else [inputs["x"]]
    args = dict(h=inputs["h"], w=inputs["w"], y=inputs["y"]) if linear else dict(x=inputs["x"], y=inputs["y"])
    if name == "liger" and pass_ == "fwd_bwd":  # liger writes gradients into its input
        args["x"] = inputs["x"].detach().clone()
        leaves = [args["x"]]

    def step():
        if pass_ == "fwd":
            with torch.no_grad():
                fn(**args)
        else:
            for t in leaves:
                t.requires_grad_(True)
                t.grad = None
            loss = fn(**args)
            (loss * inputs["wt"]).sum().backward()
        sync(device)

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    for t in leaves:
        t.grad = None
        t.requires_grad_(False)
    with Mem(device) as mem:
        step()
        for t in leaves:
            t.grad = None
    med = statistics.median(times)
    return med, max(first - med, 0.0), mem.peak


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--dtype", default="fp32", type=dtype_name, help="fp32 | bf16 | fp16 (or float32 | bfloat16 | float16)"
    )
    p.add_argument("--shapes", default="4096x32000", help="comma-separated NxV")
    p.add_argument("--impls", default="", help="comma-separated subset (default: all available)")
    p.add_argument("--passes", default="fwd,fwd_bwd")
    p.add_argument("--hidden", type=int, default=0, help="H for the linear impls (cpu 256, cuda 4096)")
    p.add_argument("--repeats", type=int, default=0, help="timed repeats (cpu 5, cuda 20)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument(
        "--peak-gbps",
        type=float,
        default=0.0,
        help="memory bandwidth for the floor (cuda default 3000; cpu default: measured copy bandwidth)",
    )
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cpu":
        _mallopt(MMAP_THRESHOLD, 32 << 20)  # fixed glibc thresholds: timing reuses freed pages
        _mallopt(TRIM_THRESHOLD, 1 << 30)
    dtype = DTYPES[a.dtype]
    if device.type == "cpu":
        torch.set_num_threads(a.threads)
    repeats = a.repeats or (20 if device.type == "cuda" else 5)
    hidden = a.hidden or (4096 if device.type == "cuda" else 256)
    peak = a.peak_gbps or (3000.0 if device.type == "cuda" else copy_gbps())
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy as liger
    except Exception:
        liger = None
    impls = make_impls(device, liger if device.type == "cuda" else None)
    if a.impls:
        impls = {k: v for k, v in impls.items() if k in a.impls.split(",")}
    rows = []
    print(
        f"device={device} dtype={a.dtype} threads={torch.get_num_threads()} hidden={hidden} "
        f"peak_gbps={peak:.0f} repeats={repeats} torch={torch.__version__}"
    )
    hdr = (
        f"{'impl':<14}{'pass':<8}{'n':>7}{'v':>8}{'dtype':>6}{'ms':>10}{'compile_s':>10}"
        f"{'peak_mem_mb':>12}{'gbps':>8}{'floor_frac':>11}{'vs_logits':>10}"
    )
    print(hdr)
    for shape in a.shapes.split(","):
        n, v = (int(s) for s in shape.lower().split("x"))
        g = torch.Generator(device="cpu").manual_seed(0)
        inputs = {
            "x": (torch.randn(n, v, generator=g) * 2).to(device=device, dtype=dtype),
            "y": torch.randint(0, v, (n,), generator=g).to(device),
            "wt": torch.rand(n, generator=g).to(device),
            "h": (torch.randn(n, hidden, generator=g)).to(device=device, dtype=dtype),
            "w": (torch.randn(v, hidden, generator=g) / hidden**0.5).to(device=device, dtype=dtype),
        }
        nbytes = n * v * inputs["x"].element_size()
        for name, fn in impls.items():
            for pass_ in a.passes.split(","):
                try:
                    ms, comp, mem = run_one(name, fn, pass_, inputs, device, repeats)
                except Exception as err:  # keep the other rows (e.g. eager running out of memory)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    print(f"{name:<14}{pass_:<8} FAILED: {type(err).__name__}: {err}"[:300])
                    continue
                traffic = nbytes * (1 if pass_ == "fwd" else 3)
                linear = name in ("fused_linear", "matmul_stats")
                grads = (n + v) * hidden * inputs["h"].element_size() if pass_ == "fwd_bwd" else 0
                row = dict(
                    impl=name,
                    **{"pass": pass_},
                    n=n,
                    v=v,
                    dtype=a.dtype,
                    ms=ms * 1e3,
                    compile_s=comp,
                    peak_mem_mb=mem / 2**20,
                    gbps=nbytes / ms / 1e9,
                    floor_fraction=traffic / (peak * 1e9) / ms,
                    device=str(torch.cuda.get_device_name() if device.type == "cuda" else "cpu"),
                    hidden=hidden if linear else None,
                    extra_vs_logits=(mem - grads) / nbytes if linear else None,
                )
                rows.append(row)
                print(
                    f"{name:<14}{pass_:<8}{n:>7}{v:>8}{a.dtype:>6}{row['ms']:>10.2f}"
                    f"{comp:>10.2f}{row['peak_mem_mb']:>12.1f}{row['gbps']:>8.1f}"
                    f"{row['floor_fraction']:>11.3f}" + (f"{row['extra_vs_logits']:>10.3f}" if linear else ""),
                    flush=True,
                )
                if a.json:  # after every row: a run cut short still leaves what it measured
                    write_json(a.json, dict(device=str(device), dtype=a.dtype, peak_gbps=peak, rows=rows))
        del inputs
        gc.collect()
    return rows


def write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def copy_gbps() -> float:
    """Rough CPU memory bandwidth: a 256 MB copy, counting bytes read + written."""
    src = torch.empty(1 << 26)
    src.fill_(1.0)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best / 1e9


if __name__ == "__main__":
    main()
