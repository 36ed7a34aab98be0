"""snnkern.kernels: time-loop backends (XLA scan, Pallas). Knows nothing about snnkern.snn classes."""
