"""``python -m ringlab_cpu``: serve one pCPU (see ``ringlab.rpc.config`` for flags and env)."""

from ringlab_cpu.service import main

raise SystemExit(main())
