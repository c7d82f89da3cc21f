"""Where training memory goes."""
