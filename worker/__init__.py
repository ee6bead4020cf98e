"""The background worker: arq runs the hub's sweeps on one shared queue (see worker.main)."""
