"""inference: predicts on every closed candle with each slot's champion; hot-swaps on activation."""
