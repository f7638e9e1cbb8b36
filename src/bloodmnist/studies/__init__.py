"""Work over many seeds of one recipe: `bloodmnist study` (train per seed, adopt finished runs)."""
