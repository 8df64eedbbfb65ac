"""Paper-style result tables: a grid of experiment configs run (or read from cache) into one table.

`runner.run_table(table, workdir=...)` runs every row of a table config and writes
`<workdir>/<name>.{md,csv,png}`; `python -m medssl_jax.tables.runner --table=... --workdir=...` is the CLI.
"""
