"""How fast training and scoring are: peftkit against the plain setups, each speed lever, scaling, profiles."""
