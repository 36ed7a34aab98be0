"""The demo's command line: ``python -m snnkern.demo [options]`` (``make demo``); see docs/demo.md.

:func:`main` loads the data, builds the model, prints the plan, times one training step on the
planned and the reference path, trains, checks the checkpoint round trip, prints the activity
summary (snnkern.activity) and writes the plots (snnkern.plot).
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Optional, Sequence

from .data import DataError, SpikeData, load_data
from .defaults import DEFAULTS, QUICK
from .models import auto_input_gain, build_model, hidden_layer_id, readout_lag
from .training import (checkpoint_round_trip, make_sharded_train_step, make_train_step, time_paths,
                       train)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m snnkern.demo",
        description="Train a spiking classifier with snnkern on the scikit-learn digits (or --data).")
    p.add_argument("--epochs", type=int, default=None, help=f"training epochs (default {DEFAULTS['epochs']}; "
                   f"--quick: {QUICK['epochs']})")
    p.add_argument("--hidden", type=int, default=None, help=f"hidden neurons (default {DEFAULTS['hidden']})")
    p.add_argument("--T", type=int, default=None, help=f"time steps per sample (default {DEFAULTS['T']}; "
                   f"an .npz from --data brings its own T)")
    p.add_argument("--batch-size", type=int, default=None, help=f"minibatch size (default {DEFAULTS['batch_size']})")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"], help=f"Adam learning rate (default {DEFAULTS['lr']})")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                   help="seed for the weights, spike encoding and batches (the train/test split is fixed)")
    p.add_argument("--model", choices=["ff", "rec"], default=DEFAULTS["model"],
                   help="ff: Sequential Linear-LIF-Linear-LI; rec: recurrent LIF layer (SequentialLocalFeedback)")
    p.add_argument("--encoding", choices=["rate", "latency"], default=DEFAULTS["encoding"],
                   help="how digit pixels become spikes (ignored with --data)")
    p.add_argument("--out", default=DEFAULTS["out"], help="folder for plots and the checkpoint (default demo_out)")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="spike data on disk instead of the digits: an .npz with x (N, T, ...) and y (N,), or a "
                        "tonic NMNIST/SHD folder (see docs/demo.md)")
    p.add_argument("--quick", action="store_true", help="a tiny run (for tests): " +
                   ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--devices", type=int, default=1, metavar="N",
                   help="data-parallel training over N devices (the batch is split over them; "
                        "see docs/distributed.md)")
    p.add_argument("--no-timing", action="store_true", help="skip the planned-vs-reference step timing")
    args = p.parse_args(argv)
    for name in ("epochs", "hidden", "T", "batch_size"):
        if getattr(args, name) is None:
            setattr(args, name, (QUICK if args.quick else DEFAULTS)[name])
    for name, lo in (("epochs", 0), ("hidden", 1), ("T", 4), ("batch_size", 1), ("devices", 1)):
        if getattr(args, name) < lo:
            p.error(f"--{name.replace('_', '-')} must be >= {lo}, got {getattr(args, name)}")
    if not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    return args


def check_devices(n: int) -> int:
    """Validate ``--devices``; returns how many devices training uses (n, or 1 if there are fewer)."""
    import jax
    available = jax.devices()
    if n > len(available):
        hint = (f" (on CPU: XLA_FLAGS=--xla_force_host_platform_device_count={n})"
                if available[0].platform == "cpu" else "")
        print(f"--devices {n}: only {len(available)} {available[0].platform} device(s) available "
              f"({', '.join(str(d) for d in available)}){hint}; training on 1 device")
        return 1
    if n > 1:
        print(f"--devices {n}: data-parallel training on {', '.join(str(d) for d in available[:n])}")
    return n


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the demo. Returns a dict with the results (used by the tests)."""
    args = parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import optax

    t_start = time.perf_counter()
    n_devices = _devices_and_batch(args)
    data = _load(args)
    model = _build(args, data)
    plan = _print_plan(model, data.in_shape)

    optim = optax.adam(args.lr)
    step = (make_train_step(optim, data.in_shape, readout_lag(model)) if n_devices == 1  # default backend;
            else make_sharded_train_step(optim, data.in_shape, readout_lag(model), n_devices))  # reused below
    timing = {} if args.no_timing else _time_steps(args, model, data, optim, step, n_devices)

    t_train = time.perf_counter()
    result = train(model, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                   optim=optim, step=step)
    train_s = time.perf_counter() - t_train
    model = result.model
    print(f"training: {args.epochs} epochs in {train_s:.1f} s")
    print(f"test accuracy: {result.accuracy:.2f}")

    ckpt, identical = _check_checkpoint(args, data, model)
    act = _activity(data, model)
    plot_files = _plots(args, data, model, result.history)
    print(f"plots: {plot_files[0]}, {plot_files[1]}")
    print(f"total: {time.perf_counter() - t_start:.1f} s")
    return {"accuracy": result.accuracy, "history": result.history, "checkpoint": ckpt,
            "identical_predictions": identical, "plots": plot_files, "timing": timing,
            "plan": plan, "train_seconds": train_s, "model": model, "data": data,
            "args": vars(args), "activity": act}


