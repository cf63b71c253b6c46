"""Machine-learning code shared by trainer and inference (features, predictors)."""
