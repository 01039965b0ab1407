"""Developer benchmarks of BrainImageNet-AD (``brainimagenet-bench``): speed, memory, fidelity to
SPM12's maps and measurements on real scans. Installed from the source tree, not by Slicer."""
