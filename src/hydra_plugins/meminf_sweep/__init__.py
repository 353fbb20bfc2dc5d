"""meminf's Hydra plugins (the sweeper and the SLURM launcher). Hydra finds plugins only in the `hydra_plugins`
namespace package: pyproject.toml installs this folder as `hydra_plugins.meminf_sweep` (packages found in `src/`
too), keeping the repository's top level as it is."""
