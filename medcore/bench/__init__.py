"""The benchmark (command), its options and levers (options), timers and peer recipes (peers), its targets and
printed report (report), and the GPU acceptance check (gpucheck)."""
