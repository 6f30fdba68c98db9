"""Reading the competition data: images, instance labels, image types and folds."""
