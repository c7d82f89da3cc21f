"""`peftkit serve` against the server a user would write."""
