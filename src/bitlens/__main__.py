"""``python -m bitlens ...`` is the ``bitlens`` command (also under ``torchrun -m bitlens``)."""

from .cli.main import main

raise SystemExit(main())
