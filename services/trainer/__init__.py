"""trainer: turns RetrainModel commands into immutable, honestly evaluated model versions."""
