"""Several GPUs: the accelerate entry point, the scale-out driver and the shipped accelerate configs."""
