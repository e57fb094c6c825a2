"""Reform: corrections of the kept weights of output projections whose inputs were pruned."""
