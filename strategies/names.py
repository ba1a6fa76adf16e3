"""The strategy names fedhar accepts, importable without Flower (the command line lists them
in its help; strategies.STRATEGIES maps each to its class, and a test keeps the two equal)."""

STRATEGY_NAMES = ("fedavg", "fedit", "ffa", "fedsa", "fedex", "flora", "hetlora", "fedprox", "fedavgm", "fedadam",
                  "fedyogi", "fedadagrad")
