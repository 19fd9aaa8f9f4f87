"""Probe (issue 11 diagnostics): one batch attack on LeNet/ResNet with knobs, printing per-slot PSNR as JSON.

Run from the repo root: PYTHONPATH=. python docs/experiments/fidelity/probe.py data=colour B=2 labels=count init=uniform
Keys: data, B, K (classes), T, R, I, labels (joint|count: the true labels, sorted), init (randn|uniform),
near (start at the private images plus this much N(0, 1) noise), bu (joint|cyclic), dtype, tol, model, lw."""
import sys, time, json, dataclasses
import numpy as np, jax, jax.numpy as jnp
opts = dict(a.split("=", 1) for a in sys.argv[1:])
if opts.get("dtype") == "float64":
    jax.config.update("jax_enable_x64", True)
import dlg_jax.attack.engine as A
from dlg_jax.attack.engine import AttackConfig, run_attack
from dlg_jax.data.datasets import get_dataset
from dlg_jax.models import build_model
from dlg_jax.victim.gradients import shared_gradients
from dlg_jax.metrics import evaluate
from dlg_jax.attack.solvers import SolverConfig

ds = opts.get("data", "colour"); B = int(opts.get("B", 2)); K = int(opts.get("K", 0)); T = int(opts.get("T", 2))
R = int(opts.get("R", 4)); I = int(opts.get("I", 1500)); labels = opts.get("labels", "joint")
init = opts.get("init", "randn"); dtype = opts.get("dtype", "float32"); seed = int(opts.get("seed", 0))
noise = float(opts.get("near", -1)); bu = opts.get("bu", None)
src = get_dataset(ds)
K = K or src.num_classes
from dlg_jax.experiments.studies import parse_model
mname, mopts = parse_model(opts.get("model", "lenet"))
net = build_model(mname, src.input_shape, K, **mopts)
params = net.init(jax.random.fold_in(jax.random.key(seed), 0x5EED), dtype=np.dtype(dtype))
grid = np.arange(T * B).reshape(T, B)
if "start" in opts: grid = grid + int(opts["start"])
x, y = src.examples(grid.reshape(-1)); x = x.reshape(T, B, *src.input_shape).astype(dtype); y = y.reshape(T, B)
grads = shared_gradients(net, params, x, y)
orig = A.initial_dummy
def my_init(seed_, t, r, b, shape, k, joint, dt, *rest):
    d = orig(seed_, t, r, b, shape, k, joint, dt, *rest)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed_ + 99), t), r)
    if noise >= 0:
        d = d._replace(images=jnp.asarray(x, dt)[t] + noise * jax.random.normal(key, d.images.shape, dt))
    return d
A.initial_dummy = my_init
if opts.get("lw"):
    ref = jax.tree.leaves(jax.tree.map(lambda g: float(jnp.sum(g[0] ** 2)), grads))
    kw0 = tuple(float(1.0 / max(v, 1e-30)) / len(ref) for v in ref)
else:
    kw0 = None
kw = dict(layer_weights=kw0, restarts=R, iterations=I, labels="joint" if labels == "joint" else "count", snapshots=0, block=250,
          dtype=dtype, chunk_size=int(opts.get("chunk", 8)), tolerance=float(opts.get("tol", 1e-8)))
if bu: kw["batch_update"] = bu
if init == "uniform": kw["dummy_init"] = "uniform"
if opts.get("solver"): kw["solver"] = SolverConfig(opts["solver"], learning_rate=float(opts.get("lr", 0.1)))
cfg = AttackConfig(**kw)
fixed = None if labels == "joint" else np.sort(y, axis=1)
t0 = time.time()
res = run_attack(net, params, grads, B, cfg, fixed_labels=fixed)
el = time.time() - t0
# score every restart
out = {"opts": opts, "seconds": round(el, 1)}
allp = []
for r in range(R):
    m = evaluate(res.images[:, r], x, res.labels[:, r], y)
    allp.append(m.slot_psnr.min(axis=1))
allp = np.array(allp).T  # [T, R] min slot psnr
m = evaluate(res.best_images, x, res.best_labels, y)
out.update(best_min_slot_psnr=m.slot_psnr.min(1).round(1).tolist(), best_slot_psnr=m.slot_psnr.round(1).tolist(),
           any_restart_full=(allp >= 30).any(1).tolist(), restarts_full=int((allp >= 30).sum()),
           rel_loss=(res.best_loss / res.loss_history[np.arange(T), res.best_restart, 0]).tolist(),
           converged=int(res.converged.sum()), dup=int(m.duplicates.sum()), label_acc=float(m.label_accuracy.mean()),
           iters_conv=np.where(res.converged, res.iterations, -1).tolist())
print(json.dumps(out))
