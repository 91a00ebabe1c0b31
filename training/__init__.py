"""jr2net.training: training scripts for the learned cascade."""
