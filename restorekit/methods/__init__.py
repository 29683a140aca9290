"""Method plugins; each registers a Restorer subclass and its model cards."""
