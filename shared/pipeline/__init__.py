"""One run, as stages read top to bottom: read -> plan -> drain -> settle -> report."""
