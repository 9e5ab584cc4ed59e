"""The benchmark (command), its timers, levers and peer recipes (peers) and the GPU acceptance check (gpucheck)."""
