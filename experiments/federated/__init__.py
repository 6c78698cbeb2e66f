"""The federated experiment pipeline (docs/FEDERATED.md, "The experiment pipeline").

    python -m experiments.federated.main --workdir runs/fed

Phases, each writing only `<workdir>/<phase>/` and reading upstream phases
read-only: `fed_train` -> `eliminate` -> `fed_retrain` -> `baselines` ->
`evaluate`. `federation` holds what they share (the federation, its rounds,
their checkpoints).
"""
