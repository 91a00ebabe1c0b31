"""jr2net.training: the learned cascade (DESIGN §7).

``config`` (typed run config from YAML + overrides), ``stages`` (the Stage API, the registry,
one module per stage), ``trainer`` (the shared loop: DDP, AMP, exact resume, logs),
``checkpoints``, ``logs``, ``cascade``, ``data`` (datasets), ``losses``. Command line:
``jr2net train STAGE --config FILE --out RUN`` or ``torchrun ... -m jr2net.training STAGE ...``.
"""
