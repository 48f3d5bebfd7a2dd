"""Thin submitit launchers: data prep (submit_prep) and distillation (submit_distill) on Slurm or locally."""
