"""registry: owns model versions, champions per slot, the activation history and the admin API."""
