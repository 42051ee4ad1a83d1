"""`ctrlpost inspect`: what a checkpoint or a run folder holds (reports, layout, diff, plot)."""
