"""PyTorch peers for the GPU tiers: snnTorch and SpikingJelly on the feed-forward model of BENCH.md.

Run on a GPU machine, apart from the JAX harness (torch is never a dependency of snnkern):

    python bench/torch_peers.py --tiers gpu-small,gpu-on --out bench/results [--compare RESULTS.csv]

Each library that imports is timed with the BENCH.md protocol (3 warm-ups, >= 10 samples and >= 1 s,
median / p10 / p90 after ``torch.cuda.synchronize``): forward under ``no_grad`` and forward+backward
(``sum(last spikes).backward()``), plus ``max_memory_allocated`` of one forward+backward. Each peer
calibrates its own weight scale (bisection, T <= 100) to the same 8 % LIF firing rate as the JAX
harness, and prints its rates. The neurons are each library's own (snnTorch ``Synaptic``: current-
based, like snnkern's LIF; SpikingJelly ``LIFNode``: no synaptic current), so ratios to snnkern are
indicative. Without torch, without CUDA, or without either library it prints why and exits 0.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.tiers import TIERS  # noqa: E402  (no jax import: tiers.py is plain data)

TARGET_RATE = 0.08
ALPHA_MEM, BETA_SYN = 0.95, 0.9          # snnkern LIF([0.95, 0.9]) = [membrane, synapse] decays
COLUMNS = ["date", "torch_version", "library", "library_version", "neuron_backend", "device", "tier", "N",
           "T", "B", "scale", "rates", "fwd_median_s", "fwd_p10_s", "fwd_p90_s", "fwd_n", "fwdbwd_median_s",
           "fwdbwd_p10_s", "fwdbwd_p90_s", "fwdbwd_n", "peak_bytes_fwdbwd", "snnkern_reference_over_peer_fwdbwd",
           "snnkern_plan_over_peer_fwdbwd", "note"]


def make_input(B, T, N_in):
    """The JAX harness's input: Bernoulli(0.3), float32, (B, T, N_in), numpy seed 0."""
    import numpy as np
    rng = np.random.default_rng(0)
    return (rng.random((B, T, N_in)) < 0.3).astype(np.float32)


def _stats(samples):
    import numpy as np
    a = np.asarray(samples)
    return float(np.median(a)), float(np.percentile(a, 10)), float(np.percentile(a, 90)), len(a)


def _time(fn, sync, warmups=3, min_samples=10, min_time=1.0):
    for _ in range(warmups):
        fn()
        sync()
    s = []
    while len(s) < min_samples or sum(s) < min_time:
        t0 = time.perf_counter()
        fn()
        sync()
        s.append(time.perf_counter() - t0)
    return _stats(s)


# -- the peers -------------------------------------------------------------------------------------

def build_snntorch(torch, N_in, N, device):
    import snntorch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(N_in, N), torch.nn.Linear(N, N)
            self.lif1 = snntorch.Synaptic(alpha=BETA_SYN, beta=ALPHA_MEM)
            self.lif2 = snntorch.Synaptic(alpha=BETA_SYN, beta=ALPHA_MEM)

        def forward(self, x):                      # x: (T, B, N_in), time-major as snnTorch runs
            syn1, mem1 = self.lif1.init_synaptic()
            syn2, mem2 = self.lif2.init_synaptic()
            s1, s2 = [], []
            for t in range(x.shape[0]):
                spk1, syn1, mem1 = self.lif1(self.fc1(x[t]), syn1, mem1)
                spk2, syn2, mem2 = self.lif2(self.fc2(spk1), syn2, mem2)
                s1.append(spk1)
                s2.append(spk2)
            return torch.stack(s1), torch.stack(s2)

    return Net().to(device), "python loop over T", getattr(snntorch, "__version__", "?")


def build_spikingjelly(torch, N_in, N, device):
    from spikingjelly.activation_based import functional, layer, neuron
    import spikingjelly

    tau = 1.0 / (1.0 - ALPHA_MEM)                  # SpikingJelly: v += (x - v) / tau
    last_err = None
    for backend in ("triton", "cupy", "torch"):
        try:
            l1 = neuron.LIFNode(tau=tau, step_mode="m", backend=backend)
            l2 = neuron.LIFNode(tau=tau, step_mode="m", backend=backend)
            net = torch.nn.Sequential(layer.Linear(N_in, N, step_mode="m"), l1,
                                      layer.Linear(N, N, step_mode="m"), l2).to(device)
            functional.set_step_mode(net, "m")
            x = torch.zeros(2, 1, N_in, device=device)
            net(x)
            functional.reset_net(net)
        except Exception as e:  # noqa: BLE001  (backend not available here: try the next)
            last_err = e
            continue

        class Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net
                self.fc1, self.fc2 = net[0], net[2]

            def forward(self, x):                  # (T, B, N_in); multi-step: the Linears are one GEMM
                functional.reset_net(self.net)
                h1 = self.net[1](self.net[0](x))
                h2 = self.net[3](self.net[2](h1))
                return h1, h2

        return Wrapped(), f"LIFNode backend={backend}", getattr(spikingjelly, "__version__", "?")
    raise RuntimeError(f"no SpikingJelly LIFNode backend works here ({last_err})")


PEERS = {"snntorch": build_snntorch, "spikingjelly": build_spikingjelly}


def _scale(torch, net, s):
    with torch.no_grad():
        for fc, base in zip((net.fc1, net.fc2), net._base):
            fc.weight.copy_(base[0] * s[0 if fc is net.fc1 else 1])
            fc.bias.copy_(base[1] * s[0 if fc is net.fc1 else 1])