def _devices_and_batch(args: argparse.Namespace) -> int:
    """Validate ``--devices``; round ``--batch-size`` to a multiple of the devices used (their number)."""
    n_devices = check_devices(args.devices)
    if args.batch_size % n_devices:
        args.batch_size = max(n_devices, args.batch_size // n_devices * n_devices)
        print(f"--batch-size rounded to {args.batch_size}, a multiple of the {n_devices} devices")
    return n_devices


def _load(args: argparse.Namespace) -> SpikeData:
    """The data of ``--data`` (or the digits); a DataError stops the demo with its message."""
    try:
        data = load_data(args.data, T=args.T, encoding=args.encoding, seed=args.seed)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    os.makedirs(args.out, exist_ok=True)
    print(f"data: {data.name}: {len(data.y_train)} train / {len(data.y_test)} test samples, "
          f"T={data.T}, {data.n_features} input channels, {data.n_classes} classes; "
          f"mean input rate {data.x_train.mean():.3f} spikes/step/channel")
    return data


def _build(args: argparse.Namespace, data: SpikeData):
    """The ``--model`` network, its input weights scaled by :func:`auto_input_gain` of the data."""
    import equinox as eqx
    import jax

    gain = auto_input_gain(data.x_train)
    model = build_model(data.n_features, args.hidden, data.n_classes, args.model,
                        key=jax.random.PRNGKey(args.seed), input_gain=gain)
    n_params = sum(a.size for a in jax.tree.leaves(eqx.filter(model, eqx.is_array)))
    print(f"model: {args.model} ({len(model.layers)} layers, output lags the input by "
          f"{readout_lag(model)} steps), {n_params} parameters, input weights initialised x{gain:.2f}")
    return model


def _print_plan(model, in_shape) -> str:
    """Print ``snnkern.explain(model, in_shape)``; returns its text."""
    import snnkern
    plan = str(snnkern.explain(model, in_shape))
    print("plan:")
    print(plan)
    return plan


def _time_steps(args: argparse.Namespace, model, data: SpikeData, optim, step, n_devices: int) -> dict:
    """Time the planned ``step`` and a reference-path step; print both and their ratio."""
    reps = 3 if args.quick else 10
    timing = time_paths(model, data, args.batch_size, optim, reps, step=step)
    for name, t in timing.items():
        print(f"train step ({name} path, batch {min(args.batch_size, len(data.y_train))}): "
              f"{t['step_s'] * 1e3:.2f} ms median of {reps} (compile {t['compile_s']:.1f} s)")
    if n_devices > 1:
        print(f"(the planned step runs data-parallel on {n_devices} devices, the reference step on one)")
    print(f"speed-up of the planned path over the reference path: "
          f"{timing['reference']['step_s'] / timing['planned']['step_s']:.2f}x")
    return timing


def _check_checkpoint(args: argparse.Namespace, data: SpikeData, model) -> tuple:
    """Save ``model`` into ``--out`` and reload it into a fresh model: (path, True), or an
    AssertionError if the reloaded model predicts another class on any test sample."""
    import jax
    ckpt = os.path.join(args.out, "model.eqx")
    like = build_model(data.n_features, args.hidden, data.n_classes, args.model,
                       key=jax.random.PRNGKey(args.seed + 1000))
    n_diff = checkpoint_round_trip(ckpt, model, like, data.x_test)
    identical = n_diff == 0
    if not identical:  # (not a bare assert: it must hold under python -O too)
        raise AssertionError(f"the model reloaded from {ckpt} predicts differently on "
                             f"{n_diff} of {len(data.y_test)} test samples")
    print(f"checkpoint: saved to {ckpt} and reloaded: identical predictions on all {len(data.y_test)} test samples")
    return ckpt, identical


def _activity(data: SpikeData, model, max_samples: int = 512) -> dict:
    """Firing rates and synaptic operations of the trained model on (up to ``max_samples``) test
    samples (snnkern.activity, vmapped over the samples, one jitted call); prints the summary and
    returns ``{"rates", "ops", "summary"}`` (per-sample arrays)."""
    import equinox as eqx
    import jax
    from snnkern import activity

    key = jax.random.PRNGKey(0)
    states = model.init_state(data.in_shape, key)

    @eqx.filter_jit
    def measure(m, xb):
        one = lambda x: (activity.firing_rates(m, states, x, key), activity.synaptic_ops(m, states, x, key))
        return jax.vmap(one)(xb)

    x = data.x_test[:max_samples]
    rates, ops = measure(model, x)
    text = activity.summary(model, rates, ops)
    print(f"activity (mean over {len(x)} test samples, snnkern.activity):")
    print("  " + text.replace("\n", "\n  "))
    return {"rates": rates, "ops": ops, "summary": text}


def _plots(args: argparse.Namespace, data: SpikeData, model, history: dict) -> list:
    """The training curves, and the spike raster of the first test sample: its input, the hidden
    layer's spikes and the read-out membrane, all from one ``snnkern.activity.record`` call; their paths."""
    import jax
    from snnkern import activity
    from . import plots

    sample, key = 0, jax.random.PRNGKey(0)
    x = data.x_test[sample]
    layers = activity.record(model, model.init_state(data.in_shape, key), x, key)
    h = hidden_layer_id(model)
    curves = plots.plot_history(history, os.path.join(args.out, "training_curves.png"))
    raster = plots.plot_raster(x, layers[h], layers[-1], int(data.y_test[sample]),
                               os.path.join(args.out, "spike_raster.png"), lag=readout_lag(model),
                               hidden_name=f"hidden layer {h} ({type(model.layers[h]).__name__})")
    return [curves, raster]
