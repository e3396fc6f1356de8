"""xlpy's test suite: one package so that every module has a unique dotted name."""
