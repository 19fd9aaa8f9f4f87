"""dlg-jax: Deep Leakage from Gradients in JAX, vmapped over targets x restarts x batch slots."""
