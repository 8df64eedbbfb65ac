"""The core modes. Each module lists its modes in `MODES` ({config.mode: function(config, workdir, *, mesh)}),
checks its own config settings in `check(config)`, and registers the config sections it owns;
medssl_jax/experiment.py collects them."""
