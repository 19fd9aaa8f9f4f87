"""Spectrum of the Jacobian of the shared-gradient map x -> dW(x) at the private batch (labels fixed), float64.

PYTHONPATH=. python docs/experiments/fidelity/diag_jac.py digits:2:10 colour:2:10   (dataset:B:classes)"""
import sys, json, numpy as np, jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
from dlg_jax.data.datasets import get_dataset
from dlg_jax.models import build_model
from dlg_jax.victim.gradients import shared_gradient
from jax.flatten_util import ravel_pytree
for spec in sys.argv[1:]:
    ds, B, K = spec.split(":"); B = int(B); K = int(K)
    src = get_dataset(ds)
    net = build_model("lenet", src.input_shape, K)
    p = net.init(jax.random.fold_in(jax.random.key(0), 0x5EED), dtype=jnp.float64)
    x, y = src.examples(np.arange(B)); x = jnp.asarray(x, jnp.float64)
    f = jax.jit(lambda xx: ravel_pytree(shared_gradient(net, p, xx, jnp.asarray(y)))[0])
    n = x.size
    cols = []
    basis = jnp.eye(n, dtype=jnp.float64)
    jv = jax.jit(jax.vmap(lambda v: jax.jvp(f, (x,), (v.reshape(x.shape),))[1]))
    for i in range(0, n, 256):
        cols.append(np.asarray(jv(basis[i:i + 256])))
    J = np.concatenate(cols, 0).T  # [m, n]
    s = np.linalg.svd(J, compute_uv=False)
    print(json.dumps(dict(dataset=ds, B=B, K=K, equations=J.shape[0], unknowns=n, smax=float(s[0]), smin=float(s[-1]),
        cond=float(s[0] / s[-1]), below_1e4=int((s < s[0] * 1e-4).sum()), below_1e6=int((s < s[0] * 1e-6).sum()),
        quantiles=[float(q) for q in np.quantile(s / s[0], [0.01, 0.1, 0.5])])), flush=True)
