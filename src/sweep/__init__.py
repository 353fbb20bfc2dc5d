"""The sweep plan: a command line's seeds, which of them are done (the one done-rule), how they are grouped
into jobs, and the dry run that prints the plan without launching."""