def calibrate(torch, net, x, iters=18):
    """Per-layer weight scales (bisection in log scale) for a TARGET_RATE firing rate, T <= 100."""
    import math
    net._base = [(fc.weight.detach().clone(), fc.bias.detach().clone()) for fc in (net.fc1, net.fc2)]
    s = [1.0, 1.0]
    xc = x[:100]
    for g in range(2):
        lo, hi, best = math.log(1e-2), math.log(1e3), None
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            s[g] = math.exp(mid)
            _scale(torch, net, s)
            with torch.no_grad():
                r = float(net(xc)[g].float().mean())
            if best is None or abs(r - TARGET_RATE) < abs(best[1] - TARGET_RATE):
                best = (s[g], r)
            lo, hi = (mid, hi) if r < TARGET_RATE else (lo, mid)
        s[g] = best[0]
    _scale(torch, net, s)
    return s


def _compare(path, tier, N, T, B):
    """(reference median, plan-xla median) fwd+bwd seconds from a JAX results CSV, or Nones."""
    if not path:
        return None, None
    ref = plan = None
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if (r["tier"], r["N"], r["T"], r["B"]) == (tier, str(N), str(T), str(B)) and r.get("fwdbwd_median_s"):
                if r["path"] == "reference":
                    ref = float(r["fwdbwd_median_s"])
                elif r["path"] == "plan-xla":
                    plan = float(r["fwdbwd_median_s"])
    return ref, plan


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="snnTorch / SpikingJelly peers for the GPU tiers")
    ap.add_argument("--tiers", default="gpu-small,gpu-on", help="feed-forward tiers (default gpu-small,gpu-on)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (to try the script)")
    ap.add_argument("--compare", help="a JAX results CSV: print snnkern's fwd+bwd against each peer")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--min-time", type=float, default=1.0)
    a = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("torch_peers: PyTorch is not installed here; nothing to do (the JAX harness is bench/run.py).")
        return 0
    if a.device == "cuda" and not torch.cuda.is_available():
        print("torch_peers: no CUDA device visible to PyTorch; nothing to do (--device cpu to try it on CPU).")
        return 0
    libs = {}
    for name in PEERS:
        try:
            __import__(name)
            libs[name] = PEERS[name]
        except Exception as e:  # noqa: BLE001
            print(f"torch_peers: skip {name}: not importable ({type(e).__name__}: {e})")
    if not libs:
        print("torch_peers: neither snntorch nor spikingjelly is installed; nothing to do.")
        return 0
    device = torch.device(a.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for tname in [t.strip() for t in a.tiers.split(",") if t.strip()]:
        tier = TIERS[tname]
        if tier.model != "ff":
            print(f"torch_peers: skip {tname}: feed-forward tiers only")
            continue
        for N, T in tier.configs():
            B = tier.B
            x = torch.from_numpy(make_input(B, T, N)).to(device).transpose(0, 1).contiguous()   # (T, B, N)
            for name, build in libs.items():
                row = {"date": _dt.date.today().isoformat(), "torch_version": torch.__version__, "library": name,
                       "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                       "tier": tname, "N": N, "T": T, "B": B}
                try:
                    torch.manual_seed(0)
                    net, backend, ver = build(torch, N, N, device)
                    row.update(neuron_backend=backend, library_version=ver)
                    s = calibrate(torch, net, x)
                    with torch.no_grad():
                        s1, s2 = net(x)
                    row.update(scale="/".join(f"{v:.4g}" for v in s),
                               rates=f"{float(s1.float().mean()):.6f}/{float(s2.float().mean()):.6f}")

                    def fwd():
                        with torch.no_grad():
                            net(x)

                    def fwdbwd():
                        net.zero_grad(set_to_none=True)
                        net(x)[1].sum().backward()

                    kw = dict(min_samples=a.repeats, min_time=a.min_time)
                    for mode, fn in (("fwd", fwd), ("fwdbwd", fwdbwd)):
                        m, p10, p90, n = _time(fn, sync, **kw)
                        row.update({f"{mode}_median_s": m, f"{mode}_p10_s": p10, f"{mode}_p90_s": p90,
                                    f"{mode}_n": n})
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                        fwdbwd()
                        sync()
                        row["peak_bytes_fwdbwd"] = torch.cuda.max_memory_allocated()
                    ref, plan = _compare(a.compare, tname, N, T, B)
                    if ref:
                        row["snnkern_reference_over_peer_fwdbwd"] = ref / row["fwdbwd_median_s"]
                    if plan:
                        row["snnkern_plan_over_peer_fwdbwd"] = plan / row["fwdbwd_median_s"]
                    print(f"torch_peers: {tname} N={N} T={T} B={B} {name} ({backend}): rates {row['rates']}, "
                          f"fwd {row['fwd_median_s'] * 1e3:.3g} ms, fwd+bwd {row['fwdbwd_median_s'] * 1e3:.3g} ms"
                          + (f", snnkern plan-xla / {name} fwd+bwd time {plan / row['fwdbwd_median_s']:.2f}"
                             if plan else ""), flush=True)
                except Exception as e:  # noqa: BLE001  (one peer failing never stops the others)
                    row["note"] = f"failed: {type(e).__name__}: {e}"
                    print(f"torch_peers: {tname} N={N} {name}: {row['note']}", flush=True)
                rows.append(row)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "torch_peers.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print(f"torch_peers: wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
