"""Training: `TrainArgs` (args.py), every setting of a run, and the recipe (recipe.py): one
readable script from data and model to saved checkpoints, through accelerate."""
