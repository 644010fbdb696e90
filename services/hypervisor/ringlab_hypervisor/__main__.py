"""``python -m ringlab_hypervisor``: serve the VMM (see ``ringlab.rpc.config`` for flags and env)."""

from ringlab_hypervisor.service import main

raise SystemExit(main())
