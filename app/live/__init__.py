"""The live half of the explorer: the model thread, live passes and /fire's pass."""
