"""Configuration: composing conf/ (compose), the checks every config passes before anything runs (checks), and
where an experiment's files go (paths)."""
